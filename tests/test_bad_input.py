"""Bad input, wrong kinds, ignored flags: one stderr line, exit 2, no traceback, and the store exactly as it was."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, stdlib_text

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with a micro LM ("base"), a KV Prediction pair on it ("pair") and a micro MoMa run ("mm"), and
    corpora good and bad."""
    root = tmp_path_factory.mktemp("bad")
    good = root / "good.txt"
    good.write_text(stdlib_text())
    (root / "empty.txt").write_text("  \n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("café crème ".encode("latin-1") * 50)
    (root / "tiny.txt").write_text("hello world, a tiny corpus\n" * 40)
    e = {**os.environ, "MLXSUITE_MODELS": str(root / "store"), "OPENBLAS_NUM_THREADS": "1"}
    for args in (
        [
            "train",
            "--out",
            "base",
            "--preset",
            "micro",
            "--corpus",
            str(good),
            "--vocab-size",
            "512",
            "--steps",
            "4",
            "--seq-len",
            "32",
            "--batch-size",
            "8",
            "--eval-windows",
            "2",
            "--quiet",
        ],
        [
            "moma",
            "train",
            "--variant",
            "moma1t1i",
            "--out",
            "mm",
            "--preset",
            "micro",
            "--corpus",
            str(good),
            "--seq-len",
            "48",
            "--batch-size",
            "8",
            "--text-tokens",
            "6000",
            "--codebook-size",
            "16",
            "--steps",
            "2",
            "--quiet",
        ],
        ["kvp", "train", "base", "--out", "pair", "--steps", "1", "--seq-len", "32", "--batch-size", "4", "--quiet"],
    ):
        r = subprocess.run([str(BIN / "mlxsuite"), *args], env=e, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    return root


def listing(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


LONG = "def f(x):\n    return x\n" * 1500
CASES = [
    (["train", "--out", "b1", "--corpus", "{root}/missing.txt"], "corpus not found"),
    (["train", "--out", "b1", "--corpus", "{root}/empty.txt"], "empty"),
    (["train", "--out", "b1", "--corpus", "{root}/binary.txt"], "binary"),
    (["train", "--out", "b1", "--corpus", "{root}/latin1.txt"], "UTF-8"),
    (["train", "--out", "b1", "--preset", "micro", "--corpus", "{root}/tiny.txt"], "too small for any vocabulary"),
    (
        [
            "train",
            "--out",
            "b1",
            "--preset",
            "micro",
            "--corpus",
            "{root}/good.txt",
            "--vocab-size",
            "512",
            "--seq-len",
            "100000",
        ],
        "context",
    ),
    (["train", "--out", "base", "--resume", "--vocab-size", "600"], "--vocab-size 600"),
    (["train", "--out", "b1", "--init-from", "base", "--vocab-size", "600"], "--init-from"),
    (["kvp", "train", "base", "--aux", "bogus", "--out", "k1"], "bogus"),
    (["kvp", "train", "mm", "--aux", "prune:0.5", "--out", "k1"], "MoMa run"),
    (["kvp", "train", "--base", "mm", "--aux", "prune:0.5", "--out", "k1"], "MoMa run"),
    (["moma", "train", "--variant", "moma3t2i", "--out", "m1", "--preset", "micro"], "divide"),
    (["moma", "train", "--variant", "moe7x", "--out", "m1", "--preset", "micro"], "divide"),
    (["moma", "train", "--resume", "--out", "m1"], "nothing to resume"),
    (["moma", "train-routers", "mm", "--resume", "--steps", "3"], "routers"),
    (["eval", "mm"], "MoMa run"),
    (["generate", "mm", "-p", "x"], "MoMa run"),
    (["bench", "ttft", "mm"], "MoMa run"),
    (["generate", "base", "-p", LONG], "context"),
    (["generate", "base", "-p", "x", "--temp", "-1"], "temperature"),
    (["generate", "base", "-p", "x", "--top-k", "-3"], "top-k"),
    (["moma", "generate", "mm", "--prompt", "a digit 3", "--temperature", "-1"], "temperature"),
    (
        ["moma", "compare", "--variants", "dense,moe2x", "--preset", "micro", "--plot", "{root}/no/such/c.png"],
        "does not exist",
    ),
    (
        ["vocab", "sweep", "--budgets", "1e9", "--presets", "micro", "--out", "s1", "--plot", "{root}/no/such/s.png"],
        "does not exist",
    ),
    (["bench", "ttft", "base", "--plot", "{root}/no/such/t.png"], "does not exist"),
    (["eval", "{root}/truncated"], "corrupt"),
    (["convert", "to-mlx-lm", "{root}/truncated", "c1"], "corrupt"),
    (["convert", "quantize", "{root}/truncated", "c1"], "corrupt"),
    (["convert", "prune", "{root}/truncated", "c1", "--keep", "0.5"], "corrupt"),
    (["convert", "from-hf", "{root}/truncated", "c1"], "corrupt"),
    (["convert", "to-mlx-lm", "pair", "c1"], "is a KV Prediction pair, not a language model"),
    (["convert", "prune", "mm", "c1", "--keep", "0.5"], "is a MoMa run, not a language model"),
    (["kvp", "train", "{root}/truncated", "--out", "k1", "--steps", "1"], "corrupt"),
    (["bench", "ttft", "{root}/truncated"], "corrupt"),
    (["kvp", "eval", "{root}/halfpair"], "incomplete"),
    (["eval", "base", "--seq-len", "100000"], "context"),
    (["kvp", "eval", "pair", "--prompt-len", "100000"], "context"),
    (["train", "--out", "b1", "--steps", "6", "--warmup", "20"], "--warmup 20"),
    (["kvp", "train", "base", "--out", "k1", "--steps", "6", "--warmup", "7"], "--warmup 7"),
    (["eval", "{root}/halfpair"], "incomplete"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a[:3])[:40] + f"-{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_one_line_exit_2_store_unchanged(world, args, needle, capsys, monkeypatch):
    monkeypatch.setenv("MLXSUITE_MODELS", str(world / "store"))
    if not (world / "truncated").exists():
        shutil.copytree(world / "store" / "base", world / "truncated")
        w = world / "truncated" / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
        (world / "halfpair" / "run").mkdir(parents=True)  # a pair's training interrupted before its first save
        (world / "halfpair" / "run" / "spec.json").write_text("{}")
    before = listing(world / "store")
    code, out, err = run_cli(capsys, *[a.format(root=world) for a in args])
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    if args[0] == "train" and "tiny.txt" in args[-1]:  # found while preparing: after the corpus progress note
        lines = [ln for ln in lines if not ln.startswith(("corpus:", "val_docs"))]
    assert needle in err and len(lines) == 1 and "Traceback" not in err, err
    assert listing(world / "store") == before


def test_resume_of_a_finished_run_reports_and_keeps_its_record(world, capsys, monkeypatch):
    monkeypatch.setenv("MLXSUITE_MODELS", str(world / "store"))
    config = (world / "store" / "base" / "config.json").read_bytes()
    before = listing(world / "store")
    code, out, err = run_cli(capsys, "train", "--out", "base", "--resume", "--json")
    assert code == 0, err
    final = json.loads(config)["mlxsuite"]["final"]
    assert json.loads(out)["val_ce"] == final["val_ce"]
    assert (world / "store" / "base" / "config.json").read_bytes() == config and listing(world / "store") == before


def test_eval_defaults_to_the_training_corpus(world, capsys, monkeypatch):
    monkeypatch.setenv("MLXSUITE_MODELS", str(world / "store"))
    code, out, err = run_cli(capsys, "eval", "base", "--json", "--seq-len", "32", "--windows", "2")
    assert code == 0, err
    assert json.loads(out)["corpus"] == str(world / "good.txt")


def test_folder_corpus_skips_dot_folders(tmp_path):
    from mlxsuite.data.corpus import load_corpus

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print('a')\n" * 20)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index").write_bytes(b"DIRC\x00\x00\x00\x02")
    corpus = load_corpus(str(tmp_path))  # .git/index would be refused as binary
    assert not any("DIRC" in t for t in corpus.train + corpus.val)


def test_completion_keeps_the_space_at_the_join(world):
    from mlxsuite.data.tokenizer import Tokenizer
    from mlxsuite.generate import decode_stream

    tok = Tokenizer(world / "store" / "base" / "tokenizer.model")
    prompt, full = tok.encode("def the quick"), tok.encode("def the quick brown fox")
    assert full[: len(prompt)] == prompt  # the join falls on a word boundary
    pieces = []
    text = decode_stream(tok, iter(full[len(prompt) :]), pieces.append, prompt_ids=prompt)
    assert text == "".join(pieces) == " brown fox"  # decoded alone it reads "brown fox"
    assert tok.decode(full[len(prompt) :]) == "brown fox"


def test_token_cache_is_bounded(tmp_path):
    from mlxsuite.data.corpus import prune_cache

    for i, size in enumerate([300, 300, 300]):
        p = tmp_path / f"{i}.npy"
        p.write_bytes(b"x" * size)
        os.utime(p, (1000 + i, 1000 + i))
    removed = prune_cache(tmp_path, 650, keep=tmp_path / "0.npy")
    assert [p.name for p in removed] == ["1.npy"] and sorted(p.name for p in tmp_path.iterdir()) == ["0.npy", "2.npy"]


def test_two_ranks_existing_output_one_line(world):
    launch = BIN / "mlx.launch"
    if not launch.exists():
        pytest.skip("mlx.launch not installed")
    e = {**os.environ, "MLXSUITE_MODELS": str(world / "store"), "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run(
        [str(launch), "-n", "2", "--", str(BIN / "mlxsuite"), "train", "--out", "base", "--preset", "micro"],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in r.stderr.splitlines() if "[WARN]" not in ln]  # the launcher's own per-rank notes
    assert lines == [
        f"error: {world / 'store' / 'base'} exists: pass --resume to continue its run or --force to start over"
    ], r.stderr
    assert "exited with code 2" in r.stderr and "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("delay", [0.15, 1.0, 2.5])
def test_ctrl_c_is_one_line_exit_130(world, tmp_path, delay):
    e = {**os.environ, "MLXSUITE_MODELS": str(tmp_path / "store"), "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [
            str(BIN / "mlxsuite"),
            "train",
            "--out",
            "c",
            "--preset",
            "micro",
            "--corpus",
            str(world / "good.txt"),
            "--vocab-size",
            "512",
            "--steps",
            "200",
            "--seq-len",
            "32",
        ],
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err


def test_a_failed_first_run_leaves_no_store_behind(tmp_path, monkeypatch, capsys):
    """The store itself is created by the first run that writes: a first run that fails takes it away again."""
    store = tmp_path / "fresh-store"
    monkeypatch.setenv("MLXSUITE_MODELS", str(store))
    code, _, err = run_cli(capsys, "kvp", "train", "nosuch", "--out", "p")
    assert code == 2 and err.count("\n") == 1 and "nosuch" in err
    assert not store.exists()


def test_default_warmup_fits_a_short_run():
    """The default warm-up (20) on a 6-step run is shortened to a tenth of it; a given one is refused."""
    from mlxsuite.cli.common import _fit_warmup
    from mlxsuite.platform.errors import UserError
    from mlxsuite.train.trainer import TrainConfig

    config = TrainConfig(steps=6)
    _fit_warmup(config, frozenset({"steps"}))
    assert config.warmup == 0
    config = TrainConfig(steps=300)
    _fit_warmup(config, frozenset({"steps"}))
    assert config.warmup == 20
    with pytest.raises(UserError, match="--warmup 20 is longer than --steps 6"):
        _fit_warmup(TrainConfig(steps=6, warmup=20), frozenset({"steps", "warmup"}))


def test_convert_writes_bare_names_to_the_store(world, capsys, monkeypatch, tmp_path):
    """One output rule for every convert command: a bare name goes to the store, a path where it points."""
    store = tmp_path / "store"
    shutil.copytree(world / "store" / "base", store / "base")
    monkeypatch.setenv("MLXSUITE_MODELS", str(store))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "convert", "to-mlx-lm", "base", "exported")
    assert code == 0, err
    assert (store / "exported" / "config.json").is_file() and not (tmp_path / "exported").exists()
    code, out, err = run_cli(capsys, "convert", "to-mlx-lm", "base", "./here/exported")
    assert code == 0, err
    assert (tmp_path / "here" / "exported" / "config.json").is_file()


def test_tables_in_a_pipe_are_whole(world, capsys, monkeypatch):
    """stdout not a terminal (here captured, as in a pipe or a file): every number, header and method name of
    `kvp eval`'s table and `doctor`'s BLAS path in full, never cut to "…"."""
    monkeypatch.setenv("MLXSUITE_MODELS", str(world / "store"))
    args = ["kvp", "eval", "pair", "--corpus", str(world / "good.txt"), "--samples", "2", "--prompt-len", "8"]
    args += ["--cont-len", "4", "--agree-tokens", "2", "--code", "0"]
    code, table, err = run_cli(capsys, *args)
    assert code == 0, err
    code, doc, err = run_cli(capsys, *args, "--json")
    doc = json.loads(doc)
    assert "…" not in table and "first-token acc" in table and "FLOPs red." in table
    for method, d in doc["methods"].items():
        assert method in table and f"{d['ce']:.4f}" in table and f"{d['first_acc']:.3f}" in table
    assert str(world / "store" / "pair") in table
    code, table, err = run_cli(capsys, "doctor")
    assert code == 0, err
    code, doc, err = run_cli(capsys, "doctor", "--json")
    library = json.loads(doc)["blas"]["library"]
    assert "…" not in table and (library is None or str(library) in table)


def test_brackets_in_messages_and_paths_are_printed_as_they_are(world, capsys, monkeypatch, tmp_path):
    """Text in square brackets is not rich markup: a path with [bold] in it, the plot extra's name."""
    monkeypatch.setenv("MLXSUITE_MODELS", str(world / "store"))
    odd = tmp_path / "[bold]x[/bold]" / "m"
    code, out, err = run_cli(capsys, "eval", str(odd))
    assert code == 2 and str(odd) in err, err
    from mlxsuite.cli import common

    common.print_note("pip install 'mlxsuite[plot]'")
    assert "mlxsuite[plot]" in capsys.readouterr().err


def test_progress_on_stderr_with_json(world, capsys, monkeypatch, tmp_path):
    """--json keeps stdout to one document and progress still goes to stderr (plain lines off a terminal); a
    KV Prediction run's validation line names its metrics (it was an empty `val `)."""
    store = tmp_path / "store"
    shutil.copytree(world / "store" / "base", store / "base")
    monkeypatch.setenv("MLXSUITE_MODELS", str(store))
    args = ["--seq-len", "32", "--batch-size", "4", "--eval-windows", "2", "--eval-every", "2", "--corpus"]
    code, out, err = run_cli(
        capsys, "kvp", "train", "base", "--out", "k", "--steps", "2", *args, str(world / "good.txt"), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["folder"] and "kvp step" in err
    val = [line for line in err.splitlines() if ": val" in line]
    assert val and all("kvp_ce" in line for line in val), err
    code, out, err = run_cli(capsys, "eval", "base", "--json", "--seq-len", "32", "--windows", "2")
    assert code == 0 and json.loads(out)["ce"] > 0, err
    assert "evaluating batches" in err and "eval" in err
