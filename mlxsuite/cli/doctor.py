"""`mlxsuite doctor`: what this machine gives MLX (versions, device, chip, BLAS, compiler, distributed backends)."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from mlxsuite import platform
from mlxsuite.cli.common import print_json, print_whole
from mlxsuite.platform.blas import blas_threads_set_by_user


def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
    no_bench: bool = typer.Option(False, "--no-bench", help="Skip the GEMM measurement."),
):
    """Report versions (mlxsuite, MLX, mlx-lm), device, chip and memory, OS, Python, the BLAS (with MLX vs numpy
    float32 GEMM GFLOP/s), the compiler mx.compile needs and the distributed backends; say what to install when
    MLX is left with its slow reference BLAS."""
    info = platform.describe(measure=not no_bench)
    if json_out:
        print_json(info)
        return
    table = Table(title="mlxsuite doctor", show_header=False)
    blas = info["blas"]
    memory = f", {info['memory_gb']:.1f} GB" if info["memory_gb"] else ""
    rows = [
        (
            "versions",
            f"mlxsuite {info['mlxsuite_version']}, MLX {info['mlx_version']}, "
            f"mlx-lm {info['mlx_lm_version'] or 'not installed'}, Python {info['python']}",
        ),
        ("OS", f"{info['os']} {info['os_version']} (kernel {info['kernel']}, {info['machine']})"),
        (
            "device",
            f"{info['device']}: {info['chip']}{memory}, {info['cpu_count']} cores; default dtype "
            f"{info['default_dtype']}",
        ),
        (
            "BLAS",
            f"{info['blas_name']}"
            + (f", {_threads(info['blas_threads'])}" if info["blas_threads"] else "")
            + f": {blas['library']} ({blas['status']}) {blas['detail']}",
        ),
        ("mx.compile", "compiler found" if info["compile_compiler"] else "no C++ compiler: compiled code runs unfused"),
        ("distributed", ", ".join(info["distributed_backends"]) or "none"),
    ]
    if "mlx_sgemm_gflops" in blas:
        ratio = blas["mlx_sgemm_gflops"] / blas["numpy_sgemm_gflops"]
        rows.append(
            (
                "float32 GEMM",
                f"MLX {blas['mlx_sgemm_gflops']:.1f} GFLOP/s, numpy {blas['numpy_sgemm_gflops']:.1f} "
                f"GFLOP/s ({ratio:.0%} of numpy, n={blas['n']})",
            )
        )
    if info["blas_advice"]:
        rows.append((Text("install", style="yellow"), info["blas_advice"]))
    for k, v in rows:
        table.add_row(k, v)
    print_whole(table)


def _threads(n: int) -> str:
    why = (
        "as your environment sets"
        if blas_threads_set_by_user()
        else "the cores idle at start; OPENBLAS_NUM_THREADS sets it"
    )
    return f"{n} thread{'' if n == 1 else 's'} ({why})"
