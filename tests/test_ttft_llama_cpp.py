"""`bench ttft --compare-llama-cpp`: llama.cpp as a mode, with a stand-in llama_cpp module whose logits follow a rule
(always) and on a real GGUF model (SmolLM2-135M, when the file and llama-cpp-python are both present); the one-line
refusals without the extra, without a GGUF file, or with another model's. No timing assertions."""

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import mlx.core as mx
import pytest
from conftest import run_cli

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)
from mlxsuite import platform
from mlxsuite.bench import llama_cpp as llama_cpp_mode
from mlxsuite.bench import report as ttft_report
from mlxsuite.bench import ttft

GGUF = Path(
    os.environ.get("MLXSUITE_SMOLLM2")
    or Path.home() / ".cache" / "mlxsuite" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
LLAMA_CPP_FAILS = llama_cpp_mode.probe(GGUF) if HAVE_LLAMA_CPP and GGUF.is_file() else None
needs_llama_cpp = pytest.mark.skipif(
    not (HAVE_LLAMA_CPP and GGUF.is_file()) or LLAMA_CPP_FAILS is not None,
    reason=LLAMA_CPP_FAILS
    or "needs llama-cpp-python (pip install 'mlxsuite[llama-cpp]') and the SmolLM2 GGUF (scripts/get-smollm2.sh)",
)


@pytest.fixture(autouse=True)
def quick_roofline(monkeypatch):
    monkeypatch.setattr(ttft, "GEMM_N", 128)


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in llama_cpp module, and no child-process probe (it would import the real one)."""
    monkeypatch.setitem(sys.modules, "llama_cpp", fake_llama_cpp())
    monkeypatch.setattr(llama_cpp_mode, "probe", lambda path: None)


def test_a_crashing_llama_cpp_is_one_line(capsys, tmp_path):
    """A llama.cpp that dies in the probe's child process (here: SIGILL, as a build for another CPU does) is a
    one-line error, and the benchmark process lives on."""
    script = tmp_path / "sigill.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    real_run = subprocess.run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "run", lambda cmd, **kw: real_run([cmd[0], str(script)], **kw))
        message = llama_cpp_mode.probe(tmp_path / "m.gguf")
    assert message.startswith("llama.cpp crashed (SIGILL)") and "another CPU" in message and "\n" not in message


def test_missing_extra_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")  # never read: the extra is checked first
    code, stdout, stderr = run_cli(capsys, "bench", "ttft", str(gguf), "--compare-llama-cpp", "-p", "8")
    assert code == 2 and stdout == ""
    line = stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "llama-cpp-python" in line and "mlxsuite[llama-cpp]" in line


def test_non_gguf_model_is_refused(stand_in, capsys):
    code, _, stderr = run_cli(capsys, "bench", "ttft", "micro", "--modes", "base,llama.cpp", "-p", "8")
    assert code == 2 and "\n" not in stderr.strip() and "GGUF" in stderr and "micro" in stderr


def test_gguf_option_is_refused_where_it_cannot_apply(capsys, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    code, _, stderr = run_cli(capsys, "bench", "ttft", "micro", "--gguf", str(tmp_path / "m.gguf"), "-p", "8")
    assert code == 2 and "--compare-llama-cpp" in stderr
    code, _, stderr = run_cli(
        capsys, "bench", "ttft", "micro", "--compare-llama-cpp", "--gguf", str(tmp_path / "x.bin")
    )
    assert code == 2 and "not a .gguf file" in stderr
    code, _, stderr = run_cli(
        capsys, "bench", "ttft", "micro", "-m", "tiny", "--compare-llama-cpp", "--gguf", str(tmp_path / "m.gguf")
    )
    assert code == 2 and "one MODEL" in stderr


class FakeLlama:
    """llama-cpp-python's `Llama` as the mode uses it, with a rule for the logits an independent check can follow:
    after the tokens t_1..t_n held in the context, the greedy next token is (sum of them) mod V."""

    V, LAYERS, WIDTH = 4096, 2, 64  # the micro preset
    made: list = []

    def __init__(self, model_path, *, n_ctx, n_batch, n_ubatch, n_threads, n_threads_batch, verbose):
        self.kwargs = dict(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, threads=(n_threads, n_threads_batch))
        self.n_batch, self.ctx, self.held = min(n_ctx, n_batch), self, []
        self.metadata = {"general.architecture": "llama", "llama.block_count": "2", "llama.embedding_length": "64"}
        self.logits = (ctypes.c_float * self.V)()
        self.n_tokens = 0
        FakeLlama.made.append(self)

    def n_vocab(self):
        return self.V

    def reset(self):
        self.n_tokens = 0

    def eval(self, ids):
        self.held = self.held[: self.n_tokens] + list(ids)
        self.n_tokens = len(self.held)
        assert self.n_tokens <= self.kwargs["n_ctx"]
        for i in range(self.V):
            self.logits[i] = 0.0
        self.logits[sum(self.held) % self.V] = 1.0


def fake_llama_cpp():
    module = types.ModuleType("llama_cpp")
    module.__version__ = "0.0-fake"
    module.Llama = FakeLlama
    module.llama_get_logits_ith = lambda ctx, i: ctypes.cast(ctx.logits, ctypes.POINTER(ctypes.c_float))
    return module


def test_mode_feeds_the_prompt_and_decodes_greedily(stand_in, tmp_path):
    """With a stand-in llama_cpp: every trial starts from an empty context, the prompt's ids go in, the first token
    and each decoded one are the argmax of the last logits; the threads are the BLAS's, the context holds a trial."""
    from mlxsuite.models import lm

    model = lm.build(lm.preset_args("micro", 4096))
    setup = ttft.Setup(model, 256, name="micro", context=40 + 3, gguf=str(tmp_path / "m.gguf"))
    mode = ttft.build_modes(["llama.cpp"], setup)[0]
    prompt = mx.random.randint(0, 4096, (1, 40), key=mx.random.key(2))
    expected, held = [], prompt[0].tolist()
    for _ in range(4):
        expected.append(sum(held) % 4096)
        held.append(expected[-1])
    for _ in range(2):  # the second trial must not see the first one's tokens
        steps = mode.run(prompt, None, 3)
        assert [int(next(steps).item())] + list(steps) == expected
    llm = FakeLlama.made[-1]
    assert llm.kwargs["threads"] == (llama_cpp_mode.threads(),) * 2 and mode.info["threads"] == llama_cpp_mode.threads()
    assert llm.kwargs["n_batch"] == llm.kwargs["n_ubatch"] == 512 and llm.kwargs["n_ctx"] >= 43
    assert mode.max_batch == 1 and mode.info["batch"] == 512 and not mode.mlx_memory


def test_a_gguf_of_another_model_is_refused(stand_in, capsys, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    code, _, stderr = run_cli(
        capsys, "bench", "ttft", "tiny", "--compare-llama-cpp", "--gguf", str(tmp_path / "m.gguf")
    )
    assert code == 2 and "is not the model measured" in stderr and "\n" not in stderr.strip()


def test_compare_llama_cpp_records_with_a_stand_in(stand_in, capsys, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    args = ("bench", "ttft", "micro", "--compare-llama-cpp", "--gguf", str(tmp_path / "m.gguf"), "-p", "12")
    code, stdout, stderr = run_cli(capsys, *args, "-r", "2", "-g", "2", "-o", "json")
    assert code == 0, stderr
    recs = {r["mode"]: r for r in json.loads(stdout)}
    base, llama = recs["base"], recs["llama.cpp"]
    assert base["speedup_vs_llama_cpp"] == pytest.approx(llama["ttft_ms"] / base["ttft_ms"])
    assert base["decode_vs_llama_cpp"] > 0 and llama["peak_memory_gb"] is None and llama["decode_tps"] > 0
    assert llama["llama_cpp_version"] == "0.0-fake" and llama["llama_cpp_batch"] == 512
    assert base["llama_cpp_gguf"] == str(tmp_path / "m.gguf")
    code, stdout, _ = run_cli(capsys, *args, "-r", "1", "-o", "md")
    assert code == 0 and "vs llama.cpp" in stdout and "llama-cpp-python 0.0-fake" in stdout


def _count_prompt(setup):
    """A prompt whose greedy continuation is unambiguous for a real model: counting."""
    text = ", ".join(str(i) for i in range(1, 25)) + ","
    return mx.array([setup.tokenizer.encode(text)])


@needs_llama_cpp
def test_llama_cpp_mode_continues_like_the_base():
    """The llama.cpp mode feeds the prompt and decodes greedily: on a counting prompt it yields the tokens our own
    prefill and decode loop yield on the same model (its Q4_1 weights, dequantized)."""
    from mlxsuite import store

    loaded = store.load(str(GGUF), "lm", dtype=mx.float32, dequantize=True)
    setup = ttft.Setup(loaded.model, 256, name="smollm2", tokenizer=loaded.tokenizer, context=128, gguf=str(GGUF))
    modes = {m.name: m for m in ttft.build_modes(["base", "llama.cpp"], setup)}
    tokens = _count_prompt(setup)

    def tokens_of(name):
        steps = modes[name].run(tokens, None, 4)
        return [int(next(steps).item())] + [int(t) for t in steps]

    ours = tokens_of("base")
    assert setup.tokenizer.decode(ours).strip().startswith("25")
    assert tokens_of("llama.cpp") == ours
    if platform.blas_threads():
        assert modes["llama.cpp"].info["threads"] == platform.blas_threads()


@needs_llama_cpp
def test_compare_llama_cpp_on_smollm2(capsys):
    """The flag adds the llama.cpp mode on MODEL's GGUF: its records, the ratios against it, its settings."""
    args = ("bench", "ttft", str(GGUF), "--compare-llama-cpp", "-p", "16", "-r", "1", "--warmup", "0", "-g", "2")
    code, stdout, stderr = run_cli(capsys, *args, "-o", "json")
    assert code == 0, stderr
    recs = {r["mode"]: r for r in json.loads(stdout)}
    assert set(recs) == {"base", "llama.cpp"}
    assert all(list(r) == list(ttft_report.FIELDS) for r in recs.values())
    base, llama = recs["base"], recs["llama.cpp"]
    assert llama["ttft_ms"] > 0 and llama["decode_tps"] > 0 and llama["peak_memory_gb"] is None
    assert base["speedup_vs_llama_cpp"] == pytest.approx(llama["ttft_ms"] / base["ttft_ms"])
    assert base["decode_vs_llama_cpp"] == pytest.approx(base["decode_tps"] / llama["decode_tps"])
    assert llama["speedup_vs_llama_cpp"] is None and base["speedup_vs_mlx_lm"] is None
    assert llama["llama_cpp_threads"] >= 1 and llama["llama_cpp_batch"] == 512
    assert llama["llama_cpp_gguf"] == str(GGUF) and llama["llama_cpp_version"]
    if base["blas_threads"] is not None:  # the same cores for both runtimes
        assert llama["llama_cpp_threads"] == base["blas_threads"]
    headers = [c.header for c in ttft_report.columns(list(recs.values()))]
    assert "vs llama.cpp" in headers and "decode vs llama.cpp" in headers


def test_decode_ratio_against_another_runtime(capsys):
    """decode_vs_mlx_lm: this mode's decode tokens/s over mlx-lm's, per round (one round: the plain ratio)."""
    code, stdout, stderr = run_cli(
        capsys, "bench", "ttft", "micro", "--compare-mlx-lm", "-p", "12", "-r", "1", "-g", "3", "-o", "json"
    )
    assert code == 0, stderr
    recs = {r["mode"]: r for r in json.loads(stdout)}
    base, ref = recs["base"], recs["mlx-lm"]
    assert base["decode_vs_mlx_lm"] == pytest.approx(base["decode_tps"] / ref["decode_tps"])
    assert ref["decode_vs_mlx_lm"] is None and base["decode_vs_llama_cpp"] is None
    assert base["llama_cpp_threads"] is None and base["peak_memory_gb"] > 0
