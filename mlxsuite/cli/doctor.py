"""`mlxsuite doctor`: what this machine gives MLX (BLAS, device, compiler, distributed backends)."""

from __future__ import annotations

import typer
from rich.table import Table

from .. import platform
from .common import out, print_json


def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
    no_bench: bool = typer.Option(False, "--no-bench", help="Skip the GEMM measurement."),
):
    """Report OS, CPU, MLX, device, BLAS (with MLX vs numpy float32 GEMM GFLOP/s), compiler and distributed backends."""
    info = platform.describe(measure=not no_bench)
    if json_out:
        print_json(info)
        return
    table = Table(title="mlxsuite doctor", show_header=False)
    blas = info["blas"]
    rows = [
        ("OS / CPU", f"{info['os']} / {info['cpu']} ({info['cpu_count']} cores)"),
        ("MLX", f"{info['mlx_version']}, device {info['device']}, default dtype {info['default_dtype']}"),
        ("BLAS", f"{blas['library']} ({blas['status']}) {blas['detail']}"),
        ("mx.compile", "compiler found" if info["compile_compiler"] else "no C++ compiler: compiled code runs unfused"),
        ("distributed", ", ".join(info["distributed_backends"]) or "none"),
    ]
    if "mlx_sgemm_gflops" in blas:
        ratio = blas["mlx_sgemm_gflops"] / blas["numpy_sgemm_gflops"]
        rows.append(
            ("float32 GEMM", f"MLX {blas['mlx_sgemm_gflops']:.1f} GFLOP/s, numpy {blas['numpy_sgemm_gflops']:.1f} "
             f"GFLOP/s ({ratio:.0%} of numpy, n={blas['n']})")
        )
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
