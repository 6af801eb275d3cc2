"""`convert` speaks `mlx_lm.convert`: -q as a switch, --q-bits/--q-group-size/--q-mode, --quant-predicate, -d,
--hf-path/--mlx-path, --json; and `mlxsuite --version`.

mlx-lm is the reference throughout: its `quantize_model` (with its own mixed-bit predicate builder) on the same
weights gives the config entries and the logits our output must reproduce, and folders written by `mlx_lm.convert`
itself are the input of -d.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import run_cli as run
from test_convert import TOKENS, make_hf, mlx_lm_logits

import mlxsuite


def mlx_lm_quantized(hf: Path, **kw):
    """mlx-lm's own quantization of the checkpoint: (model, config)."""
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import load_config, load_model, quantize_model

    model, _ = load_model(hf)
    recipe = kw.pop("recipe", None)
    predicate = mixed_quant_predicate_builder(recipe, model, kw.get("group_size") or 64) if recipe else None
    return quantize_model(
        model,
        load_config(hf),
        kw.get("group_size"),
        kw.get("bits"),
        mode=kw.get("mode", "affine"),
        quant_predicate=predicate,
    )


@pytest.mark.parametrize(
    "flags, kw",
    [
        (["--quant-predicate", "mixed_3_6"], {"recipe": "mixed_3_6"}),
        (["--quant-predicate", "mixed_2_6", "--q-group-size", "32"], {"recipe": "mixed_2_6", "group_size": 32}),
        (["--q-mode", "mxfp4"], {"mode": "mxfp4"}),
        (["--q-mode", "nvfp4"], {"mode": "nvfp4"}),
        (["--q-bits", "8"], {"bits": 8}),
    ],
)
def test_from_hf_quantizes_as_mlx_lm(tmp_path, capsys, flags, kw):
    hf = make_hf(tmp_path / "hf", "qwen3")
    out = tmp_path / "q"
    code, stdout, err = run(
        capsys, "convert", "from-hf", "--hf-path", str(hf), "--mlx-path", str(out), "-q", *flags, "--json"
    )
    assert code == 0, err
    ref, ref_config = mlx_lm_quantized(hf, **kw)
    written = json.loads((out / "config.json").read_text())
    assert written["quantization"] == ref_config["quantization"] == json.loads(stdout)["config"]["quantization"]
    assert mx.allclose(mlx_lm_logits(out), ref(TOKENS), rtol=1e-5, atol=1e-5)


def test_mlx_lm_folders_kept_or_dequantized(tmp_path, capsys):
    from mlx_lm.convert import convert as mlx_lm_convert
    from mlx_lm.utils import dequantize_model, load_model

    hf = make_hf(tmp_path / "hf", "llama")
    mixed = tmp_path / "mixed"
    mlx_lm_convert(str(hf), str(mixed), quantize=True, quant_predicate="mixed_4_6")
    ref, _ = load_model(mixed)
    # kept as it is: the per-layer entries come along, mlx-lm opens it with the same logits
    assert run(capsys, "convert", "from-hf", str(mixed), str(tmp_path / "kept"))[0] == 0
    assert (
        json.loads((tmp_path / "kept" / "config.json").read_text())["quantization"]
        == json.loads((mixed / "config.json").read_text())["quantization"]
    )
    assert mx.array_equal(mlx_lm_logits(tmp_path / "kept"), ref(TOKENS))
    # -d: floats, equal to mlx-lm's dequantize_model
    code, _, err = run(capsys, "convert", "from-hf", str(mixed), str(tmp_path / "deq"), "-d", "--dtype", "float32")
    assert code == 0, err
    config = json.loads((tmp_path / "deq" / "config.json").read_text())
    assert "quantization" not in config
    deq, _ = load_model(tmp_path / "deq")
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in deq.named_modules())
    assert mx.allclose(deq(TOKENS), dequantize_model(ref)(TOKENS), rtol=1e-4, atol=1e-4)


def test_quantize_our_model_with_a_recipe(tmp_path, capsys):
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import quantize_model

    from mlxsuite import store

    hf = make_hf(tmp_path / "hf", "llama")
    assert run(capsys, "convert", "from-hf", str(hf), "fp")[0] == 0
    code, stdout, err = run(capsys, "convert", "quantize", "fp", "mixed", "--quant-predicate", "mixed_3_4", "--json")
    assert code == 0, err
    base, _, folder = store.load_model("fp")
    config = json.loads((folder / "config.json").read_text())
    _, ref_config = quantize_model(
        base, config, 64, None, quant_predicate=mixed_quant_predicate_builder("mixed_3_4", base, 64)
    )
    assert json.loads(stdout)["config"]["quantization"] == ref_config["quantization"]
    assert mx.allclose(mlx_lm_logits(tmp_path / "store" / "mixed"), base(TOKENS), rtol=1e-5, atol=1e-5)


def test_invalid_combinations_are_refused(tmp_path, capsys):
    hf = make_hf(tmp_path / "hf", "llama", tokenizer=False)

    def refused(*args, words):
        code, stdout, err = run(capsys, "convert", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
        assert not (tmp_path / "store" / "x").exists() and not (tmp_path / "x").exists()

    refused("from-hf", str(hf), "x", "--q-bits", "4", words="apply only with -q")
    refused("from-hf", str(hf), "x", "-q", "-d", words="either quantize (-q) or dequantize (-d)")
    refused(
        "from-hf",
        str(hf),
        "x",
        "-q",
        "--q-mode",
        "mxfp4",
        "--q-bits",
        "8",
        words="mxfp4 is 4-bit with group size 32 only",
    )
    refused(
        "from-hf", str(hf), "x", "-q", "--quant-predicate", "mixed_4_6", "--q-mode", "nvfp4", words="affine mode only"
    )
    refused(
        "from-hf",
        str(hf),
        "x",
        "-q",
        "--quant-predicate",
        "mixed_4_6",
        "--q-bits",
        "4",
        words="the recipe sets the bits",
    )
    refused("from-hf", str(hf), "x", "-q", "--q-group-size", "48", words="--q-group-size must be 32, 64 or 128")
    refused("from-hf", str(hf), "x", "-d", words="is not quantized")
    refused("from-hf", str(hf), "x", "--hf-path", str(tmp_path), words="given twice")
    refused("from-hf", "--mlx-path", str(tmp_path / "x"), words="give the checkpoint")
    refused(
        "quantize",
        "nope",
        "x",
        "--q-mode",
        "mxfp8",
        "--q-group-size",
        "64",
        words="mxfp8 is 8-bit with group size 32 only",
    )


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == mlxsuite.__version__
    proc = subprocess.run([sys.executable, "-m", "mlxsuite", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == mlxsuite.__version__
