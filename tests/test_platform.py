"""The fast-BLAS loader: the loaded library agrees with numpy; a broken one is refused with a warning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mlxsuite import platform
from mlxsuite.platform import blas


def test_loaded_blas_matches_numpy():
    import mlx.core as mx

    info = platform.blas_info()
    assert info.status in ("loaded", "stock", "disabled")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)).astype(np.float32), rng.standard_normal((200, 150)).astype(np.float32)
    np.testing.assert_allclose(np.array(mx.array(a) @ mx.array(b)), a @ b, rtol=1e-4, atol=1e-4)


def test_one_row_and_one_column_products_match_numpy():
    """The shim sends them to GEMV: either side transposed, views into a wider matrix (leading dimension wider than
    the row: a slice), batches, a nonzero accumulation (addmm's beta)."""
    import mlx.core as mx

    rng = np.random.default_rng(1)
    wide = rng.standard_normal((3, 150, 230)).astype(np.float32)
    w = mx.array(wide)
    rows = [(w[0, 3:4, :70], wide[0, 3:4, :70]), (w[0, :70, 5:6].T, wide[0, :70, 5:6].T)]  # 1 × 70, plain and ᵀ
    rows += [(w[:, 1:2, 10:80], wide[:, 1:2, 10:80])]  # batched
    mats = [(w[1, 70:140, :90], wide[1, 70:140, :90]), (w[2, :90, 100:170].T, wide[2, :90, 100:170].T)]  # 70 × 90
    for a, a_np in rows:
        for b, b_np in mats:
            np.testing.assert_allclose(np.array(a @ b), a_np @ b_np, rtol=1e-4, atol=1e-4)
            column, column_np = a.swapaxes(-1, -2), a_np.swapaxes(-1, -2)  # 70 × 1
            np.testing.assert_allclose(np.array(b.T @ column), b_np.T @ column_np, rtol=1e-4, atol=1e-4)
    c = rng.standard_normal((1, 90)).astype(np.float32)
    out = mx.addmm(mx.array(c), rows[0][0], mats[0][0], alpha=0.5, beta=2.0)
    np.testing.assert_allclose(np.array(out), 2.0 * c + 0.5 * (rows[0][1] @ mats[0][1]), rtol=1e-4, atol=1e-4)


def test_the_shim_gemm_of_one_row_or_column_called_directly():
    """Through the C interface as any caller may use it (MLX copies a strided column first): every transpose, leading
    dimensions wider than the matrices, alpha and beta, against float64 numpy."""
    import ctypes

    import pytest

    path = blas._openblas_shim() if platform.blas_info().status == "loaded" else None
    if path is None:
        pytest.skip("needs the scipy-openblas32 wheel and a C compiler")
    sgemm = ctypes.CDLL(path).cblas_sgemm
    f, ptr = ctypes.c_float, ctypes.c_void_p
    sgemm.argtypes = [ctypes.c_int] * 6 + [f, ptr, ctypes.c_int, ptr, ctypes.c_int, f, ptr, ctypes.c_int]
    rng = np.random.default_rng(2)
    for m, k, n in [(1, 70, 90), (90, 70, 1)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m + 5) if ta else (m, k + 5)).astype(np.float32)  # 5 columns of padding
                b = rng.standard_normal((n, k + 3) if tb else (k, n + 3)).astype(np.float32)
                c = rng.standard_normal((m, n + 2)).astype(np.float32)
                op_a = (a[:, :m].T if ta else a[:, :k]).astype(np.float64)
                op_b = (b[:, :k].T if tb else b[:, :n]).astype(np.float64)
                want = 0.5 * op_a @ op_b + 2.0 * c[:, :n]
                args = (101, 112 if ta else 111, 112 if tb else 111, m, n, k, 0.5, a.ctypes.data, a.shape[1])
                sgemm(*args, b.ctypes.data, b.shape[1], 2.0, c.ctypes.data, c.shape[1])
                np.testing.assert_allclose(c[:, :n], want, rtol=1e-4, atol=1e-4, err_msg=f"{m, k, n, ta, tb}")


CHILD = (
    "import json, mlxsuite; from dataclasses import asdict; print(json.dumps(asdict(mlxsuite.platform.blas_info())))"
)


