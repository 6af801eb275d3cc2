"""Small C libraries compiled once with the system C compiler and cached (the BLAS shim, the fused CPU attention).

A library is keyed by its source, compiler arguments and the machine's CPU flags (`-march=native` code must not run
on another CPU sharing the cache folder); it is written through the atomic path, so a killed compile leaves no
half-written library; the KEPT most recently used builds of a library stay. Without a compiler, or when it fails,
`build` returns None and callers keep their fallback.

This module must not import mlx.core at import time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from mlxsuite.platform import atomic

KEPT = 4  # builds of one library kept (the most recently used)


def c_compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@functools.cache
def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def build(name: str, source: str, args: list[str], folder: Path) -> str | None:
    """The path of lib`name`_<key>.so in `folder`, compiled from the C `source` with `args` (flags and libraries)
    if not there yet; None without a C compiler or when the compiler fails."""
    compiler = c_compiler()
    if compiler is None:
        return None
    key = hashlib.sha1("|".join([source, *args, _cpu_flags()]).encode()).hexdigest()[:16]
    out = folder / f"lib{name}_{key}.so"
    if out.exists():
        with contextlib.suppress(OSError):
            os.utime(out)  # its time is its last use: the builds kept are the most recently used
        return str(out)

    def compile_into(tmp: Path) -> None:
        src = atomic.temp_path(out.with_suffix(".c"))
        try:
            src.write_text(source)
            cmd = [compiler, "-shared", "-fPIC", str(src), "-o", str(tmp), *args]
            if subprocess.run(cmd, capture_output=True, timeout=120).returncode != 0:
                raise OSError("compiler failed")
        finally:
            src.unlink(missing_ok=True)

    try:
        atomic.write_file(out, compile_into)
        os.chmod(out, 0o755)
    except (OSError, subprocess.TimeoutExpired):
        return None
    builds = sorted(folder.glob(f"lib{name}_*.so"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEPT:]:
        old.unlink(missing_ok=True)  # other sources, flags or CPUs (another checkout, an upgrade)
    return str(out)
