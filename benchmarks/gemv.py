"""One-row float32 products (a decoding step's projections, the last token's head) as MLX runs them through the BLAS
mlxsuite loads — the shim sends them to GEMV — against the same product with two rows (which still goes to GEMM:
what one row cost before) and numpy's GEMV, interleaved in one process, medians. Each round reads copies of the
weights that together exceed the caches, as a decoding step streams them from memory. SmolLM2-135M's shapes.

    OPENBLAS_NUM_THREADS=1 python benchmarks/gemv.py --reps 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np

from mlxsuite import platform

SHAPES = "576x576,192x576,1536x576,576x1536,49152x576"  # out × in: q/o, k/v, gate/up, down, the tied head


def measure(out_dim: int, in_dim: int, reps: int, stream_mb: float) -> list[float]:
    """Median ms per product: MLX's one-row product, the two-row one, numpy's GEMV. MLX evaluates the products of
    all the copies in one graph (as a decoding step does its layers'), numpy runs them in a loop."""
    copies = max(1, int(stream_mb // (out_dim * in_dim * 4 / 1e6)))
    weights = [mx.random.normal((out_dim, in_dim)) for _ in range(copies)]
    x1, x2 = mx.random.normal((1, in_dim)), mx.random.normal((2, in_dim))
    mx.eval(weights, x1, x2)
    numpy_weights, v = [np.asarray(w) for w in weights], np.asarray(x1)[0]
    runs = [
        lambda: mx.eval([x1 @ w.T for w in weights]),
        lambda: mx.eval([x2 @ w.T for w in weights]),
        lambda: [w @ v for w in numpy_weights],
    ]
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(reps):
        for run, spent in zip(runs, times):
            t0 = time.perf_counter()
            run()
            spent.append((time.perf_counter() - t0) / copies)
    return [statistics.median(spent) * 1e3 for spent in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=SHAPES)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--stream-mb", type=float, default=256.0, help="weight bytes cycled through per shape")
    a = p.parse_args()
    m = platform.machine_info()
    print(f"{m['chip']}, {m['blas']} on {m['blas_threads']} threads, load {os.getloadavg()[0]:.2f}")
    print("| out × in | MB | MLX 1 row (GEMV) ms | GB/s | MLX 2 rows (GEMM) ms | GB/s | numpy GEMV ms | GB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape in a.shapes.split(","):
        out_dim, in_dim = (int(s) for s in shape.split("x"))
        mb = out_dim * in_dim * 4 / 1e6
        cells = [f"{ms:.3f} | {mb / ms:.1f}" for ms in measure(out_dim, in_dim, a.reps, a.stream_mb)]
        print(f"| {out_dim} × {in_dim} | {mb:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
