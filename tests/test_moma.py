"""MoMa's recipes: data, the speed-up factor η, a tiny comparison end to end (training, routers, generation,
captioning), data parallelism, and the CLI's errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)
from mlxsuite.moma import compare as mcompare
from mlxsuite.moma import data as mdata
from mlxsuite.moma import images as I
from mlxsuite.moma import spec as mspec
from mlxsuite.moma import train as mtrain
from mlxsuite.platform.errors import UserError

BIN = Path(sys.executable).parent


# ---- data ---------------------------------------------------------------------------------------------------------


def test_image_tokenizer_and_mixed_rows(tmp_path):
    ds = I.load_digits()
    assert ds.images.shape == (1797, 8, 8) and ds.captions[7][0].startswith("a handwritten digit")
    imtok = I.ImageTokenizer.train(ds.images[:300], num_codes=16, patch=2, iters=5)
    codes = imtok.encode(ds.images[:50])
    assert codes.shape == (50, 16) and codes.max() < 16
    rec = imtok.decode(codes)
    assert rec.shape == (50, 8, 8) and float(((rec - ds.images[:50]) ** 2).mean()) < 0.03
    imtok.save(tmp_path)
    again = I.ImageTokenizer.load(tmp_path)
    assert np.array_equal(again.encode(ds.images[:5]), codes[:5])

    layout = mdata.Layout(text_size=40, num_codes=16, bos=1, eos=2)
    caps = [[[5, 6, 7], [8, 9]] for _ in range(50)]
    text = np.arange(3, 40, dtype=np.int32).repeat(20)
    mixed = mdata.MixedData(layout, codes, caps, text, seq_len=64)
    toks, pos = mixed.rows(np.random.default_rng(0), 3)
    assert toks.shape == (3, 65) and pos.shape == (3, mixed.images_per_row * 16)
    for r in range(3):
        img = layout.is_image(toks[r, :-1])
        assert img.sum() == pos.shape[1] and np.array_equal(np.flatnonzero(img), np.sort(pos[r]))
        assert (toks[r] == layout.boi).sum() == mixed.images_per_row == (toks[r] == layout.eoi).sum()


def test_image_folder_errors(tmp_path):
    from PIL import Image

    (tmp_path / "a.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file": "a.png", "caption": "x"}) + "\n" + json.dumps({"file": "b.png", "caption": "y"}) + "\n"
    )
    with pytest.raises(UserError, match="cannot read image"):
        I.load_image_folder(tmp_path)
    (tmp_path / "a.png").unlink()
    with pytest.raises(UserError, match="not an image"):
        I.load_image_folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "b.png", "caption": "y"}) + "\n")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(UserError, match="no caption"):
        I.load_image_folder(tmp_path)


# ---- end to end ---------------------------------------------------------------------------------------------------


@pytest.fixture
def corpus_file(tmp_path):
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(p.read_text() for p in sorted(root.glob("*.py"))[:6])
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return str(path)


def test_tiny_compare_end_to_end(tmp_path, monkeypatch, corpus_file, capsys):
    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = dict(
        preset="micro",
        model_overrides=dict(hidden_size=32, intermediate_size=64),
        corpus=corpus_file,
        text_tokens=6000,
        seq_len=48,
        batch_size=4,
        codebook_size=16,
        text_vocab=400,
        router_steps=4,
        eval_batches=1,
        train=dict(lr=3e-3, warmup=1, compile=False),
    )
    result = mcompare.compare(
        ["dense", "moma1t1i"], flops_budget=4e8, prefix="t", base=base, plot=str(tmp_path / "curves.png")
    )
    rows = {r["variant"]: r for r in result["variants"]}
    assert set(rows) == {"dense", "moma1t1i"}
    for r in rows.values():
        assert all(np.isfinite(v) for v in [*r["final"].values(), *r["final_train"].values()])
        assert set(r["eta"]) == {"overall", "text", "image"} == set(r["eta_val"])
        assert r["tokens_per_s"] > 0
    assert rows["dense"]["eta"]["overall"] >= 1.0 and rows["dense"]["eta_val"]["overall"] >= 1.0
    assert rows["moma1t1i"]["router_acc"] > 0.5 and rows["moma1t1i"]["final_causal"]["loss"] > 0
    assert (tmp_path / "curves.png").exists()
    # resumable: a second call trains nothing more
    again = mcompare.compare(["dense", "moma1t1i"], flops_budget=4e8, prefix="t", base=base)
    assert again["variants"][0]["final"] == rows["dense"]["final"]
    # router training is a run of its own (routers/): not silently redone, --force redoes it
    with pytest.raises(UserError, match="exists"):
        mtrain.train_routers("t-moma1t1i")
    assert mtrain.train_routers("t-moma1t1i", force=True)["router_acc"] > 0.5

    # upcycling: a moma2t2i run seeded from the trained 1t1i run, with Gumbel-sigmoid router noise
    spec = mspec.MomaRunSpec(
        out="up",
        variant="moma2t2i",
        upcycle_from="t-moma1t1i",
        **{**base, "train": mspec.paper_schedule(steps=2, warmup=1, compile=False)},
    )
    up = mtrain.train_moma(spec)
    assert np.isfinite(up["loss"])
    saved = json.loads((tmp_path / "models" / "up" / "run" / "spec.json").read_text())
    assert saved["data_offset"] > 0
    assert json.loads((tmp_path / "models" / "up" / "config.json").read_text())["router_noise"]

    # generation and captioning through the causal path (the CLI)
    from mlxsuite.cli import main

    main(
        [
            "moma",
            "generate",
            "t-moma1t1i",
            "--prompt",
            "a handwritten digit seven",
            "--out",
            str(tmp_path / "seven.png"),
        ]
    )
    assert (tmp_path / "seven.png").exists()
    out = capsys.readouterr().out
    assert "█" in out or "▓" in out or "░" in out or "▒" in out
    I.save_png(I.load_digits().images[7], tmp_path / "d.png", scale=1)
    main(["moma", "caption", "t-moma1t1i", str(tmp_path / "d.png"), "--json"])
    assert "caption" in json.loads(capsys.readouterr().out)


def test_eta_interpolation_and_augment():
    # dense final 2.0 at 100 FLOPs; sparse crosses 2.0 halfway (in loss) between 40 (2.4) and 60 (1.6): log-FLOPs
    # interpolation gives t* = sqrt(40·60)
    assert mcompare.eta(2.0, [20, 40, 60, 100], [3.0, 2.4, 1.6, 1.2], 100) == pytest.approx(100 / np.sqrt(40 * 60))
    assert mcompare.eta(2.0, [50, 100], [2.5, 2.1], 100) is None
    orig = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8) + 1
    imgs, caps = mdata.shift_augment(orig, [["a"], ["b"]])
    assert imgs.shape == (18, 8, 8) and caps[9] == ["b"] and np.array_equal(imgs[8:10], orig)  # block 4: no shift
    assert imgs[0, 0, 0] == 0 and imgs[0, 1, 1] == orig[0, 0, 0]  # block 0: shifted down-right, zero fill


def _fake_run(folder, losses_by_step: dict, per_step_flops: float, eval_every: int):
    """A run folder as `compare` leaves it: config.json (FLOPs accounting) and run/metrics.jsonl, every step logged."""
    (folder / "run").mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"mlxsuite": {"flops_per_token": per_step_flops, "tokens_per_step": 1}})
    )
    lines = []
    n = len(losses_by_step["loss"])
    for i in range(n):
        rec = {k: float(v[i]) for k, v in losses_by_step.items()}
        lines.append({"event": "train", "step": i + 1, "tokens_per_s": 1.0, **rec})
        if (i + 1) % eval_every == 0:
            lines.append({"event": "eval", "step": i + 1, **rec})
    (folder / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def _power_law(flops):
    return 1.5 + 2.0 * (np.asarray(flops) / 1e9) ** -0.35


@pytest.mark.parametrize("steps", [300, 700])
def test_eta_recovers_a_known_speed_up_on_power_law_curves(tmp_path, steps):
    """Issue 14.2: a sparse run whose loss curve is dense's at η× the FLOPs, L_s(F) = L_d(η·F), must read η — per
    modality, through the same path `compare` takes (metrics log → smoothed curves → η). A trailing mean read 3.7
    as 3.24 and 2.0 as 1.90."""
    per_step = 1e9
    F = per_step * np.arange(1, steps + 1)
    dense = _fake_run(
        tmp_path / "dense",
        {"loss": _power_law(F), "loss_text": _power_law(F) + 0.3, "loss_image": _power_law(F) - 0.2},
        per_step,
        steps // 12,
    )
    sparse = _fake_run(
        tmp_path / "sparse",
        {"loss": _power_law(3.7 * F), "loss_text": _power_law(2.0 * F) + 0.3, "loss_image": _power_law(5.2 * F) - 0.2},
        per_step,
        steps // 12,
    )
    d, s = mcompare.curves(dense), mcompare.curves(sparse)
    got = mcompare.etas(d, s)
    assert got["overall"] == pytest.approx(3.7, rel=0.02)
    assert got["text"] == pytest.approx(2.0, rel=0.02)
    assert got["image"] == pytest.approx(5.2, rel=0.02)
    assert mcompare.etas(d, d) == {"overall": 1.0, "text": 1.0, "image": 1.0}
    # the evaluation points (every steps/12), interpolated in log FLOPs
    val = mcompare.etas(d, s, validation=True)
    assert val["overall"] == pytest.approx(3.7, rel=0.02) and val["image"] == pytest.approx(5.2, rel=0.03)


def test_eta_of_dense_against_itself_on_a_noisy_curve_is_one(tmp_path):
    """The training loss is logged per step on fresh batches, so it is noisy (here σ = 0.05 nats around a power law);
    dense must not reach its own final loss early (the trailing mean gave 1.05–1.11), and a noisy sparse curve with
    η = 2 must still read about 2."""
    rng = np.random.default_rng(0)
    per_step, steps = 1e9, 600
    F = per_step * np.arange(1, steps + 1)
    noisy = lambda f: _power_law(f) + 0.05 * rng.standard_normal(steps)  # noqa: E731
    reads = []
    for i in range(5):
        dense = _fake_run(tmp_path / f"d{i}", {k: noisy(F) for k in mcompare.KEYS}, per_step, 50)
        d = mcompare.curves(dense)
        assert all(abs(v - 1.0) <= 0.02 for v in mcompare.etas(d, d).values())
        sparse = _fake_run(tmp_path / f"s{i}", {k: noisy(2.0 * F) for k in mcompare.KEYS}, per_step, 50)
        reads += list(mcompare.etas(d, mcompare.curves(sparse)).values())
    assert np.mean(reads) == pytest.approx(2.0, rel=0.06) and min(reads) > 1.4 and max(reads) < 2.6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["moma", "train", "--variant", "moma3x", "--out", "x"], "unknown variant"),
        (["moma", "compare", "--variants", "dense,bogus", "--flops", "1e9"], "unknown variant"),
        (["moma", "generate", "nope", "--prompt", "a"], "model not found"),
    ],
)
def test_cli_errors_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    from mlxsuite.cli import main

    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_group_size_and_caption_errors(tmp_path, monkeypatch, capsys, corpus_file):
    from PIL import Image

    from mlxsuite.cli import main

    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:  # 4 rows × 48 tokens = 192 tokens; the image group has 4×32 = 128 over 3
        main(
            [
                "moma",
                "train",
                "--variant",
                "moma2t3i",
                "--out",
                "x",
                "--preset",
                "micro",
                "--corpus",
                corpus_file,
                "--seq-len",
                "48",
                "--batch-size",
                "4",
                "--text-tokens",
                "6000",
                "--codebook-size",
                "16",
                "--steps",
                "1",
            ]
        )
    assert e.value.code == 2 and "does not divide" in capsys.readouterr().err
    assert not (tmp_path / "models" / "x").exists()  # found after the tokenizer was trained: nothing left behind
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (folder / "captions.jsonl").write_text(json.dumps({"file": "zzz.png", "caption": "hi"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["moma", "train", "--out", "y", "--images", str(folder), "--corpus", corpus_file])
    assert e.value.code == 2 and "zzz.png" in capsys.readouterr().err


def test_moma_trains_with_the_papers_schedule_by_default():
    """MoMa decays linearly to 1 % of the peak (§4.1); the shared trainer offers it next to the LM's cosine."""
    from mlxsuite.train import trainer

    cfg = mspec.MomaRunSpec(out="x").train
    assert (cfg.schedule, cfg.min_lr_ratio) == ("linear", 0.01)
    cfg = trainer.TrainConfig(steps=110, warmup=10, lr=1.0, schedule="linear", min_lr_ratio=0.01)
    lr = trainer.lr_schedule(cfg)
    assert [round(float(lr(s)), 6) for s in (0, 5, 10, 60, 110)] == [0.0, 0.5, 1.0, 0.505, 0.01]
    cosine = trainer.lr_schedule(trainer.TrainConfig(steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1))
    assert float(cosine(60)) == pytest.approx(0.55) and float(cosine(110)) == pytest.approx(0.1)
    for bad in (dict(schedule="step"), dict(min_lr_ratio=1.5)):
        with pytest.raises(UserError):
            trainer.TrainConfig(**bad).validate()


