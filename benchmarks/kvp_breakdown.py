"""Where KV Prediction's prefill spends beyond the auxiliary's, cumulatively: the auxiliary's fill with its K/V taps,
+ the predictor (batched across layers), + the base's writes of the predicted K/V (k-norm, RoPE, cache), + the
base's step on the last token. Each stage is a whole prefill from empty caches; medians over rounds.

    OPENBLAS_NUM_THREADS=1 python benchmarks/kvp_breakdown.py smollm2-kvp-lp50 --length 2048 --reps 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite.generate import default_prefill_step, reserved
from mlxsuite.kvp.recipe import load_pair
from mlxsuite.models.kv_prediction import write_base_kv

STAGES = ("auxiliary fill (taps)", "+ predictor", "+ base writes", "+ base last token")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pair", help="a KV Prediction folder (`mlxsuite kvp train`)")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    pair = load_pair(a.pair)[0]
    L, S, stacked = a.length, default_prefill_step(a.length), pair.predictor.stacked()
    tokens = mx.random.randint(0, pair.base.args.vocab_size, (1, L))

    def run(stage: int) -> float:
        aux_cache, base_cache = pair.auxiliary.make_cache(), pair.base.make_cache()
        with reserved(aux_cache + base_cache, L):  # as the prefill does
            t0 = time.perf_counter()
            for s in range(0, L - 1, S):
                chunk, tap = tokens[:, s : min(s + S, L - 1)], []
                pair.auxiliary(chunk, aux_cache, tap=tap)
                out = [c.state for c in aux_cache]
                if stage >= 1:
                    keys, values = pair.predictor.batched([k for k, _ in tap], [v for _, v in tap], stacked)
                    out += [keys, values]
                if stage >= 2:
                    write_base_kv(pair.base, list(zip(keys, values)), base_cache)
                    out += [c.state for c in base_cache]
                mx.eval(out)
            if stage >= 3:
                mx.eval(pair.base(tokens[:, -1:], base_cache)[:, -1])
            return time.perf_counter() - t0

    times: list[list[float]] = [[] for _ in STAGES]
    for _ in range(a.reps):
        for i in range(len(STAGES)):
            times[i].append(run(i))
    for name, t in zip(STAGES, times):
        print(f"{name}: {statistics.median(t):.3f} s")


if __name__ == "__main__":
    main()
