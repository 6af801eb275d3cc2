"""Fault injection: every writing command is SIGKILLed while it works, then the store must hold nothing half-written
(no temporaries once anything writes again, at most the command's own resumable run) and a rerun (--resume where it
applies) must give exactly what an uninterrupted run gives."""

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stdlib_text

BIN = Path(sys.executable).parent / "mlxsuite"
TEMP = re.compile(r"^\..+\.(?:tmp|old)-\d+-[0-9a-f]{8}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A store of its own, a ~100 KB corpus and a micro base model trained once (what kvp/convert start from)."""
    root = tmp_path_factory.mktemp("faults")
    corpus = root / "corpus.txt"
    corpus.write_text(stdlib_text())
    e = {**os.environ, "MLXSUITE_MODELS": str(root / "store"), "OPENBLAS_NUM_THREADS": "1"}
    r = subprocess.run([str(BIN), *train_args("base", corpus)], env=e, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "store", corpus, e


def train_args(out, corpus, steps=24):
    return [
        "train",
        "--out",
        out,
        "--preset",
        "micro",
        "--corpus",
        str(corpus),
        "--vocab-size",
        "512",
        "--steps",
        str(steps),
        "--save-every",
        "3",
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--eval-windows",
        "4",
        "--eval-every",
        str(steps),
        "--quiet",
    ]


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TEMP.match(p.name)]


def digest(folder: Path, pattern: str = "*.safetensors") -> str:
    h = hashlib.sha256()
    files = sorted(folder.glob(pattern))
    assert files, f"nothing matches {pattern} in {folder}"
    for p in files:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def kill_during(args, env, root: Path, seed: int) -> int:
    """Start `mlxsuite args`; with an even seed kill it the moment a temporary appears under `root` (mid-write),
    with an odd one a random 0–0.4 s after the first checkpoint or temporary (mid-work). SIGKILL, no warning."""
    rng = random.Random(seed)
    p = subprocess.Popen([str(BIN), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        if temps(root) or (seed % 2 and any(root.rglob("state.json"))):
            break
        time.sleep(0.002)
    if seed % 2:
        time.sleep(rng.uniform(0, 0.4))
    p.send_signal(signal.SIGKILL)
    return p.wait()


def run_ok(args, env):
    r = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def kill_then_rerun(args_for, env, store: Path, seed: int, resumable: bool) -> Path:
    """Kill `args_for("cut")` mid-work, check the store, rerun it; returns the finished folder."""
    before = {p.name for p in store.iterdir() if not TEMP.match(p.name)}
    kill_during(args_for("cut"), env, store, seed)
    after = {p.name for p in store.iterdir() if not TEMP.match(p.name)}
    assert after - before <= {"cut"}  # nothing else appeared under a final name
    cut = store / "cut"
    if resumable and (cut / "run" / "spec.json").exists():
        run_ok(args_for("cut") + ["--resume"], env)
    else:
        run_ok(args_for("cut") + ["--force"], env)
    assert temps(store) == []  # the killed process's temporaries went with the next write
    return cut


@pytest.mark.parametrize("seed", [0, 1])
def test_train_killed_resumes_exactly(env, seed):
    store, corpus, e = env
    ref = store / "base"  # trained uninterrupted with the same arguments
    cut = kill_then_rerun(lambda out: train_args(out, corpus), e, store, seed, resumable=True)
    assert digest(cut, "model.safetensors") == digest(ref, "model.safetensors")
    assert (cut / "tokenizer.model").read_bytes() == (ref / "tokenizer.model").read_bytes()
    for p in [store / "cut"]:
        import shutil

        shutil.rmtree(p)


@pytest.mark.parametrize("seed", [0, 1])
def test_kvp_train_killed_resumes_exactly(env, seed):
    store, corpus, e = env

    def args(out):
        return [
            "kvp",
            "train",
            "base",
            "--aux",
            "prune:0.5",
            "--out",
            out,
            "--corpus",
            str(corpus),
            "--steps",
            "18",
            "--save-every",
            "3",
            "--seq-len",
            "32",
            "--batch-size",
            "8",
            "--eval-windows",
            "4",
            "--eval-every",
            "18",
            "--quiet",
        ]

    if not (store / "kvp-ref").exists():
        run_ok(args("kvp-ref"), e)
    cut = kill_then_rerun(args, e, store, seed, resumable=True)
    assert digest(cut) == digest(store / "kvp-ref")
    import shutil

    shutil.rmtree(cut)


def test_moma_train_killed_resumes_exactly(env):
    store, corpus, e = env

    def args(out):
        return [
            "moma",
            "train",
            "--variant",
            "moma1t1i",
            "--out",
            out,
            "--preset",
            "micro",
            "--corpus",
            str(corpus),
            "--seq-len",
            "48",
            "--batch-size",
            "8",
            "--text-tokens",
            "6000",
            "--codebook-size",
            "16",
            "--steps",
            "12",
            "--warmup",
            "2",
            "--save-every",
            "2",
            "--eval-every",
            "12",
            "--quiet",
        ]

    run_ok(args("moma-ref"), e)
    cut = kill_then_rerun(args, e, store, 1, resumable=True)
    assert digest(cut, "model.safetensors") == digest(store / "moma-ref", "model.safetensors")


@pytest.mark.parametrize(
    "command",
    [
        ["convert", "prune", "base", "{out}", "--keep", "0.5"],
        ["convert", "quantize", "base", "{out}", "--q-bits", "4", "--q-group-size", "32"],
        ["convert", "to-mlx-lm", "base", "{out}"],
        ["tokenizer", "train", "--vocab-size", "400", "--corpus", "{corpus}", "--out", "{out}"],
    ],
)
def test_convert_and_tokenizer_killed_leave_nothing(env, command):
    store, corpus, e = env

    def args(out):
        out = str(store / out) if command[1] == "to-mlx-lm" else out
        return [a.format(out=out, corpus=corpus) for a in command]

    run_ok(args("ref"), e)
    cut = kill_then_rerun(args, e, store, 0, resumable=False)
    ref = store / "ref"
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in ref.iterdir())
    pattern = "tokenizer.model" if command[0] == "tokenizer" else "*.safetensors"
    assert digest(cut, pattern) == digest(ref, pattern)  # an identically trained tokenizer is byte-identical
    import shutil

    shutil.rmtree(cut)
    shutil.rmtree(ref)


def test_from_hf_and_from_gguf_killed_leave_nothing(env, tmp_path):
    from test_gguf import bpe_metadata, hf_weights, train_bpe, write_gguf

    store, corpus, e = env
    hf = tmp_path / "hf"
    run_ok(["convert", "to-mlx-lm", "base", str(hf)], e)
    tk = train_bpe(digits=True)
    write_gguf(tmp_path / "m.gguf", hf_weights(tk.get_vocab_size(), True), bpe_metadata(tk, "smollm"))
    for source, command in ((hf, "from-hf"), (tmp_path / "m.gguf", "from-gguf")):
        run_ok(["convert", command, str(source), "ref"], e)
        cut = kill_then_rerun(
            lambda out, c=command, s=source: ["convert", c, str(s), out], e, store, 0, resumable=False
        )
        assert digest(cut) == digest(store / "ref")
        import shutil

        shutil.rmtree(cut)
        shutil.rmtree(store / "ref")


def test_vocab_sweep_killed_continues_to_the_same_result(env):
    import json

    store, corpus, e = env

    def args(out):
        return [
            "vocab",
            "sweep",
            "--corpus",
            str(corpus),
            "--budgets",
            "1e9",
            "--presets",
            "micro",
            "--vocab-sizes",
            "400,512",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--eval-chars",
            "600",
            "--out",
            out,
            "--json",
        ]

    run_ok(args("sweep-ref"), e)
    kill_during(args("cut"), e, store, 1)
    run_ok(args("cut"), e)  # a sweep continues by itself: finished runs kept, a half-finished one resumed
    assert temps(store) == []

    def lus(name):
        doc = json.loads((store / name / "sweep.json").read_text())
        return {k: (r["lu"], r["ce"]) for k, r in doc["runs"].items()}

    assert lus("cut") == lus("sweep-ref")
