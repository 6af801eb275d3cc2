"""KV Prediction's TTFT against its auxiliary's alone, paired in one process: the one prefill of the same prompt
through the auxiliary (its own forward) and through the pair (`kvp.prompt_fill`: auxiliary, predictor, the base's
writes, the base's last token), alternating, medians and the median per-round ratio. Issue 26's target is ≤ 1.15×
at 2,048 tokens; `bench ttft --kvp` measures the same inside its wider schedule (more modes between, more noise).

    OPENBLAS_NUM_THREADS=1 python benchmarks/kvp_vs_aux.py smollm2-kvp-lp50 --lengths 1024,2048 --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite.generate import prefill, sample
from mlxsuite.kvp.recipe import load_pair, prompt_fill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pair", help="a KV Prediction folder (`mlxsuite kvp train`)")
    p.add_argument("--lengths", default="2048")
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    pair = load_pair(a.pair)[0]

    def aux(tokens: mx.array) -> float:
        t0 = time.perf_counter()
        mx.eval(sample(prefill(pair.auxiliary, tokens, pair.auxiliary.make_cache())))
        return time.perf_counter() - t0

    def kvp(tokens: mx.array) -> float:
        cache, fill = prompt_fill(pair)
        t0 = time.perf_counter()
        mx.eval(sample(prefill(pair.base, tokens, cache, None, fill)))
        return time.perf_counter() - t0

    for n in (int(x) for x in a.lengths.split(",")):
        tokens = mx.random.randint(0, pair.base.args.vocab_size, (1, n))
        aux(tokens), kvp(tokens)  # warm-up
        times: dict = {aux: [], kvp: []}
        for r in range(a.rounds):
            for fn in (aux, kvp) if r % 2 == 0 else (kvp, aux):
                times[fn].append(fn(tokens))
        ratios = [k / x for k, x in zip(times[kvp], times[aux])]
        print(
            f"{n} tokens: auxiliary {statistics.median(times[aux]):.2f} s, KV Prediction "
            f"{statistics.median(times[kvp]):.2f} s, ratio {statistics.median(ratios):.3f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
