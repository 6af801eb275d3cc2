"""Platform layer: fast BLAS on Linux, default device and dtype, compiler and distributed checks.

The `mlx[cpu]` wheel links a reference BLAS (~3 GFLOP/s float32 GEMM). MLX calls `cblas_sgemm` by name, so an
optimized BLAS loaded with RTLD_GLOBAL *before* `mlx.core` is imported takes its place. Each candidate library is
first checked against numpy in a subprocess (a wrong BLAS cannot be unloaded from this process); the verdict is
cached per library and MLX version. Set MLXSUITE_BLAS=reference to keep the stock BLAS, or to a library path.

This module must not import mlx.core at import time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import json
import os
import platform as _pyplatform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class BlasInfo:
    library: str  # path of the loaded library, "reference" (bundled) or "accelerate"/"cublas" on other platforms
    status: str  # "loaded", "stock", "failed-self-test", "too-late" (mlx.core imported first), "disabled"
    detail: str = ""


_BLAS: BlasInfo | None = None
_SELF_TEST = r"""
import ctypes, json, sys
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import numpy as np, mlx.core as mx
rng = np.random.default_rng(0)
worst = 0.0
for m, k, n, ta, tb in [(64, 96, 80, False, False), (257, 129, 65, True, False), (96, 200, 33, False, True)]:
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    A, B = mx.array(a), mx.array(b)
    A = A.T if ta else A
    B = B.T if tb else B
    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    out = np.array(A @ B, dtype=np.float64)
    worst = max(worst, float(np.abs(out - ref).max() / np.abs(ref).max()))
print(json.dumps({"rel_err": worst}))
"""


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "mlxsuite"


def _mlx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx")
    except PackageNotFoundError:
        return "unknown"


def _candidates() -> list[str]:
    """Optimized BLAS libraries exporting the standard cblas_* names, best first."""
    found = []
    prefixes = {sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", "")}
    for prefix in filter(None, prefixes):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    openblas = ctypes.util.find_library("openblas")
    if openblas:
        found.append(openblas)
    for pattern in ("/usr/lib/*/libopenblas.so.0", "/usr/lib/*/openblas-pthread/libopenblas.so.0", "/usr/lib64/libopenblas.so.0"):
        found += sorted(glob.glob(pattern))
    return list(dict.fromkeys(found))


def _openblas_coretype() -> str | None:
    """OpenBLAS mis-detects some virtualized CPUs; name the family when we can tell it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set()
    vendor, family = "", 0
    for line in info.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu family" and not family:
            family = int(value.strip() or 0)
    if vendor == "AuthenticAMD" and family >= 23:
        return "ZEN"
    if "avx512f" in flags:
        return "SKYLAKEX"
    if "avx2" in flags:
        return "HASWELL"
    return None


def _self_test(path: str) -> tuple[bool, str]:
    """Run the BLAS against numpy in a child process; cache the verdict."""
    try:
        stat = os.stat(path)
        key_src = f"{os.path.realpath(path)}|{stat.st_mtime_ns}|{_mlx_version()}|{os.environ.get('OPENBLAS_CORETYPE', '')}"
    except OSError as e:
        return False, str(e)
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    cache = _cache_dir() / f"blas-{key}.json"
    if cache.exists():
        try:
            verdict = json.loads(cache.read_text())
            return verdict["ok"], verdict["detail"]
        except (ValueError, KeyError):
            pass
    try:
        proc = subprocess.run([sys.executable, "-c", _SELF_TEST, path], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            ok, detail = False, (proc.stderr.strip().splitlines() or ["self-test crashed"])[-1]
        else:
            rel = json.loads(proc.stdout.strip().splitlines()[-1])["rel_err"]
            ok, detail = rel < 1e-4, f"self-test max relative error {rel:.1e}"
    except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as e:
        ok, detail = False, f"self-test failed: {e}"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"ok": ok, "detail": detail, "library": path}))
        os.replace(tmp, cache)
    except OSError:
        pass
    return ok, detail


