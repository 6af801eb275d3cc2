"""Platform layer: the fast BLAS on Linux (`blas`), default device and dtype, compiler and distributed checks, the
machine a measurement ran on. Atomic writes (`atomic`), the user-error type (`errors`) and plots (`plots`) live
beside it.

`mlxsuite/__init__.py` imports this package before anything imports `mlx.core` (MLX must find the BLAS already
loaded): nothing here imports `mlx.core` at module level, so MLX is imported inside the functions that use it.
"""

from __future__ import annotations

import functools
import os
import platform as _pyplatform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlxsuite.platform.blas import (
    BlasInfo,
    blas_advice,
    blas_info,
    blas_name,
    blas_threads,
    cache_dir,
    default_blas_threads,
    load_fast_blas,
    mlx_version,
    system_openblas,
)
from mlxsuite.platform.errors import UserError

__version__ = "0.1.0"

# The library's progress callback: progress(done, total, what). The CLI draws it (a bar, or plain lines).
ProgressCallback = Callable[[int, int, str], None]
__all__ = [
    "BlasInfo",
    "blas_advice",
    "blas_info",
    "blas_name",
    "blas_threads",
    "cache_dir",
    "default_blas_threads",
    "load_fast_blas",
    "system_openblas",
]


# ---- device and dtype -------------------------------------------------------------------------------------------


def set_device(name: str | None) -> str:
    """Select "cpu" or "gpu" (None keeps MLX's default). Returns the device in use."""
    import mlx.core as mx

    if name is not None:
        if name not in ("cpu", "gpu"):
            raise UserError(f"unknown device {name!r}: use cpu or gpu")
        if name == "gpu" and not (mx.metal.is_available() or mx.cuda.is_available()):
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
        raise UserError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
    return getattr(mx, name)


@functools.cache  # asked on every forward: a PATH search is a quarter of a millisecond
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


def _device_info(device=None) -> dict:
    """`mx.device_info()` (MLX >= 0.30): Metal gives device_name (the chip) and memory_size; the CPU build gives
    device_name and architecture only ({'architecture': 'x86_64', 'device_name': 'AMD EPYC'} here)."""
    import mlx.core as mx

    try:
        return dict(mx.device_info(device) if device is not None else mx.device_info())
    except (AttributeError, RuntimeError, ValueError, TypeError):
        return {}


def _system_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def os_release() -> tuple[str, str, str]:
    """(OS, its version, kernel): ("macOS", "14.5", "23.5.0") on a Mac, ("Linux", "Debian GNU/Linux 12
    (bookworm)", "6.1.0-…") on Linux, else what `platform` says."""
    system, kernel = _pyplatform.system(), _pyplatform.release()
    if system == "Darwin":
        return "macOS", _pyplatform.mac_ver()[0], kernel
    if system == "Linux":
        try:
            return "Linux", _pyplatform.freedesktop_os_release().get("PRETTY_NAME", ""), kernel
        except OSError:
            return "Linux", "", kernel
    return system, _pyplatform.version(), kernel


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Who measured, for every benchmark result and `doctor`: mlxsuite, MLX and mlx-lm versions, device, chip
    and memory (`mx.device_info()` where it tells, /proc otherwise), OS and version, Python, BLAS. Memory in GB
    (10^9 bytes) as mlx-lm prints it."""
    import mlx.core as mx

    device = set_device(None)
    info = _device_info()
    if "device_name" not in info and mx.metal.is_available():
        info = {**_device_info(mx.gpu), **info}
    memory = info.get("memory_size") or info.get("total_memory") or _system_memory()
    os_name, os_version, kernel = os_release()
    return {
        "mlxsuite_version": __version__,
        "mlx_version": mlx_version(),
        "mlx_lm_version": _version("mlx-lm"),
        "device": device,
        "chip": str(info.get("device_name") or cpu_name()),
        "memory_gb": memory / 1e9 if memory else None,
        "os": os_name,
        "os_version": os_version,
        "kernel": kernel,
        "machine": _pyplatform.machine(),
        "cpu_count": os.cpu_count(),
        "python": _pyplatform.python_version(),
        "blas": blas_name(),
        "blas_threads": blas_threads(),
    }


def describe(measure: bool = True) -> dict:
    """Everything `mlxsuite doctor` reports."""
    import mlx.core as mx

    blas = blas_info()
    info = {
        **machine_info(),
        "cpu": cpu_name(),
        "default_dtype": str(default_dtype()).replace("mlx.core.", ""),
        "metal": bool(mx.metal.is_available()),
        "cuda": bool(mx.cuda.is_available()),
        "blas_name": blas_name(blas),
        "blas": asdict(blas),
        "blas_advice": blas_advice(blas),
        "compile_compiler": compiler_available(),
        "distributed_backends": distributed_backends(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if measure:
        info["blas"].update(measure_sgemm())
    return info
