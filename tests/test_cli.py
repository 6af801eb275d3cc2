"""The CLI's contract: --json gives one JSON document; bad input is one stderr line, exit 2, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "mlxsuite"


def run(*args, **kw):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, **kw)


def test_doctor_json_reports_blas_side_by_side():
    r = run("doctor", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in (
        "mlxsuite_version",
        "mlx_version",
        "mlx_lm_version",
        "device",
        "chip",
        "memory_gb",
        "os",
        "os_version",
        "python",
        "blas_name",
        "blas_advice",
        "compile_compiler",
        "distributed_backends",
    ):
        assert key in info
    blas = info["blas"]
    assert blas["library"] and blas["mlx_sgemm_gflops"] > 0 and blas["numpy_sgemm_gflops"] > 0
    # what this machine's MLX offers (not a fixed list: a build may lack ring or have MPI)
    import mlx.core as mx

    known = ("ring", "mpi", "nccl", "jaccl")
    assert info["distributed_backends"] == [b for b in known if mx.distributed.is_available(b)]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--out", "x", "--preset", "nope"], "unknown preset"),
        (["train", "--out", "x", "--steps", "0"], "steps"),
        (["train", "--out", "x", "--steps", "many"], "--steps"),
        (["train", "--out", "x", "--corpus", "/no/such/file.txt"], "corpus not found"),
        (["train", "--out", "x", "--resume"], "nothing to resume"),
        (["eval", "/no/such/model"], "model not found"),
        (["generate", "no-such-model", "-p", "x"], "model not found"),
        (["generate", "x", "-m", "-3"], "max-tokens"),
        (["tokenizer", "train", "--vocab-size", "0", "--out", "t"], "vocab size"),
        (["tokenizer", "train", "--vocab-size", "50", "--out", "t"], "too small"),
        (["bogus"], "No such command"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_model_folder_without_weights_and_pickles_are_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    r = run("eval", str(folder))
    assert r.returncode == 2 and "no weights" in r.stderr
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    r = run("generate", str(folder), "-p", "x")
    assert r.returncode == 2 and "pickle" in r.stderr and r.stderr.count("\n") == 1


def test_tokenizer_train_writes_atomically(tmp_path, small_corpus):
    out = tmp_path / "tok"
    r = run("tokenizer", "train", "--vocab-size", "400", "--corpus", str(small_corpus), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vocab_size"] == 400
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.model", "unigram.safetensors"]
    r = run("tokenizer", "train", "--vocab-size", "400", "--corpus", str(small_corpus), "--out", str(out))
    assert r.returncode == 2 and "exists" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
