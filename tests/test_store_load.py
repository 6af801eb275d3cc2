"""`store.load(dequantize=…)`: two states and one rule. For inference (`dequantize=True`: `generate MODEL`,
`generate --kvp`, `bench ttft`, `bench ttft --kvp`) a quantized model is dequantized on the CPU, a pair's base and
auxiliary alike; `False` keeps the weights as stored. The dequantized model computes what the quantized one does."""

import sysconfig
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxsuite  # noqa: F401  (the fast BLAS before mlx.core)
from mlxsuite import store
from mlxsuite.convert import derive
from mlxsuite.convert.quantization import quant_spec
from mlxsuite.data.tokenizer import train_tokenizer
from mlxsuite.kvp import recipe as kvp
from mlxsuite.models import lm


def quantized_layers(model) -> int:
    return sum(isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding) for _, m in model.named_modules())


@pytest.fixture
def quantized_pair(tmp_path, monkeypatch):
    """A 4-bit base in the store and an untrained LP-0.50 pair on it."""
    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path / "store"))
    texts = [(Path(sysconfig.get_paths()["stdlib"]) / n).read_text() for n in ("textwrap.py", "bisect.py")]
    tok = train_tokenizer(texts, 512, tmp_path / "tok" / "tokenizer.model")
    model = lm.build(lm.preset_args("micro", tok.vocab_size, num_hidden_layers=4), seed=0)
    store.save(store.output_path("fp"), model, tok)
    derive.quantize("fp", store.output_path("q4"), quant_spec(4, 32))
    built = kvp.build_pair("q4", "prune:0.5")
    base_folder = built.base_folder
    config = {
        "base": {"name": "q4", "path": str(base_folder.resolve()), "sha256": store.weights_hash(base_folder)},
        "aux": {k: v for k, v in built.info.items() if k != "layer_map"},
        "layer_map": built.info["layer_map"],
    }
    store.save_pair(store.output_path("pair"), built.pair, built.tokenizer, config)
    return base_folder


def test_a_quantized_model_is_dequantized_on_the_cpu_for_inference_only(quantized_pair):
    mx.set_default_device(mx.cpu)
    as_stored = store.load("q4", "lm")
    for_inference = store.load("q4", "lm", dequantize=True)
    assert quantized_layers(as_stored.model) > 0 and not as_stored.notes
    assert quantized_layers(for_inference.model) == 0 and "dequantized" in for_inference.notes[0]
    tokens = mx.array([[1, 5, 9, 200, 3, 7]])
    np.testing.assert_allclose(
        np.array(for_inference.model(tokens)), np.array(as_stored.model(tokens)), rtol=1e-4, atol=1e-4
    )


def test_a_pairs_base_follows_the_same_rule(quantized_pair):
    """`generate --kvp` and `bench ttft --kvp` load the pair through `load_pair`: its base is dequantized on the
    CPU as `generate MODEL` dequantizes the model (the pair used to keep it quantized)."""
    mx.set_default_device(mx.cpu)
    stored = kvp.load_pair("pair", expect_base="q4")
    assert quantized_layers(stored.pair.base) == 0 and quantized_layers(stored.pair.auxiliary) == 0
    assert quantized_layers(store.load("pair", store.KVP_TYPE).model.base) > 0  # as stored: quantized
