"""MoMa training-step time against the FLOPs-matched dense step (issue 14.5, targets: moma 4t4i ≤ 1.10×,
moma 4t4i + MoD ≤ 1.20× dense; the paper's MoMa 4t4i costs ~17 % throughput).

Compiled full training steps (forward, backward, AdamW update) on synthetic mixed-modal batches with a fixed
text/image layout; the variants are timed interleaved (round-robin) and the median per variant is reported, as wall
time and as the process's CPU time (on a shared machine the CPU time is the steadier of the two: it leaves out the
time the process waits for a core; with a multi-threaded BLAS it includes the threads' spinning).

    python benchmarks/moma_step.py [--preset tiny] [--seq-len 128] [--batch-size 16] [--rounds 15]
        [--variants dense,moe8x,moma1t1i,moma4t4i,moma4t4i+mod] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlxsuite.models import lm
from mlxsuite.models import moma as mm
from mlxsuite.models.flops import moma_train_per_token
from mlxsuite.moma.spec import parse_variant


def make_batch(rng, B, T, vocab_text, codes, image_fraction):
    n_img = int(T * image_fraction)
    toks = rng.integers(0, vocab_text, (B, T + 1))
    pos = np.stack([np.sort(rng.choice(T, n_img, replace=False)) for _ in range(B)])
    for b in range(B):
        toks[b, pos[b]] = vocab_text + rng.integers(0, codes, n_img)
    return mx.array(toks.astype(np.int32)), mx.array(pos.astype(np.int32))


def make_step(args, B, T):
    model = mm.build(args)
    opt = optim.AdamW(1e-3)

    def loss_fn(model, toks, pos):
        logits = model(toks[:, :-1], n_image=pos.size, mode="train")
        return nn.losses.cross_entropy(logits, toks[:, 1:]).mean()

    vg = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(toks, pos):
        loss, grads = vg(model, toks, pos)
        opt.update(model, grads)
        return loss

    def run(batch):
        loss = step(*batch)
        mx.eval(state, loss)

    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--image-fraction", type=float, default=0.5)
    p.add_argument("--variants", default="dense,moe8x,moma1t1i,moma4t4i,moma4t4i+mod")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    vt, codes = 512, 64
    rng = np.random.default_rng(0)
    batch = make_batch(rng, a.batch_size, a.seq_len, vt, codes, a.image_fraction)
    steps, flops = {}, {}
    for v in a.variants.split(","):
        f = parse_variant(v)
        base = dict(lm.PRESETS[a.preset])
        if f["mod"]:
            base["num_hidden_layers"] = mm.mod_matched_layers(base["num_hidden_layers"])
        args = mm.ModelArgs.from_dict(
            {**base, **f, "vocab_size": vt + codes + 2, "image_start": vt, "image_end": vt + codes}
        )
        steps[v] = make_step(args, a.batch_size, a.seq_len)
        flops[v] = moma_train_per_token(args, a.seq_len, a.image_fraction)["total"]
        for _ in range(3):  # compile + warm up
            steps[v](batch)
    times = {v: [] for v in steps}
    cpu = {v: [] for v in steps}
    for _ in range(a.rounds):
        for v, run in steps.items():
            t, c = time.perf_counter(), time.process_time()
            run(batch)
            cpu[v].append(time.process_time() - c)
            times[v].append(time.perf_counter() - t)
    med = {v: float(np.median(t)) for v, t in times.items()}
    med_cpu = {v: float(np.median(t)) for v, t in cpu.items()}
    dense, dense_cpu = med.get("dense"), med_cpu.get("dense")
    rows = [
        {
            "variant": v,
            "median_s": med[v],
            "ratio_to_dense": med[v] / dense if dense else None,
            "median_cpu_s": med_cpu[v],
            "cpu_ratio_to_dense": med_cpu[v] / dense_cpu if dense_cpu else None,
            "flops_ratio_to_dense": flops[v] / flops["dense"] if "dense" in flops else None,
        }
        for v in med
    ]
    if a.json:
        report = {"preset": a.preset, "seq_len": a.seq_len, "batch_size": a.batch_size, "rows": rows}
        print(json.dumps(report, indent=2))
    else:
        print(
            f"preset {a.preset}, {a.batch_size}×{a.seq_len} tokens, image fraction {a.image_fraction}, "
            f"{a.rounds} interleaved rounds"
        )
        print(f"  {'variant':>14}  {'wall':>9}  {'× dense':>8}  {'CPU':>9}  {'× dense':>8}  FLOPs × dense")
        for r in rows:
            ratio = f"{r['ratio_to_dense']:.3f}×" if r["ratio_to_dense"] else ""
            cpu_ratio = f"{r['cpu_ratio_to_dense']:.3f}×" if r["cpu_ratio_to_dense"] else ""
            print(
                f"  {r['variant']:>14}  {r['median_s'] * 1e3:6.1f} ms  {ratio:>8}  {r['median_cpu_s'] * 1e3:6.1f} ms  "
                f"{cpu_ratio:>8}  {r['flops_ratio_to_dense']:.3f}×"
            )


if __name__ == "__main__":
    main()
