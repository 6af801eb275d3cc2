"""The vocab-scaled language model: a Llama-style decoder in the style of mlx-lm's `models/llama.py`.

Weight names are the Hugging Face / mlx-lm Llama names (`model.layers.{i}.self_attn.q_proj.weight`, ...), so a
folder written by this project loads in mlx-lm's `llama` (or `qwen3`, with q/k-norm) model as it is.
The vocabulary size is a first-class parameter: `ModelArgs.vocab_size`, with N_v = V·d counted apart from N_nv
(Tao et al. 2024 count one V×d matrix even when the head is untied).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import BaseModelArgs, create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.cache import KVCache
from mlx_lm.models.rope_utils import initialize_rope
from mlx.utils import tree_flatten, tree_unflatten

from mlxsuite.models import kernels as fast_kernels


# The mlx-lm model each supported family is read like, and what the family always has.
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "mistral": ("llama", {}),
    "qwen2": ("qwen2", {"qkv_bias": True, "attention_bias": False, "head_dim": None}),
    "qwen3": ("qwen3", {"qk_norm": True}),
}


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "llama"
    hidden_size: int = 256
    num_hidden_layers: int = 4
    intermediate_size: int = 688
    num_attention_heads: int = 4
    num_key_value_heads: Optional[int] = None
    vocab_size: int = 4096
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_traditional: bool = False
    rope_scaling: Optional[dict] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # bias on q, k, v and o (HF llama's meaning)
    qkv_bias: bool = False  # bias on q, k, v only (qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before RoPE (qwen3)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @classmethod
    def from_dict(cls, params: dict) -> "ModelArgs":
        """From a config.json of this project or of mlx-lm / Hugging Face (llama, mistral, qwen2, qwen3): keys
        the file leaves out take the defaults of mlx-lm's model of that family, and the family's fixed traits
        (qwen2's q/k/v biases, qwen3's q/k-norm) are set."""
        family = FAMILIES.get(params.get("model_type", "llama"))
        if family is not None:
            module, traits = family
            defaults = importlib.import_module(f"mlx_lm.models.{module}").ModelArgs
            given = {f.name: f.default for f in fields(defaults) if f.default is not MISSING and f.default is not None}
            params = {**given, **params, **traits}
            rope = params.get("rope_parameters") or {}
            if "rope_theta" not in params and "rope_theta" in rope:  # transformers >= 5 nests them
                params["rope_theta"] = rope["rope_theta"]
                if rope.get("rope_type", "default") != "default" and params.get("rope_scaling") is None:
                    params["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        return super().from_dict(params)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    # ---- parameter and FLOP accounting ------------------------------------------------------------------------

    @property
    def n_vocab_params(self) -> int:
        """N_v = V·d: one V×d matrix, as the vocabulary paper counts it (even when the head is untied)."""
        return self.vocab_size * self.hidden_size

    @property
    def n_nonvocab_params(self) -> int:
        """N_nv: attention, MLP and norms; no embedding, no output head."""
        d, hd = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = d * q + 2 * d * kv + q * d
        if self.attention_bias or self.qkv_bias:
            attn += q + 2 * kv
        if self.attention_bias:
            attn += d
        mlp = 3 * d * self.intermediate_size + (2 * self.intermediate_size + d if self.mlp_bias else 0)
        norms = 2 * d + (2 * hd if self.qk_norm else 0)
        return self.num_hidden_layers * (attn + mlp + norms) + d

    @property
    def n_params(self) -> int:
        """Parameters actually stored: N_nv + embedding + (untied) head."""
        heads = 1 if self.tie_word_embeddings else 2
        return self.n_nonvocab_params + heads * self.n_vocab_params


# The vocabulary paper's model family (Table 4: MHA, width d from the N_nv → d table, untied embeddings) as the
# vocab-* presets, and small ones that train in minutes on a CPU (micro … base). The small ones tie their embeddings
# (at V of a few thousand and d ≤ 384 an untied head would be a large share of the parameters): a deviation from the
# paper's family, stated in ARCHITECTURE.md. Vocabulary size is chosen at training time.
PRESETS: dict[str, dict] = {
    "micro": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=176, num_attention_heads=2),
    "mini": dict(hidden_size=96, num_hidden_layers=3, intermediate_size=256, num_attention_heads=3),
    "tiny": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=352, num_attention_heads=4),
    "midi": dict(hidden_size=160, num_hidden_layers=5, intermediate_size=432, num_attention_heads=5),
    "small": dict(hidden_size=256, num_hidden_layers=6, intermediate_size=688, num_attention_heads=4),
    "base": dict(hidden_size=384, num_hidden_layers=8, intermediate_size=1024, num_attention_heads=6),
    "vocab-33m": dict(hidden_size=512, num_hidden_layers=8, intermediate_size=2048, num_attention_heads=8),
    "vocab-85m": dict(hidden_size=768, num_hidden_layers=12, intermediate_size=2048, num_attention_heads=12),
    "vocab-151m": dict(hidden_size=768, num_hidden_layers=16, intermediate_size=3072, num_attention_heads=12),
    "vocab-302m": dict(hidden_size=1024, num_hidden_layers=18, intermediate_size=4096, num_attention_heads=16),
    "vocab-631m": dict(hidden_size=1536, num_hidden_layers=20, intermediate_size=4800, num_attention_heads=24),
    "vocab-1130m": dict(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632, num_attention_heads=32),
    "vocab-2870m": dict(
        hidden_size=3200, num_hidden_layers=24, intermediate_size=8192, num_attention_heads=32, rms_norm_eps=1e-6
    ),
}
for _name, _cfg in PRESETS.items():
    _cfg.setdefault("tie_word_embeddings", not _name.startswith("vocab-"))


def preset_args(name: str, vocab_size: int, **overrides) -> ModelArgs:
    if name not in PRESETS:
        raise KeyError(name)
    return ModelArgs(**{**PRESETS[name], "vocab_size": vocab_size, **overrides})


class Attention(nn.Module):
    """Multi-head attention with GQA, optional q/k-norm (qwen3) and RoPE, in pieces that every forward here shares:
    `project` (raw q, k, v), `finish_queries`/`finish_keys` (norm, then RoPE at absolute positions) and `attend`
    (attention over finished keys, then o_proj). KV Prediction's seams are keyword arguments of `__call__`: `tap`
    collects the raw keys and values (k_proj/v_proj outputs, before k-norm and RoPE); `kv` supplies raw keys and
    values that replace the layer's own."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        d = args.hidden_size
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = self.head_dim**-0.5
        bias = args.attention_bias or args.qkv_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=args.attention_bias)
        if args.qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)
        self.rope = initialize_rope(
            self.head_dim, args.rope_theta, args.rope_traditional, args.rope_scaling, args.max_position_embeddings
        )

    def project(self, x: mx.array, kv: Optional[tuple] = None) -> tuple[mx.array, mx.array, mx.array]:
        """Raw q, k, v (B, heads, L, head_dim) from x (B, L, d); with `kv`, those keys and values instead of k/v."""
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        if kv is not None:
            k, v = kv
            return q, k.astype(q.dtype), v.astype(q.dtype)
        k = self.k_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return q, k, v

    def normalize_keys(self, k: mx.array) -> mx.array:
        return self.k_norm(k) if "k_norm" in self else k

    def finish_queries(self, q: mx.array, offset, kernels=None) -> mx.array:
        """q-norm (if any), then RoPE at positions offset.. (with `kernels`: also the softmax scale)."""
        if "q_norm" in self:
            q = self.q_norm(q)
        return kernels.rope(q, self.scale) if kernels is not None else self.rope(q, offset=offset)

    def finish_keys(self, k: mx.array, offset, kernels=None) -> mx.array:
        """Raw keys → the keys a KV cache holds: k-norm (if any), then RoPE at absolute positions offset.."""
        k = self.normalize_keys(k)
        return kernels.rope(k) if kernels is not None else self.rope(k, offset=offset)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask=None, cache=None, kernels=None) -> mx.array:
        """Finished queries attend to finished keys/values; returns the o_proj output (B, L, d)."""
        B, _, L, _ = q.shape
        if kernels is not None:
            out = kernels.attention(q, k, v)
        else:
            out = scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def __call__(self, x: mx.array, mask=None, cache=None, kernels=None, tap=None, kv=None) -> mx.array:
        offset = cache.offset if cache is not None else 0
        q, k, v = self.project(x, kv)
        if tap is not None:
            tap.append((k, v))
        q, k = self.finish_queries(q, offset, kernels), self.finish_keys(k, offset, kernels)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        return self.attend(q, k, v, mask, cache, kernels)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        d, f, bias = args.hidden_size, args.intermediate_size, args.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def __call__(self, x: mx.array, kernels=None) -> mx.array:
        g, u = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(kernels.silu_mul(g, u) if kernels is not None else swiglu(g, u))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask=None, cache=None, kernels=None, tap=None, kv=None) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), mask, cache, kernels, tap, kv)
        return h + self.mlp(self.post_attention_layernorm(h), kernels)


class LlamaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache=None, tap: Optional[list] = None, kv: Optional[list] = None):
        """Causal forward over `inputs` (B, L) continuing `cache` (a list of KVCache, or None). `tap`: a list that
        receives every layer's raw (keys, values); `kv`: per layer raw (keys, values) to use instead of the layer's
        own projections (KV Prediction). The fast CPU kernels are chosen here, once per forward."""
        h = self.embed_tokens(inputs)
        cache = cache or [None] * len(self.layers)
        kernels = fast_kernels.select(self.layers, h, cache)
        mask = None if kernels is not None else create_attention_mask(h, cache[0])
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            h = layer(h, mask, c, kernels, tap, kv[i] if kv is not None else None)
        return self.norm(h)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.model = LlamaModel(args)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def logits(self, h: mx.array) -> mx.array:
        if self.args.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def __call__(self, inputs: mx.array, cache=None, tap: Optional[list] = None, kv: Optional[list] = None):
        """Logits (B, L, V); `tap` and `kv` as in `LlamaModel.__call__`."""
        return self.logits(self.model(inputs, cache, tap, kv))

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def sanitize(self, weights: dict) -> dict:
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        return weights


def init_weights(model: Model, seed: int = 0) -> None:
    """The vocabulary paper's init (lit_gpt): N(0, sqrt(2/(5d))) for embeddings and linears; the attention and MLP
    output projections get std 1/sqrt(d)/n_layers. Biases zero, norms one."""
    args = model.args
    d, n_layers = args.hidden_size, args.num_hidden_layers
    std = math.sqrt(2 / (5 * d))
    out_std = 1 / math.sqrt(d) / n_layers
    keys = mx.random.split(mx.random.key(seed), len(tree_flatten(model.parameters())))
    params = {}
    for key, (name, p) in zip(keys, tree_flatten(model.parameters())):
        if name.endswith("bias"):
            params[name] = mx.zeros_like(p)
        elif "norm" in name:
            params[name] = mx.ones_like(p)
        else:
            s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            params[name] = s * mx.random.normal(p.shape, dtype=p.dtype, key=key)
    model.update(tree_unflatten(list(params.items())))


def build(args: ModelArgs, seed: int = 0, dtype=None) -> Model:
    model = Model(args)
    init_weights(model, seed)
    if dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model
