"""The CPU prefill's attention paths side by side, in one process: whole prefills of a model (SmolLM2 by default)
with each configuration in turn, rotated each round, medians and the median per-round ratio to the first
configuration. Configurations: `native` (models/attention.c at the default GEMM_ROWS), `native:N` (N rows per GEMM),
`mlx` (MLX's ops, kernels.py's fused passes in blocks of SCORES_PER_BLOCK scores), `mlx:N` (blocks of N scores),
`mlx:whole` (one op over chunk × context).

    scripts/get-smollm2.sh && OPENBLAS_NUM_THREADS=1 python benchmarks/native_attention.py --lengths 512,2048 \
        --configs mlx,native,native:64,native:256 --rounds 5
    OPENBLAS_NUM_THREADS=1 python benchmarks/native_attention.py --configs mlx,mlx:whole,mlx:262144 --prefill-step 128
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import mlxsuite  # noqa: F401  (must come before mlx.core: loads the optimized BLAS)

# isort: split
import mlx.core as mx

from mlxsuite import platform, store
from mlxsuite.generate import prefill, sample
from mlxsuite.models import kernels, native_attention

SMOLLM2 = Path.home() / ".cache" / "mlxsuite" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ROWS, DEFAULT_BLOCK = native_attention.GEMM_ROWS, kernels.SCORES_PER_BLOCK


def configure(config: str):
    """Set the GEMM rows or the score block of `config`; the context to run it in."""
    path, _, size = config.partition(":")
    native_attention.GEMM_ROWS = int(size) if path == "native" and size else DEFAULT_ROWS
    kernels.SCORES_PER_BLOCK = (
        DEFAULT_BLOCK if path == "native" or not size else 1 << 62 if size == "whole" else int(size)
    )
    return kernels.disabled(native_only=True) if path == "mlx" else contextlib.nullcontext()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=str(SMOLLM2))
    p.add_argument("--lengths", default="512,2048")
    p.add_argument("--configs", default="mlx,native")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prefill-step", type=int, default=None, help="chunk size (default: the CPU's default)")
    a = p.parse_args()
    if not native_attention.available():
        raise SystemExit("the native attention is not available here (no C compiler or no optimized BLAS)")
    model = store.load(a.model, "lm", dtype=mx.float32, dequantize=True).model
    configs = a.configs.split(",")

    def run(tokens: mx.array, config: str) -> float:
        with configure(config):
            t0 = time.perf_counter()
            mx.eval(sample(prefill(model, tokens, model.make_cache(), a.prefill_step)))
            return time.perf_counter() - t0

    m = platform.machine_info()
    print(f"{m['chip']}, {m['blas']} on {m['blas_threads']} threads, load {os.getloadavg()[0]:.2f}")
    for n in (int(x) for x in a.lengths.split(",")):
        tokens = mx.random.randint(0, model.args.vocab_size, (1, n))
        for config in configs:
            run(tokens, config)  # warm-up
        times: dict[str, list[float]] = {config: [] for config in configs}
        for r in range(a.rounds):
            for config in configs[r % len(configs) :] + configs[: r % len(configs)]:
                times[config].append(run(tokens, config))
        for config in configs:
            ratios = [t / t0 for t, t0 in zip(times[config], times[configs[0]])]
            print(
                f"{n} tokens, {config}: {statistics.median(times[config]):.3f} s, / {configs[0]} "
                f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
