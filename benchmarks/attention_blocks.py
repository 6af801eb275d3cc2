"""The fused CPU attention at several block sizes (`kernels.SCORES_PER_BLOCK`), in one process: the same prefill of
a model (SmolLM2 by default) with each block size in turn (rotated each round; `whole` = one op over chunk × context
scores), medians and the median per-round ratio of each size's time to the first size's.

    scripts/get-smollm2.sh && OPENBLAS_NUM_THREADS=1 python benchmarks/attention_blocks.py --lengths 1024,2048 \
        --blocks default,whole,262144 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite import store
from mlxsuite.generate import prefill, sample
from mlxsuite.models import kernels

SMOLLM2 = Path.home() / ".cache" / "mlxsuite" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT = kernels.SCORES_PER_BLOCK


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=str(SMOLLM2))
    p.add_argument("--lengths", default="1024,2048")
    p.add_argument("--blocks", default="default,whole", help="block sizes in scores: numbers, default, whole")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    model = store.load(a.model, "lm", dtype=mx.float32, dequantize=True).model
    named = {"default": DEFAULT, "whole": 1 << 62}
    configs = [(b, named[b] if b in named else int(b)) for b in a.blocks.split(",")]

    def run(tokens: mx.array, config: tuple) -> float:
        kernels.SCORES_PER_BLOCK = config[1]
        t0 = time.perf_counter()
        mx.eval(sample(prefill(model, tokens, model.make_cache())))
        return time.perf_counter() - t0

    for n in (int(x) for x in a.lengths.split(",")):
        tokens = mx.random.randint(0, model.args.vocab_size, (1, n))
        for config in configs:
            run(tokens, config)  # warm-up
        times: dict[tuple, list[float]] = {config: [] for config in configs}
        for r in range(a.rounds):
            for config in configs[r % len(configs) :] + configs[: r % len(configs)]:
                times[config].append(run(tokens, config))
        for config in configs:
            ratios = [t / t0 for t, t0 in zip(times[config], times[configs[0]])]
            name, size = config
            print(
                f"{n} tokens, blocks of {name} ({size if size < 1 << 62 else 'one block'}): "
                f"{statistics.median(times[config]):.2f} s, / first {statistics.median(ratios):.3f} "
                f"({min(ratios):.2f}-{max(ratios):.2f})"
            )
        kernels.SCORES_PER_BLOCK = DEFAULT


if __name__ == "__main__":
    main()