def _set_threads(handle: ctypes.CDLL, path: str) -> None:
    """Use every core for GEMM unless the user set a thread count (one per rank under mlx.launch)."""
    user_vars = ("MKL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    if any(v in os.environ for v in user_vars):
        return
    n = os.cpu_count() or 1
    if "MLX_RANK" in os.environ:  # several ranks share this machine
        n = max(1, n // int(os.environ.get("MLXSUITE_LOCAL_RANKS", "2")))
    for fn in ("MKL_Set_Num_Threads", "openblas_set_num_threads"):
        if hasattr(handle, fn):
            getattr(handle, fn)(ctypes.c_int(n))
            return


def load_fast_blas() -> BlasInfo:
    """Load an optimized BLAS into the global symbol scope before mlx.core. Idempotent."""
    global _BLAS
    if _BLAS is not None:
        return _BLAS
    if sys.platform == "darwin":
        _BLAS = BlasInfo("accelerate", "stock", "MLX uses Accelerate on macOS")
        return _BLAS
    choice = os.environ.get("MLXSUITE_BLAS", "auto")
    if choice in ("reference", "none", "off"):
        _BLAS = BlasInfo("reference", "disabled", "MLXSUITE_BLAS disables the optimized BLAS")
        return _BLAS
    if "mlx.core" in sys.modules:
        _BLAS = BlasInfo("reference", "too-late", "mlx.core was imported before mlxsuite; import mlxsuite first")
        return _BLAS
    candidates = [choice] if choice != "auto" else _candidates()
    failures = []
    for path in candidates:
        if "openblas" in os.path.basename(path) and "OPENBLAS_CORETYPE" not in os.environ:
            coretype = _openblas_coretype()
            if coretype:
                os.environ["OPENBLAS_CORETYPE"] = coretype
        ok, detail = _self_test(path)
        if not ok:
            failures.append(f"{path}: {detail}")
            continue
        handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        _set_threads(handle, path)
        _BLAS = BlasInfo(path, "loaded", detail)
        return _BLAS
    if failures:
        warnings.warn("no optimized BLAS passed the self-test, MLX float32 matmul will be slow: " + "; ".join(failures))
        _BLAS = BlasInfo("reference", "failed-self-test", "; ".join(failures))
    else:
        _BLAS = BlasInfo("reference", "stock", "no optimized BLAS found (pip install mkl, or apt install libopenblas0)")
    return _BLAS


def blas_info() -> BlasInfo:
    return _BLAS or load_fast_blas()


# ---- device and dtype -------------------------------------------------------------------------------------------


def set_device(name: str | None) -> str:
    """Select "cpu" or "gpu" (None keeps MLX's default). Returns the device in use."""
    import mlx.core as mx

    if name is not None:
        if name not in ("cpu", "gpu"):
            from .errors import UserError

            raise UserError(f"unknown device {name!r}: use cpu or gpu")
        if name == "gpu" and not (mx.metal.is_available() or mx.cuda.is_available()):
            from .errors import UserError

            raise UserError("no GPU backend is available (this MLX has neither Metal nor CUDA)")
        mx.set_default_device(mx.gpu if name == "gpu" else mx.cpu)
    return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"


def default_dtype():
    """float32 on the CPU (half-precision matmul skips BLAS and is slow there), bfloat16 on a GPU."""
    import mlx.core as mx

    return mx.float32 if mx.default_device().type == mx.DeviceType.cpu else mx.bfloat16


def parse_dtype(name: str | None):
    import mlx.core as mx

    if name is None or name == "auto":
        return default_dtype()
    if name not in ("float32", "bfloat16", "float16"):
        from .errors import UserError

        raise UserError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return getattr(mx, name)


def compiler_available() -> bool:
    """mx.compile on Linux JIT-builds kernels with the system C++ compiler and silently skips fusion without one."""
    if sys.platform == "darwin":
        return True
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def distributed_backends() -> list[str]:
    import mlx.core as mx

    return [b for b in ("ring", "mpi", "nccl", "jaccl") if mx.distributed.is_available(b)]


# ---- measurement ------------------------------------------------------------------------------------------------


def measure_sgemm(n: int = 1024, reps: int = 5) -> dict:
    """float32 n×n GEMM rate of MLX and numpy, measured interleaved in this process (medians, GFLOP/s)."""
    import statistics

    import mlx.core as mx
    import numpy as np

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a, b)
    an, bn = np.array(a), np.array(b)
    mx.eval(a @ b)
    an @ bn
    t_mlx, t_np = [], []
    for _ in range(reps):
        t = time.perf_counter()
        mx.eval(a @ b)
        t_mlx.append(time.perf_counter() - t)
        t = time.perf_counter()
        an @ bn
        t_np.append(time.perf_counter() - t)
    flops = 2 * n**3
    return {
        "n": n,
        "mlx_sgemm_gflops": flops / statistics.median(t_mlx) / 1e9,
        "numpy_sgemm_gflops": flops / statistics.median(t_np) / 1e9,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _pyplatform.processor() or _pyplatform.machine()


def describe(measure: bool = True) -> dict:
    """Everything `mlxsuite doctor` reports."""
    import mlx.core as mx

    blas = blas_info()
    info = {
        "os": f"{_pyplatform.system()} {_pyplatform.release()}",
        "machine": _pyplatform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": _pyplatform.python_version(),
        "mlx_version": _mlx_version(),
        "device": set_device(None),
        "default_dtype": str(default_dtype()).replace("mlx.core.", ""),
        "metal": bool(mx.metal.is_available()),
        "cuda": bool(mx.cuda.is_available()),
        "blas": asdict(blas),
        "compile_compiler": compiler_available(),
        "distributed_backends": distributed_backends(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if measure:
        info["blas"].update(measure_sgemm())
    return info
