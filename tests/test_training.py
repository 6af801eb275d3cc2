"""Training end to end through the CLI: loss goes down, SIGKILL + --resume is exact, data parallel matches."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxsuite import store

BIN = Path(sys.executable).parent


def _train_args(corpus, out, steps=24, batch=8, extra=()):
    return [
        "train",
        "--out",
        str(out),
        "--preset",
        "micro",
        "--vocab-size",
        "512",
        "--corpus",
        str(corpus),
        "--seq-len",
        "32",
        "--batch-size",
        str(batch),
        "--steps",
        str(steps),
        "--warmup",
        str(min(4, steps)),  # a warm-up longer than the run is refused
        "--save-every",
        "8",
        "--eval-every",
        "12",
        "--eval-windows",
        "8",
        "--quiet",
        *extra,
    ]


def _mlxsuite(args, env=None, **kw):
    return subprocess.run([str(BIN / "mlxsuite"), *args], capture_output=True, text=True, env=env, **kw)


def _metrics(folder):
    return [json.loads(ln) for ln in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()]


def _weights(folder):
    return mx.load(str(Path(folder) / "model.safetensors"))


def test_train_lowers_loss_and_writes_a_model(small_corpus, tmp_path):
    out = tmp_path / "m"
    r = _mlxsuite(_train_args(small_corpus, out, steps=40, extra=["--json", "--lr", "1e-2"]))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    train = [m for m in _metrics(out) if m["event"] == "train"]
    assert train[-1]["loss_avg"] < train[0]["loss_avg"] - 0.5
    assert {"val_ce", "val_lu", "val_bpc"} <= set(result)
    assert result["val_lu"] < result["val_ce"]  # log p_uni < 0
    for f in ("config.json", "model.safetensors", "tokenizer.model", "unigram.safetensors"):
        assert (out / f).exists()
    # the trained model evaluates and generates through the CLI
    ev = _mlxsuite(["eval", str(out), "--corpus", str(small_corpus), "--seq-len", "32", "--windows", "8", "--json"])
    assert ev.returncode == 0, ev.stderr
    assert abs(json.loads(ev.stdout)["ce"] - result["val_ce"]) < 1e-4
    gen = _mlxsuite(["generate", str(out), "--prompt", "def ", "-m", "8", "--json"])
    assert gen.returncode == 0, gen.stderr
    # the greedy continuation by hand: argmax of full forward passes (no cache, no sampler)
    loaded = store.load(str(out), "lm")
    ids = loaded.tokenizer.encode("def ")
    for _ in range(8):
        ids.append(int(mx.argmax(loaded.model(mx.array([ids]))[0, -1])))
    whole, prompt = loaded.tokenizer.decode(ids), loaded.tokenizer.decode(ids[:-8])
    assert whole.startswith(prompt) and len(whole) > len(prompt)
    assert json.loads(gen.stdout)["completion"] == whole[len(prompt) :]
    # an existing output is refused without --resume/--force
    again = _mlxsuite(_train_args(small_corpus, out))
    assert again.returncode == 2 and "exists" in again.stderr and again.stderr.count("\n") == 1


KILL_AT_SAVE = """
import os, signal, sys
import mlxsuite
from mlxsuite.cli import main
from mlxsuite.train import lm as train_lm
original = train_lm.trainer.save_checkpoint
def save_then_die(run_dir, step, *a, **k):
    path = original(run_dir, step, *a, **k)
    if step == 16:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