def _train_args(corpus, out, extra=()):
    return [
        "moma",
        "train",
        "--variant",
        "moma1t1i",
        "--out",
        str(out),
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
        "20",
        "--warmup",
        "2",
        "--save-every",
        "10",
        "--eval-every",
        "10",
        "--quiet",
        *extra,
    ]


@pytest.mark.skipif(shutil.which("mlx.launch", path=str(BIN)) is None, reason="mlx.launch not installed")
def test_two_processes_match_one_process(small_corpus, tmp_path):
    """`mlx.launch -n 2 -- mlxsuite moma train …`: rank r takes rows r::size of each global batch, gradients are
    averaged, only rank 0 writes; losses and weights match the one-process run. moma1t1i routes every token to its
    modality's expert (k_e = n_M), so its routing does not depend on how the batch is split between processes."""
    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run([str(BIN / "mlxsuite"), *_train_args(small_corpus, one)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    cmd = [
        str(BIN / "mlx.launch"),
        "-n",
        "2",
        "--backend",
        "ring",
        "--",
        str(BIN / "mlxsuite"),
        *_train_args(small_corpus, two),
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "MLXSUITE_LOCAL_RANKS": "2"}
    )
    assert r.returncode == 0, r.stderr[-2000:]

    def losses(folder, key="loss"):
        lines = (folder / "run" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(ln)[key] for ln in lines if json.loads(ln)["event"] == "train"]

    assert len(losses(one)) == len(losses(two)) >= 2
    np.testing.assert_allclose(losses(one), losses(two), rtol=1e-4)
    for key in ("loss_text", "loss_image"):  # the per-modality metrics too: averaged over the ranks, not rank 0's half
        np.testing.assert_allclose(losses(one, key), losses(two, key), rtol=1e-4, err_msg=key)
    a, b = mx.load(str(one / "model.safetensors")), mx.load(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-3, atol=1e-5, err_msg=k)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
