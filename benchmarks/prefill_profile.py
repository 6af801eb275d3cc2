"""Where a prefill's time goes, per op, as shares: GEMMs, attention, norms, RoPE, cache writes, the last token's
logits, and the Python that builds the graph (issue 26, item 2).

    scripts/get-smollm2.sh && nice -n 5 python benchmarks/prefill_profile.py            # SmolLM2, 128 and 1024
    python benchmarks/prefill_profile.py MODEL --lengths 128,512,1024,2048 --reps 5 --step 256

Two measurements per prompt length, alternated over `--reps` rounds, medians:

1. End to end: the one prefill (`mlxsuite.generate.prefill`, chunks of `--step`, the cache evaluated after each
   chunk, the last chunk's last position through the head, its greedy token), as `bench ttft` times it; and the
   same loop with the graph building (Python: every layer's ops recorded lazily) timed apart from MLX's evaluation.
2. Per op: the same computation with every op evaluated on its own (`mx.eval` after each), timed and summed by
   kind. It walks the model's own pieces (norms, `Attention.project`/`finish_*`, the KV cache, `kernels`) in the
   order of `TransformerBlock`, skips what the prefill never computes (the last layer's attention output and MLP
   for the positions of every chunk but the last, any logits but the last position's), and checks that its
   last-token logits equal the prefill's.

The shares are of the per-op sum; the footer gives that sum against the end-to-end time (the difference is what
evaluating op by op costs or saves: scheduling, fusion, cache locality) and the Python share of the end-to-end
time. GEMM GFLOP/s is against a 1024³ GEMM sampled in the same rounds. Shares move less with machine load than times
do; the footer states the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention

from mlxsuite import platform, store
from mlxsuite.bench.ttft import GemmProbe
from mlxsuite.generate import default_prefill_step, prefill, sample
from mlxsuite.models import kernels as fast_kernels

SMOLLM2 = Path.home() / ".cache" / "mlxsuite" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
KINDS = {  # kind -> what the table calls it
    "embed": "embedding lookup",
    "norm": "RMSNorms",
    "gemm_qkv": "GEMM q/k/v projections",
    "rope": "RoPE (table + rotation)",
    "cache": "KV cache writes",
    "attention": "attention (scores, softmax, ·V)",
    "gemm_o": "GEMM o_proj",
    "residual": "residual adds",
    "gemm_mlp": "GEMM MLP gate/up/down",
    "silu": "SiLU·mul",
    "logits": "last position: norm, head, argmax",
}
GEMMS = ("gemm_qkv", "gemm_o", "gemm_mlp")


class OpTimer:
    """Evaluates each op on its own and adds its time (and a GEMM's FLOPs) to its kind."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self.count = 0  # ops evaluated

    def __call__(self, kind: str, fn, *args, flops: float = 0.0, **kwargs):
        mx.synchronize()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        mx.eval(out)
        self.seconds[kind] += time.perf_counter() - t0
        self.flops[kind] += flops
        self.count += 1
        return out


def eval_overhead(n: int = 200) -> float:
    """Seconds one evaluation of a trivial op costs (dispatch and synchronization): what every op pays here."""
    one = mx.array(1.0)
    mx.eval(one)
    samples = []
    for _ in range(n):
        mx.synchronize()
        t0 = time.perf_counter()
        mx.eval(one + 1)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _flops(x: mx.array, *linears) -> float:
    rows = x.size // x.shape[-1]
    return sum(2.0 * rows * lin.weight.shape[0] * lin.weight.shape[1] for lin in linears)


def _heads(a: mx.array, n_heads: int) -> mx.array:
    B, L, _ = a.shape
    return a.reshape(B, L, n_heads, -1).transpose(0, 2, 1, 3)


def profiled_forward(model, tokens: mx.array, cache: list, t: OpTimer, hidden_only: bool) -> mx.array:
    """The model's forward over `tokens` continuing `cache`, op by op. With `hidden_only` (a prefill chunk) it stops
    where the prefill's evaluation of the cache stops; else it returns the last position's logits."""
    h = t("embed", model.model.embed_tokens, tokens)
    K = fast_kernels.select(model.layers, h.shape[1], h.dtype, cache)
    mask = None if K is not None else create_attention_mask(h, cache[0])
    B, L, _ = h.shape
    for i, (layer, c) in enumerate(zip(model.layers, cache)):
        attn, mlp, offset = layer.self_attn, layer.mlp, c.offset
        x = t("norm", layer.input_layernorm, h)
        if hidden_only and i == len(model.layers) - 1:  # only this layer's keys and values reach the cache
            k = t("gemm_qkv", attn.k_proj, x, flops=_flops(x, attn.k_proj))
            v = t("gemm_qkv", attn.v_proj, x, flops=_flops(x, attn.v_proj))
            k, v = _heads(k, attn.n_kv_heads), _heads(v, attn.n_kv_heads)
            t("cache", c.update_and_fetch, t("rope", attn.finish_keys, k, offset, K), v)
            return h
        q, k, v = t("gemm_qkv", attn.project, x, flops=_flops(x, attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = t("rope", attn.finish_queries, q, offset, K), t("rope", attn.finish_keys, k, offset, K)
        k, v = t("cache", c.update_and_fetch, k, v)
        if K is not None:
            out = t("attention", K.attention, q, k, v)
        else:
            out = t("attention", scaled_dot_product_attention, q, k, v, cache=c, scale=attn.scale, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(B, L, -1)
        h = t("residual", mx.add, h, t("gemm_o", attn.o_proj, out, flops=_flops(out, attn.o_proj)))
        x = t("norm", layer.post_attention_layernorm, h)
        g = t("gemm_mlp", mlp.gate_proj, x, flops=_flops(x, mlp.gate_proj))
        u = t("gemm_mlp", mlp.up_proj, x, flops=_flops(x, mlp.up_proj))
        a = t("silu", K.silu_mul if K is not None else swiglu, g, u)
        h = t("residual", mx.add, h, t("gemm_mlp", mlp.down_proj, a, flops=_flops(a, mlp.down_proj)))
    return t("logits", lambda: model.logits(model.model.norm(h)[:, -1]))


def profiled_prefill(model, tokens: mx.array, step: int) -> tuple[OpTimer, mx.array]:
    """As `generate.prefill` with the model's own forward: whole chunks, the last one (last token included) through
    every layer and only its last position through the head."""
    t, cache, last = OpTimer(), model.make_cache(), (tokens.shape[1] - 1) // step * step
    for start in range(0, last, step):
        profiled_forward(model, tokens[:, start : start + step], cache, t, hidden_only=True)
    logits = profiled_forward(model, tokens[:, last:], cache, t, hidden_only=False)
    t("logits", lambda: sample(logits))
    return t, logits


def end_to_end(model, tokens: mx.array, step: int) -> float:
    mx.synchronize()
    t0 = time.perf_counter()
    mx.eval(sample(prefill(model, tokens, model.make_cache(), step)))
    return time.perf_counter() - t0


def build_vs_eval(model, tokens: mx.array, step: int) -> tuple[float, float]:
    """The prefill's loop (generate.prefill with the default fill) with graph building and evaluation timed apart,
    with MLX's ops for the attention (the native attention evaluates its inputs while the graph is being built)."""
    with fast_kernels.disabled(native_only=True):
        return _build_vs_eval(model, tokens, step)


def _build_vs_eval(model, tokens: mx.array, step: int) -> tuple[float, float]:
    cache, last, build, run = model.make_cache(), (tokens.shape[1] - 1) // step * step, 0.0, 0.0
    for start in [*range(0, last, step), None]:
        mx.synchronize()
        t0 = time.perf_counter()
        if start is None:
            out = sample(model.last_logits(tokens[:, last:], cache))
        else:
            model(tokens[:, start : start + step], cache)
            out = [c.state for c in cache]
        t1 = time.perf_counter()
        mx.eval(out)
        build, run = build + t1 - t0, run + time.perf_counter() - t1
    return build, run


def profile(model, length: int, step: int, reps: int, probe: GemmProbe) -> dict:
    mx.random.seed(0)
    tokens = mx.random.randint(0, model.args.vocab_size, (1, length))
    reference = prefill(model, tokens, model.make_cache(), step)
    _, logits = profiled_prefill(model, tokens, step)  # also the warm-up
    err = mx.abs(logits - reference).max().item()
    if err > 1e-3 * max(1.0, mx.abs(reference).max().item()):
        raise SystemExit(f"the op-by-op forward differs from the prefill (max |Δlogit| {err:.3g}): fix it first")
    end_to_end(model, tokens, step)
    totals, builds, evals, kinds, flops, overheads = [], [], [], defaultdict(list), {}, []
    for r in range(reps):
        for what in ("e2e", "ops") if r % 2 == 0 else ("ops", "e2e"):
            if what == "e2e":
                totals.append(end_to_end(model, tokens, step))
                b, e = build_vs_eval(model, tokens, step)
                builds.append(b)
                evals.append(e)
            else:
                t, _ = profiled_prefill(model, tokens, step)
                for kind in KINDS:
                    kinds[kind].append(t.seconds.get(kind, 0.0))
                flops, n_ops = dict(t.flops), t.count
        probe.sample()
        overheads.append(eval_overhead())
    med = {k: statistics.median(v) for k, v in kinds.items()}
    gemm_s = sum(med[k] for k in GEMMS)
    return {
        "length": length,
        "ops": med,
        "ops_total": sum(med.values()),
        "end_to_end": statistics.median(totals),
        "build": statistics.median(builds),
        "eval": statistics.median(evals),
        "gemm_gflops": sum(flops.get(k, 0.0) for k in GEMMS) / gemm_s / 1e9 if gemm_s else None,
        "max_logit_diff": err,
        "ops_evaluated": n_ops,
        "eval_overhead": statistics.median(overheads),
    }


def markdown(results: list[dict], rate: float, n_layers: int, chunks: dict) -> str:
    head = "| op | " + " | ".join(f"{r['length']} tokens: ms | share" for r in results) + " |"
    lines = [head, "|:---|" + "---:|---:|" * len(results)]
    for kind, name in KINDS.items():
        cells = [f"{1e3 * r['ops'][kind]:,.1f} | {r['ops'][kind] / r['ops_total']:.1%}" for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **sum of ops** | " + " | ".join(f"{1e3 * r['ops_total']:,.1f} | 100%" for r in results) + " |")
    lines.append("")
    for r in results:
        n_forwards = chunks[r["length"]] + 1
        dispatch = r["ops_evaluated"] * r["eval_overhead"]
        lines.append(
            f"- {r['length']} tokens: end to end {1e3 * r['end_to_end']:,.1f} ms (sum of ops "
            f"{r['ops_total'] / r['end_to_end']:.2f}× it); graph building (Python) {1e3 * r['build']:,.1f} ms = "
            f"{r['build'] / (r['build'] + r['eval']):.1%} of the loop (MLX's attention ops), "
            f"{1e6 * r['build'] / n_forwards / n_layers:,.0f} µs per layer per forward ({n_forwards} forwards); "
            f"GEMMs {r['gemm_gflops']:,.1f} GFLOP/s = {r['gemm_gflops'] / rate:.0%} of the 1024³ GEMM "
            f"({rate:,.1f} GFLOP/s); {r['ops_evaluated']} ops evaluated one by one at "
            f"~{1e6 * r['eval_overhead']:,.0f} µs each for dispatch = {dispatch / r['ops_total']:.1%} of "
            f"the sum (a cost the lazy prefill does not pay); max |Δlogit| vs the prefill {r['max_logit_diff']:.2g}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=str(SMOLLM2), help="a .gguf file, model folder or store name")
    p.add_argument("--lengths", default="128,1024")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--step", type=int, default=None, help="prefill chunk (default: the device's)")
    p.add_argument("--unfused", action="store_true", help="the plain MLX ops (no fast CPU kernels)")
    a = p.parse_args()
    steps = {n: a.step or default_prefill_step(n) for n in (int(s) for s in a.lengths.split(","))}
    model = store.load(a.model, "lm", dtype=mx.float32, dequantize=True).model
    load0 = os.getloadavg()[0]
    probe = GemmProbe()
    lengths = [int(s) for s in a.lengths.split(",")]
    with fast_kernels.disabled() if a.unfused else nullcontext():
        results = [profile(model, n, steps[n], a.reps, probe) for n in lengths]
    chunks = {n: len(range(0, n - 1, steps[n])) for n in lengths}
    rate = statistics.median(probe.samples)
    print(markdown(results, rate, model.args.num_hidden_layers, chunks))
    blas = platform.blas_info()
    print(
        f"\n{Path(a.model).name}, float32, {'plain MLX ops' if a.unfused else 'fused CPU kernels'}, prefill step "
        f"{'/'.join(str(steps[n]) for n in lengths)}, {a.reps} rounds (medians); {platform.cpu_name()}, "
        f"{os.cpu_count()} cores, BLAS "
        f"{Path(blas.library).name} ({platform.blas_threads()} threads); load average {load0:.2f} → "
        f"{os.getloadavg()[0]:.2f}; MLX {mx.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


if __name__ == "__main__":
    main()
