"""float32 GEMM: MLX with the BLAS mlxsuite loads vs numpy, interleaved in one process; and MLX with its stock
(bundled reference) BLAS in a child process for contrast. Medians of GFLOP/s.

    python benchmarks/gemm.py --sizes 1024,2048 --reps 7
"""

import argparse
import json
import os
import subprocess
import sys

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)
from mlxsuite import platform

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1024,2048")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--stock", action="store_true", help="(internal) measure in this process only")
    a = p.parse_args()
    rows = []
    for n in [int(s) for s in a.sizes.split(",")]:
        r = platform.measure_sgemm(n, a.reps)
        r["blas"] = platform.blas_info().library
        r["ratio_mlx_over_numpy"] = r["mlx_sgemm_gflops"] / r["numpy_sgemm_gflops"]
        rows.append(r)
    if not a.stock:
        env = {**os.environ, "MLXSUITE_BLAS": "reference"}
        out = subprocess.run(
            [sys.executable, __file__, "--sizes", a.sizes, "--reps", "3", "--stock"],
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        stock = json.loads(out)["rows"]
        for r, s in zip(rows, stock):
            r["mlx_stock_blas_gflops"] = s["mlx_sgemm_gflops"]
    print(json.dumps({"cpu": platform.cpu_name(), "load_average": os.getloadavg()[0], "rows": rows}, indent=2))