def _child(env):
    r = subprocess.run([sys.executable, "-W", "always", "-c", CHILD], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def test_a_library_that_fails_the_self_test_falls_back_with_a_warning(tmp_path):
    fake = tmp_path / "libnotblas.so"
    fake.write_bytes(b"not a shared library")
    env = {**os.environ, "MLXSUITE_BLAS": str(fake), "XDG_CACHE_HOME": str(tmp_path)}
    info, stderr = _child(env)
    assert info["library"] == "reference" and info["status"] == "failed-self-test"
    assert "no optimized BLAS passed the self-test" in stderr


def test_the_self_test_runs_once_per_library_not_once_per_process(tmp_path):
    """The shim's mtime is its last use (`native.build` touches it): the verdict must not be keyed on it, or every
    `import mlxsuite` would run the self-test in a child process again (~0.2 s) and leave another verdict file."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("MLXSUITE_BLAS", None)
    first, _ = _child(env)
    verdicts = sorted((tmp_path / "mlxsuite").glob("blas-*.json"))
    second, _ = _child(env)
    assert first == second and sorted((tmp_path / "mlxsuite").glob("blas-*.json")) == verdicts
    stale = tmp_path / "mlxsuite" / "blas-0000000000000000.json"  # a verdict of an earlier key on the same library
    stale.write_text(json.dumps({"ok": True, "detail": "", "library": first["library"]}))
    for verdict in verdicts:
        verdict.unlink()
    assert _child(env)[0] == first and not stale.exists()


def test_blas_can_be_disabled_and_user_variables_are_kept(tmp_path):
    info, _ = _child({**os.environ, "MLXSUITE_BLAS": "reference"})
    assert info["status"] == "disabled"
    code = "import os, mlxsuite; print(os.environ.get('OPENBLAS_CORETYPE'), os.environ.get('MKL_NUM_THREADS'))"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.split() == ["Haswell", "1"]


def test_cpu_defaults_to_float32():
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.cpu:
        assert platform.default_dtype() == mx.float32


def test_openblas_shim_forwards_the_standard_gemm_names():
    import ctypes
    import importlib.util
    import shutil

    import pytest

    if importlib.util.find_spec("scipy_openblas32") is None or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("needs the scipy-openblas32 wheel and a C compiler")
    path = blas._openblas_shim()
    assert path and path in blas._candidates()[:1]
    lib = ctypes.CDLL(path)
    assert hasattr(lib, "cblas_sgemm") and hasattr(lib, "cblas_dgemm")
    # and it is what this process loaded (unless the user chose another BLAS)
    if "MLXSUITE_BLAS" not in os.environ:
        assert platform.blas_info().library == path


# ---- who measured: versions, device, chip, memory, OS (every benchmark record and `doctor`) ---------------------


def test_machine_info_against_the_system():
    import importlib.metadata
    import platform as pyplatform

    import mlx.core as mx

    import mlxsuite

    info = platform.machine_info()
    assert info["mlxsuite_version"] == mlxsuite.__version__
    assert info["mlx_version"] == mx.__version__
    assert info["mlx_lm_version"] == importlib.metadata.version("mlx-lm")
    assert info["python"] == pyplatform.python_version()
    assert info["kernel"] == pyplatform.uname().release
    device_info = mx.device_info()
    if "device_name" in device_info:  # the CPU build names the CPU: {'architecture': 'x86_64', 'device_name': …}
        assert info["chip"] == device_info["device_name"]
    if sys.platform == "linux":
        assert info["os"] == "Linux"
        os_release = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
        assert info["os_version"] == os_release["PRETTY_NAME"].strip('"')
        pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert abs(info["memory_gb"] - pages / 1e9) < 0.01 * pages / 1e9  # GB as mlx-lm prints them: 10^9 bytes
    elif sys.platform == "darwin":
        assert info["os"] == "macOS" and info["os_version"] == pyplatform.mac_ver()[0]


def test_doctor_suggests_the_mkl_extra_only_without_compiler_and_openblas(monkeypatch):
    import shutil

    reference = platform.BlasInfo("reference", "stock", "no optimized BLAS found")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(blas._pyplatform, "machine", lambda: "x86_64")
    monkeypatch.setattr(blas, "system_openblas", lambda: [])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    advice = blas.blas_advice(reference)
    assert "mlxsuite[mkl]" in advice and "libopenblas0" in advice
    monkeypatch.setattr(blas, "system_openblas", lambda: ["/usr/lib/x86_64-linux-gnu/libopenblas.so.0"])
    assert blas.blas_advice(reference) is None
    monkeypatch.setattr(blas, "system_openblas", lambda: [])
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/cc" if name == "cc" else None)
    assert blas.blas_advice(reference) is None
    assert blas.blas_advice(platform.BlasInfo("/x/libscipy_openblas.so", "loaded")) is None


def test_blas_threads_default_to_the_idle_cores():
    from mlxsuite.platform import default_blas_threads

    assert default_blas_threads(2, 0.1) == 2  # an idle 2-core machine: both
    assert default_blas_threads(2, 1.2) == 1  # one core busy: a second thread would wait for it
    assert default_blas_threads(2, 7.0) == 1  # never fewer than one
    assert default_blas_threads(8, 2.6) == 5
    assert default_blas_threads(8, 0.0, ranks=2) == 4  # mlx.launch -n 2 on one machine
    assert default_blas_threads(2, 0.0, ranks=2) == 1


# ---- C libraries compiled on first use (platform/native.py) ------------------------------------------------------


def test_native_build_compiles_once_refuses_bad_source_and_keeps_the_recent_builds(tmp_path, monkeypatch):
    import ctypes

    import pytest

    from mlxsuite.platform import native

    if native.c_compiler() is None:
        pytest.skip("no C compiler")
    source = "int answer(void) { return %d; }\n"
    path = native.build("t", source % 42, ["-O1"], tmp_path)
    assert path and ctypes.CDLL(path).answer() == 42
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert native.build("t", source % 42, ["-O1"], tmp_path) == path  # cached: no compiler run
    monkeypatch.undo()
    assert native.build("t", "int answer(void) { return 1 }", [], tmp_path) is None  # a compile error
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    builds = [native.build("t", source % i, ["-O1"], tmp_path) for i in range(native.KEPT + 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(b).name for b in builds[-native.KEPT :])
