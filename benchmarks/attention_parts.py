"""What one block of the fused CPU attention costs, op by op, per score: the q·kᵀ GEMM, the causal mask, the row
max, the shift, the exp (models/kernels.py's fast exp), ·V and ·1 (the softmax denominator), each evaluated alone
on block shapes of SmolLM2 (3 query heads per KV head, head_dim 64), beside the whole block (`kernels._attend`).
The two GEMMs are the FLOPs (2·64 each per score); the rest is what MLX's CPU backend cannot fuse into them.

    OPENBLAS_NUM_THREADS=1 python benchmarks/attention_parts.py --reps 25
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite.models import kernels

SHAPES = [(170, 2048), (256, 1024), (256, 512)]  # (query rows, keys): a 1M-score block at 2,048, whole chunks below


def median_ms(fn, reps: int) -> float:
    for _ in range(3):
        mx.eval(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def parts(n: int, L: int, rep: int = 3, D: int = 64) -> dict:
    q, k, v = (mx.random.normal(s) for s in [(1, 1, rep * n, D), (1, 1, L, D), (1, 1, L, D)])
    scores = (q @ k.swapaxes(-1, -2)).reshape(1, 1, rep, n, L)
    causal = mx.arange(L - n, L)[:, None] >= mx.arange(L)[None]
    masked = mx.where(causal, scores, -mx.inf)
    row_max = masked.max(axis=-1, keepdims=True)
    shifted = kernels._shift(masked, row_max)
    weights = kernels.fast_exp(shifted).reshape(1, 1, rep * n, L)
    ones = mx.ones((L, 1))
    mx.eval(q, k, v, scores, causal, masked, row_max, shifted, weights)
    return {
        "q·kᵀ (GEMM)": lambda: q @ k.swapaxes(-1, -2),
        "causal mask": lambda: mx.where(causal, scores, -mx.inf),
        "row max": lambda: masked.max(axis=-1, keepdims=True),
        "shift": lambda: kernels._shift(masked, row_max),
        "exp": lambda: kernels.fast_exp(shifted),
        "·V (GEMM)": lambda: weights @ v,
        "·1 (denominator)": lambda: weights @ ones,
        "whole block": lambda: kernels._attend(q.reshape(1, rep, n, D), k, v, L - n, 0),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=25)
    a = p.parse_args()
    header = " | ".join(f"{n}×{L}: ms | ns/score" for n, L in SHAPES)
    print(f"| op | {header} |\n|:---|" + "---:|---:|" * len(SHAPES))
    table = {(n, L): {name: median_ms(fn, a.reps) for name, fn in parts(n, L).items()} for n, L in SHAPES}
    for name in table[SHAPES[0]]:
        cells = " | ".join(f"{table[s][name]:.2f} | {1e6 * table[s][name] / (3 * s[0] * s[1]):.2f}" for s in SHAPES)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
