"""A model whose `model_type` has no family here but which mlx-lm runs (granite, olmo2, …): mlx-lm's own class
behind the interface the profiling and generation commands use (`model(tokens, cache)`, `make_cache`, `layers`,
`args` for the FLOPs and parameter counts). It has none of the one forward's seams (`tap`, `kv`: KV Prediction)
nor its fused CPU kernels, and is not trained here: those commands refuse it (`SEAMS_MISSING`)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from mlxsuite.models import lm

RAN_THROUGH_MLX_LM = (
    "model_type {!r} has no family here: it ran through mlx-lm's own class (modes base and mlx-lm are the same "
    "code; FLOPs counted as for a Llama of its shape)"
)
SEAMS_MISSING = "this project's forward with its seams (KV Prediction's tap/kv, training)"


def module_for(config: dict) -> Optional[ModuleType]:
    """mlx-lm's model module for a config (its own lookup, remappings included), or None if mlx-lm has none."""
    from mlx_lm.utils import MODEL_REMAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type.replace("_", "").isalnum():
        return None
    try:
        return importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}")
    except ImportError:
        return None


class MlxLmClass(nn.Module):
    """mlx-lm's model `inner` for the config `config`; `args` is a Llama-shaped reading of the config (hidden size,
    layers, heads, FFN width, vocabulary) for the nominal FLOPs and parameter counts."""

    def __init__(self, inner: nn.Module, config: dict):
        super().__init__()
        self.inner = inner
        self.model_type = config["model_type"]
        self.args = counting_args(config)

    def __call__(self, inputs, cache=None):
        return self.inner(inputs, cache=cache)

    def make_cache(self) -> list:
        return make_prompt_cache(self.inner)

    @property
    def layers(self):
        return self.inner.layers

    @property
    def bench_notes(self) -> list[str]:
        return [RAN_THROUGH_MLX_LM.format(self.model_type)]

    @property
    def dtype(self):
        """The dtype of its first floating-point weight."""
        return next(v.dtype for _, v in tree_flatten(self.parameters()) if mx.issubdtype(v.dtype, mx.floating))


def implementation(model) -> str:
    """What runs `model`, for records: this project's family, or mlx-lm's own class."""
    if isinstance(model, MlxLmClass):
        return f"mlx-lm's {model.model_type} class"
    return f"mlxsuite's {model.args.model_type} family"


def counting_args(config: dict) -> lm.ModelArgs:
    text = config.get("text_config") or config
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size")
    known = {k: text[k] for k in keys if isinstance(text.get(k), int)}
    for k in ("num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings"):
        if text.get(k) is not None:
            known[k] = text[k]
    args = lm.ModelArgs(**known)
    args.model_type = config["model_type"]
    return args
