"""The fused CPU attention whole against in blocks (`kernels.SCORES_PER_BLOCK`), paired in one process: the same
prefill of a model (SmolLM2 by default) with the block size huge (one op over chunk × context scores) or the default
(blocks of ≤ 1M scores), alternating ABBA, medians and per-pair ratios.

    scripts/get-smollm2.sh && OPENBLAS_NUM_THREADS=1 python benchmarks/attention_blocks.py --lengths 1024,2048 --pairs 5
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
BLOCKED = kernels.SCORES_PER_BLOCK


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=str(SMOLLM2))
    p.add_argument("--lengths", default="1024,2048")
    p.add_argument("--pairs", type=int, default=5)
    a = p.parse_args()
    model = store.load(a.model, "lm", dtype=mx.float32, dequantize=True).model

    def run(tokens: mx.array, blocked: bool) -> float:
        kernels.SCORES_PER_BLOCK = BLOCKED if blocked else 1 << 62
        t0 = time.perf_counter()
        mx.eval(sample(prefill(model, tokens, model.make_cache())))
        return time.perf_counter() - t0

    for n in (int(x) for x in a.lengths.split(",")):
        tokens = mx.random.randint(0, model.args.vocab_size, (1, n))
        run(tokens, True), run(tokens, False)  # warm-up
        blocked, whole = [], []
        for i in range(a.pairs):
            for b in (True, False) if i % 2 == 0 else (False, True):
                (blocked if b else whole).append(run(tokens, b))
        ratios = [w / b for b, w in zip(blocked, whole)]
        print(
            f"{n} tokens: blocked {statistics.median(blocked):.2f} s, whole {statistics.median(whole):.2f} s, "
            f"whole / blocked {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
