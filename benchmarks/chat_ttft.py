"""TTFT of one chat turn after a long history, base against KV Prediction (issue 22), as `mlxsuite chat -v` runs it.

    python benchmarks/chat_ttft.py smollm2 --kvp smollm2-kvp-id            # a trained pair (scripts/kvp-smollm2.sh)
    python benchmarks/chat_ttft.py smollm2 --keep 0.5                      # an untrained LP-0.50 pair: same speed
    python benchmarks/chat_ttft.py smollm2 --keep 0.5 --history 1024 --turns 64,512 --reply 64 --reps 7

The conversation so far holds `--history` tokens in the base's prompt cache (real keys and values: the chat keeps
its cache across turns). A new turn brings `--turns` new tokens. Base: the one prefill writes them into the cache
and samples the first token. KV Prediction (`chat --kvp`): the auxiliary first catches up on the ids it has not seen
— the last turn's reply, which the base decoded (`--reply` tokens), and the last prompt id — then the pair's fill
writes predicted keys and values for the new tokens and the base runs the last one (`mlxsuite.chat.Conversation`).
Each trial starts from copies of the caches; modes alternate ABBA over `--reps` rounds after `--warmup` untimed
ones; medians with p10-p90. The weights do not change the time: an untrained pair of the same shape is timed the
same (`--keep`). Prints a markdown table and the load average: measure on a quiet machine.
"""

from __future__ import annotations  # noqa: I001  (mlxsuite before mlx.core)

import argparse
import os
import statistics
import time

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)
import mlx.core as mx

from mlxsuite import store
from mlxsuite.generate import copy_cache
from mlxsuite.chat import fill_cache
from mlxsuite.convert.hf import pruned_layers
from mlxsuite.generate import prefill
from mlxsuite.models import kv_prediction as kvm


def untrained_pair(base, keep: float) -> kvm.KVPredictionModel:
    n = base.args.num_hidden_layers
    retained = pruned_layers(n, keep)
    aux = kvm.layer_pruned(base, retained)
    pred = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, kvm.lp_layer_map(keep, retained, n)))
    pair = kvm.KVPredictionModel(base, aux, pred)
    pair.eval()
    mx.eval(pair.parameters())
    return pair


def turn(base, pair, base_cache, aux_cache, unseen: mx.array, new: mx.array) -> float:
    """Seconds to the first token of a turn (`pair` None: the base alone)."""
    base_cache = copy_cache(base_cache)
    aux_cache = copy_cache(aux_cache) if pair is not None else None
    mx.synchronize()
    start = time.perf_counter()
    fill = None
    if pair is not None:
        if unseen.size:
            fill_cache(pair.auxiliary, unseen.tolist(), aux_cache)
        stacked = pair.predictor.stacked()  # as chat.py: the predictor batched across layers
        fill = lambda chunk: pair.fill(chunk, aux_cache, base_cache, stacked)  # noqa: E731
    mx.eval(mx.argmax(prefill(base, new, base_cache, fill=fill), axis=-1))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--kvp", help="a trained pair for MODEL (else an untrained one, --keep)")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--history", type=int, default=1024)
    p.add_argument("--turns", default="64,512")
    p.add_argument("--reply", type=int, default=64, help="ids of the last reply the auxiliary has not seen")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args()
    if a.kvp:
        from mlxsuite.kvp.recipe import load_pair

        pair = load_pair(a.kvp, expect_base=a.model)[0]
        base = pair.base
    else:
        base = store.load_model(a.model, dequantize=True)[0]
        pair = untrained_pair(base, a.keep)
    turns = [int(t) for t in a.turns.split(",")]
    mx.random.seed(0)
    ids = mx.random.randint(0, base.args.vocab_size, (a.history + max(turns),)).tolist()
    base_cache = fill_cache(base, ids[: a.history])
    aux_cache = fill_cache(pair.auxiliary, ids[: a.history - a.reply - 1])
    unseen = mx.array(ids[a.history - a.reply - 1 : a.history])
    load = os.getloadavg()[0]
    times = {(n, m): [] for n in turns for m in ("base", "kvp")}
    for r in range(a.warmup + a.reps):
        for n in turns:
            new = mx.array([ids[a.history : a.history + n]])
            for m in ("base", "kvp") if r % 2 == 0 else ("kvp", "base"):
                dt = turn(base, pair if m == "kvp" else None, base_cache, aux_cache, unseen, new)
                if r >= a.warmup:
                    times[(n, m)].append(1e3 * dt)
    print(f"Chat turn TTFT after a {a.history}-token history ({a.reply} reply tokens new to the auxiliary), ms\n")
    print("| new tokens | base | KV Prediction | reduction |\n|---:|---:|---:|---:|")
    for n in turns:
        cells = []
        for m in ("base", "kvp"):
            s = sorted(times[(n, m)])
            q = statistics.quantiles(s, n=10) if len(s) > 1 else [s[0]] * 9
            cells.append(f"{statistics.median(s):,.1f} ({q[0]:,.1f}–{q[-1]:,.1f})")
        red = statistics.median(times[(n, "base")]) / statistics.median(times[(n, "kvp")])
        print(f"| {n} | {cells[0]} | {cells[1]} | {red:.2f}× |")
    print(
        f"\n{a.model}, {a.kvp or f'untrained LP-{a.keep:.2f} pair'}; load average {load:.2f} → {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
