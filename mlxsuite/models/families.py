"""The model families of the one decoder (`models/lm.py`) as data: for each config `model_type`, the mlx-lm model it
is read like (its defaults for keys a config leaves out), the traits the family always has, and the module names
its checkpoints use. A family is these traits plus the few small pieces below (its RoPE, its embedding scale, the
translation of OpenELM's config keys); the layers read the traits, there is no second layer loop.

| family | traits |
|---|---|
| llama, mistral | (none: the reference decoder) |
| qwen2 / qwen3 | q/k/v biases / q/k-norm |
| gemma2 | RMSNorm scales by 1 + w, norms after attention and MLP too, GELU-tanh gate, embeddings × √d, attention and
  final logit soft-capping, softmax scale 1/√query_pre_attn_scalar, tied head |
| gemma3_text | gemma2's without soft-capping (as mlx-lm), with q/k-norm, √d rounded to bfloat16, every
  `sliding_window_pattern`-th layer global and the others sliding-window (own RoPE base, RotatingKVCache) |
| phi3 | fused qkv_proj and gate_up_proj, head_dim = d / heads, partial rotary, long-rope (SuScaledRoPE) |
| openelm | per-layer query heads, KV heads and FFN widths, fused qkv and gate-up, q/k-norm, its own module names |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.gemma2 import RMSNorm as OffsetRMSNorm
from mlx_lm.models.rope_utils import SuScaledRoPE, initialize_rope

GEMMA = dict(hidden_act="gelu_pytorch_tanh", norm_offset=True, sandwich_norms=True, tie_word_embeddings=True)

# model_type -> (the mlx-lm module read like, the family's fixed traits)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "mistral": ("llama", {}),
    "qwen2": ("qwen2", {"qkv_bias": True, "attention_bias": False, "head_dim": None}),
    "qwen3": ("qwen3", {"qk_norm": True}),
    "gemma2": ("gemma2", {**GEMMA, "embedding_scale": "sqrt", "rope_scaling": None, "sliding_window_pattern": None}),
    "gemma3_text": (
        "gemma3_text",
        {**GEMMA, "embedding_scale": "sqrt_bf16", "qk_norm": True, "attn_logit_softcapping": None}
        | {"final_logit_softcapping": None, "rope_traditional": False},
    ),
    "phi3": ("phi3", {"fused_qkv": True, "fused_gate_up": True, "head_dim": None, "attention_bias": False}),
    "openelm": ("openelm", {"fused_qkv": True, "fused_gate_up": True}),
}

# OpenELM's config keys -> this project's (both are written back, so mlx-lm's openelm reads the folder)
OPENELM_KEYS = {
    "model_dim": "hidden_size",
    "num_transformer_layers": "num_hidden_layers",
    "share_input_output_layers": "tie_word_embeddings",
    "normalize_qk_projections": "qk_norm",
    "rope_freq_constant": "rope_theta",
    "max_context_length": "max_position_embeddings",
}


@dataclass(frozen=True)
class Layout:
    """The module names of a family's checkpoints (so its folders load in mlx-lm's class and ours)."""

    inner: str = "model"
    embed: str = "embed_tokens"
    attn: str = "self_attn"
    mlp: str = "mlp"
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"  # the norm before the MLP
    attn_out_norm: str = "post_attention_layernorm"  # sandwich norms only (Gemma)
    mlp_out_norm: str = "post_feedforward_layernorm"
    out_proj: str = "o_proj"
    gate_up: str = "gate_up_proj"
    down: str = "down_proj"


LAYOUTS = {
    "default": Layout(),
    "sandwich": Layout(mlp_norm="pre_feedforward_layernorm"),
    "openelm": Layout(
        inner="transformer", embed="token_embeddings", attn="attn", mlp="ffn", attn_norm="attn_norm",
        mlp_norm="ffn_norm", out_proj="out_proj", gate_up="proj_1", down="proj_2",
    ),
}  # fmt: skip


def layout(args) -> Layout:
    if args.model_type == "openelm":
        return LAYOUTS["openelm"]
    return LAYOUTS["sandwich" if args.sandwich_norms else "default"]


def from_config(params: dict) -> dict:
    """A config.json's keys for `ModelArgs`: the family's mlx-lm defaults under the file's keys, OpenELM's keys
    translated, transformers-5 nested RoPE parameters unnested, then the family's fixed traits."""
    import importlib
    from dataclasses import MISSING, fields

    family = FAMILIES.get(params.get("model_type", "llama"))
    if family is None:
        return params
    module, traits = family
    defaults = importlib.import_module(f"mlx_lm.models.{module}").ModelArgs
    given = {f.name: f.default for f in fields(defaults) if f.default is not MISSING and f.default is not None}
    params = {**given, **params}
    if module == "openelm":
        params = openelm_in(params)
    rope = params.get("rope_parameters") or {}
    if "rope_theta" not in params and "rope_theta" in rope:  # transformers >= 5 nests them
        params["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" and params.get("rope_scaling") is None:
            params["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if params.get("hidden_activation"):  # Gemma's config names it so
        params.setdefault("hidden_act", params["hidden_activation"])
    return {**params, **traits}


def openelm_in(params: dict) -> dict:
    out = {**params, **{ours: params[theirs] for theirs, ours in OPENELM_KEYS.items() if theirs in params}}
    out["num_attention_heads"] = max(out["num_query_heads"])
    out["num_key_value_heads"] = max(out["num_kv_heads"])
    out.setdefault("intermediate_size", 0)  # per layer: ffn_multipliers
    return out


def openelm_out(config: dict) -> dict:
    """Our config keys plus OpenELM's (mlx-lm's openelm reads these)."""
    return {**config, **{theirs: config[ours] for theirs, ours in OPENELM_KEYS.items() if ours in config}}


def make_rope(args, layer: int) -> nn.Module:
    """The RoPE of layer `layer`: Gemma 3's sliding layers their local base; Phi-3's long-rope (mlx-lm's
    SuScaledRoPE) and partial rotary; otherwise mlx-lm's `initialize_rope` over the rotated dims."""
    dims = int(args.head_dim * args.partial_rotary_factor)
    if args.is_sliding(layer) and args.rope_local_base_freq is not None:
        return nn.RoPE(dims, traditional=False, base=args.rope_local_base_freq)
    scaling = args.rope_scaling
    kind = (scaling.get("type") or scaling.get("rope_type")) if scaling else None
    if kind in ("longrope", "su") and args.model_type == "phi3":
        return SuScaledRoPE(
            dims,
            base=args.rope_theta,
            max_position_embeddings=args.max_position_embeddings,
            original_max_position_embeddings=args.original_max_position_embeddings or 4096,
            short_factor=scaling["short_factor"],
            long_factor=scaling["long_factor"],
        )
    return initialize_rope(dims, args.rope_theta, args.rope_traditional, scaling, args.max_position_embeddings)


def embedding_scale(args) -> Optional[float]:
    """What Gemma multiplies its embeddings by: √d (Gemma 3: rounded to bfloat16, as mlx-lm does)."""
    if args.embedding_scale == "sqrt":
        return args.hidden_size**0.5
    if args.embedding_scale == "sqrt_bf16":
        return mx.array(args.hidden_size**0.5, mx.bfloat16).item()
    return None


def ffn_width(args, layer: int) -> int:
    if args.ffn_multipliers:
        from mlx_lm.models.openelm import make_divisible

        return int(make_divisible(args.ffn_multipliers[layer] * args.hidden_size, divisor=args.ffn_dim_divisor))
    return args.intermediate_size


def make_norm(args, dims: int) -> nn.Module:
    return OffsetRMSNorm(dims, eps=args.rms_norm_eps) if args.norm_offset else nn.RMSNorm(dims, eps=args.rms_norm_eps)


def softcapped_attention(q: mx.array, k: mx.array, v: mx.array, mask, cap: float) -> mx.array:
    """softmax(cap·tanh(q kᵀ / cap) + mask) v for scaled queries (Gemma 2's attention, as mlx-lm computes it)."""
    B, H, L, D = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(B, kv_heads, H // kv_heads, L, D)
    scores = q @ mx.expand_dims(k, 2).swapaxes(-1, -2)
    scores = mx.tanh(scores / cap) * cap
    if isinstance(mask, str):
        mask = mx.arange(k.shape[2] - L, k.shape[2])[:, None] >= mx.arange(k.shape[2])[None]
    if mask is not None:
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        else:
            scores = scores + mask
    out = mx.softmax(scores, axis=-1, precise=True) @ mx.expand_dims(v, 2)
    return out.reshape(B, H, L, D)