train_lm.trainer.save_checkpoint = save_then_die
main(sys.argv[1:])
"""


def test_sigkill_then_resume_matches_an_uninterrupted_run(small_corpus, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _mlxsuite(_train_args(small_corpus, full)).returncode == 0
    r = subprocess.run([sys.executable, "-c", KILL_AT_SAVE, *_train_args(small_corpus, killed)], capture_output=True)
    assert r.returncode == -9, r.stderr  # really killed mid-way, after the step-16 checkpoint
    assert not (killed / "model.safetensors").exists()
    r = _mlxsuite(["train", "--out", str(killed), "--resume", "--quiet"])
    assert r.returncode == 0, r.stderr
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-5, atol=1e-6, err_msg=k)

    def curve(folder):
        return [(m["event"], m["step"], m.get("loss", m.get("ce"))) for m in _metrics(folder)]

    (ea, sa, la), (eb, sb, lb) = zip(*curve(full)), zip(*curve(killed))
    assert (ea, sa) == (eb, sb)
    np.testing.assert_allclose(la, lb, rtol=1e-5)


@pytest.mark.skipif(shutil.which("mlx.launch", path=str(BIN)) is None, reason="mlx.launch not installed")
def test_two_processes_match_one_process_on_the_combined_batch(small_corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _mlxsuite(_train_args(small_corpus, one, steps=16)).returncode == 0
    cmd = [
        str(BIN / "mlx.launch"),
        "-n",
        "2",
        "--backend",
        "ring",
        "--",
        str(BIN / "mlxsuite"),
        *_train_args(small_corpus, two, steps=16),
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "MLXSUITE_LOCAL_RANKS": "2"}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    m1 = [m["loss"] for m in _metrics(one) if m["event"] == "train"]
    m2 = [m["loss"] for m in _metrics(two) if m["event"] == "train"]
    assert len(m1) == len(m2) >= 2
    np.testing.assert_allclose(m1, m2, rtol=1e-4)
    a, b = _weights(one), _weights(two)
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-3, atol=1e-5, err_msg=k)


def test_resume_replays_random_numbers_drawn_in_the_loss(tmp_path):
    """A loss that draws noise: 8 steps straight equal 4 steps, a fresh process-like restart, and 4 more."""
    import mlx.nn as nn

    from mlxsuite.train import trainer

    def noisy_loss(model, batch):
        x = batch.astype(mx.float32)
        return ((model(x) + mx.random.normal(x.shape)) ** 2).mean()

    def fresh():
        mx.random.seed(123)
        model = nn.Linear(4, 4)
        mx.eval(model.parameters())
        return model

    data = np.arange(64, dtype=np.float32).reshape(16, 4) / 64
    batches = lambda step: data[(step % 4) * 4 : (step % 4) * 4 + 4]  # noqa: E731
    cfg = dict(warmup=0, save_every=4, eval_every=100, log_every=1, lr=1e-2)
    straight = fresh()
    trainer.train(straight, noisy_loss, batches, trainer.TrainConfig(steps=8, **cfg), tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_after_first_save(event, info):
        if event == "save":
            raise Stop

    with pytest.raises(Stop):
        trainer.train(
            fresh(),
            noisy_loss,
            batches,
            trainer.TrainConfig(steps=8, **cfg),
            tmp_path / "b",
            callback=stop_after_first_save,
        )
    resumed = fresh()
    trainer.train(resumed, noisy_loss, batches, trainer.TrainConfig(steps=8, **cfg), tmp_path / "b", resume=True)
    np.testing.assert_allclose(np.array(resumed.weight), np.array(straight.weight), rtol=1e-6)
    losses = lambda d: [m["loss"] for m in trainer.read_metrics(d)]  # noqa: E731
    np.testing.assert_allclose(losses(tmp_path / "b"), losses(tmp_path / "a"), rtol=1e-6)


def test_vocab_size_auto_picks_v_from_the_scaling_law(small_corpus, tmp_path):
    from mlxsuite.models import lm
    from mlxsuite.vocab import scaling

    out = tmp_path / "auto"
    r = _mlxsuite([*_train_args(small_corpus, out, steps=2), "--vocab-size", "auto", "--flops", "1e15"])
    assert r.returncode == 0, r.stderr
    args = lm.preset_args("micro", 1)
    predicted = scaling.predict_parametric(args.n_nonvocab_params, 1e15, d=args.hidden_size).vocab
    expected = max(512, round(predicted / 128) * 128)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == expected
    assert f"V = {expected}" in r.stderr
