"""The one decoder: a Llama-style language model in the style of mlx-lm's `models/llama.py`, whose families (Gemma 2
and 3, Phi-3, OpenELM, Qwen, Mistral) are config traits read by the same layers (`models/families.py`).

Weight names are each family's Hugging Face / mlx-lm names (`model.layers.{i}.self_attn.q_proj.weight`, OpenELM's
`transformer.layers.{i}.attn.qkv_proj.weight`, ...), so a folder written here loads in mlx-lm's class of its
model_type as it is, and theirs here. The vocabulary size is a first-class parameter: `ModelArgs.vocab_size`, with
N_v = V·d counted apart from N_nv (Tao et al. 2024 count one V×d matrix even when the head is untied).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import BaseModelArgs, create_attention_mask, scaled_dot_product_attention
from mlx_lm.models.cache import KVCache, RotatingKVCache

from mlxsuite.models import families
from mlxsuite.models import kernels as fast_kernels
from mlxsuite.models.families import FAMILIES

__all__ = ["FAMILIES", "ModelArgs", "Model", "CausalLM", "build", "init_weights", "preset_args"]


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
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before RoPE (qwen3, gemma3, openelm)
    # family traits (models/families.py)
    hidden_act: str = "silu"  # the gate's activation: silu, or gelu_pytorch_tanh (Gemma)
    norm_offset: bool = False  # RMSNorm scales by 1 + weight (Gemma)
    sandwich_norms: bool = False  # norms on the attention and MLP outputs too (Gemma)
    embedding_scale: Optional[str] = None  # "sqrt": embeddings × √d (Gemma 2); "sqrt_bf16" (Gemma 3)
    attn_logit_softcapping: Optional[float] = None
    final_logit_softcapping: Optional[float] = None
    query_pre_attn_scalar: Optional[float] = None  # softmax scale 1/√this instead of 1/√head_dim
    sliding_window: Optional[int] = None
    sliding_window_pattern: Optional[int] = None  # every n-th layer global, the others sliding (Gemma 3)
    rope_local_base_freq: Optional[float] = None  # the sliding layers' RoPE base
    partial_rotary_factor: float = 1.0
    original_max_position_embeddings: Optional[int] = None  # long-rope (Phi-3)
    fused_qkv: bool = False  # one qkv_proj (Phi-3, OpenELM)
    fused_gate_up: bool = False  # one gate_up_proj (Phi-3, OpenELM)
    num_query_heads: Optional[list] = None  # per layer (OpenELM)
    num_kv_heads: Optional[list] = None  # per layer (OpenELM)
    ffn_multipliers: Optional[list] = None  # per layer: FFN width = make_divisible(m·d, ffn_dim_divisor) (OpenELM)
    ffn_dim_divisor: Optional[int] = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        for i in range(self.num_hidden_layers):
            if self.layer_heads(i) % self.layer_kv_heads(i):
                raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @classmethod
    def from_dict(cls, params: dict) -> ModelArgs:
        """From a config.json of this project or of mlx-lm / Hugging Face (the families of `FAMILIES`): keys the
        file leaves out take the defaults of mlx-lm's model of that family, and the family's traits are set."""
        return super().from_dict(families.from_config(params))

    def to_dict(self) -> dict:
        config = {k: v for k, v in asdict(self).items() if v is not None}
        return families.openelm_out(config) if self.model_type == "openelm" else config

    # ---- per-layer shapes (OpenELM's vary by layer) ----------------------------------------------------------

    def layer_heads(self, i: int) -> int:
        return self.num_query_heads[i] if self.num_query_heads else self.num_attention_heads

    def layer_kv_heads(self, i: int) -> int:
        return self.num_kv_heads[i] if self.num_kv_heads else self.num_key_value_heads

    def layer_ffn(self, i: int) -> int:
        return families.ffn_width(self, i)

    def is_sliding(self, i: int) -> bool:
        return bool(self.sliding_window_pattern) and (i + 1) % self.sliding_window_pattern != 0

    def pruned(self, retained: list[int]) -> ModelArgs:
        """The args of a copy keeping layers `retained`, each with its own shape."""
        if self.sliding_window_pattern and self.sliding_window_pattern > 1:
            raise ValueError("layer pruning would move the sliding-window pattern's global layers")
        per_layer = {
            k: [getattr(self, k)[i] for i in retained]
            for k in ("num_query_heads", "num_kv_heads", "ffn_multipliers")
            if getattr(self, k)
        }
        return ModelArgs(**{**asdict(self), **per_layer, "num_hidden_layers": len(retained)})

    # ---- parameter and FLOP accounting ------------------------------------------------------------------------

    def layer_widths(self, i: int) -> tuple[int, int, int]:
        """(q, kv, ffn) widths of layer i: query heads·head_dim, KV heads·head_dim, FFN hidden size."""
        return self.layer_heads(i) * self.head_dim, self.layer_kv_heads(i) * self.head_dim, self.layer_ffn(i)

    @property
    def n_vocab_params(self) -> int:
        """N_v = V·d: one V×d matrix, as the vocabulary paper counts it (even when the head is untied)."""
        return self.vocab_size * self.hidden_size

    @property
    def n_nonvocab_params(self) -> int:
        """N_nv: attention, MLP and norms; no embedding, no output head."""
        d, total = self.hidden_size, self.hidden_size
        for i in range(self.num_hidden_layers):
            q, kv, f = self.layer_widths(i)
            attn = d * q + 2 * d * kv + q * d
            if self.attention_bias or self.qkv_bias:
                attn += q + 2 * kv
            if self.attention_bias:
                attn += d
            mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
            norms = (4 if self.sandwich_norms else 2) * d + (2 * self.head_dim if self.qk_norm else 0)
            total += attn + mlp + norms
        return total

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
    return ModelArgs(**{**PRESETS[name], "vocab_size": vocab_size, **overrides})


class Attention(nn.Module):
    """Multi-head attention of layer `index` with GQA, optional q/k-norm and RoPE, in pieces that every forward here
    shares: `project` (raw q, k, v), `finish_queries`/`finish_keys` (norm, then RoPE at absolute positions) and
    `attend` (attention over finished keys, then the output projection). KV Prediction's seams are keyword
    arguments of `__call__`: `tap` collects the raw keys and values (projection outputs, before k-norm and RoPE);
    `kv` supplies raw keys and values that replace the layer's own."""

    def __init__(self, args: ModelArgs, index: int = 0):
        super().__init__()
        d, names = args.hidden_size, families.layout(args)
        self.n_heads, self.n_kv_heads = args.layer_heads(index), args.layer_kv_heads(index)
        self.head_dim = args.head_dim
        self.scale = (args.query_pre_attn_scalar or self.head_dim) ** -0.5
        self.softcap = args.attn_logit_softcapping
        self.window = args.sliding_window if args.is_sliding(index) else None
        self._out = names.out_proj
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        bias = args.attention_bias or args.qkv_bias
        if args.fused_qkv:
            self.qkv_proj = nn.Linear(d, q + 2 * kv, bias=bias)
        else:
            self.q_proj = nn.Linear(d, q, bias=bias)
            self.k_proj = nn.Linear(d, kv, bias=bias)
            self.v_proj = nn.Linear(d, kv, bias=bias)
        self[self._out] = nn.Linear(q, d, bias=args.attention_bias)
        if args.qk_norm:
            self.q_norm = families.make_norm(args, self.head_dim)
            self.k_norm = families.make_norm(args, self.head_dim)
        self.rope = families.make_rope(args, index)

    def project(self, x: mx.array, kv: Optional[tuple] = None) -> tuple[mx.array, mx.array, mx.array]:
        """Raw q, k, v (B, heads, L, head_dim) from x (B, L, d); with `kv`, those keys and values instead of k/v."""
        B, L, _ = x.shape
        if "qkv_proj" in self:
            qd, kvd = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            q, k, v = mx.split(self.qkv_proj(x), [qd, qd + kvd], axis=-1)
        else:
            q = self.q_proj(x)
            k, v = (None, None) if kv is not None else (self.k_proj(x), self.v_proj(x))
        q = q.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        if kv is not None:
            k, v = kv
            return q, k.astype(q.dtype), v.astype(q.dtype)
        k = k.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        v = v.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return q, k, v

    def normalize_keys(self, k: mx.array) -> mx.array:
        return self.k_norm(k) if "k_norm" in self else k

    def finish_queries(self, q: mx.array, offset, kernels=None) -> mx.array:
        """q-norm (if any), then RoPE at positions offset.. (with `kernels`: also the softmax scale)."""
        if "q_norm" in self:
            q = self.q_norm(q)
        if kernels is None:
            return self.rope(q, offset=offset)
        return kernels.rope(q, self.rope, self.scale)

    def finish_keys(self, k: mx.array, offset, kernels=None) -> mx.array:
        """Raw keys → the keys a KV cache holds: k-norm (if any), then RoPE at absolute positions offset.."""
        k = self.normalize_keys(k)
        return kernels.rope(k, self.rope) if kernels is not None else self.rope(k, offset=offset)

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask=None, cache=None, kernels=None) -> mx.array:
        """Finished queries attend to finished keys/values; returns the output projection (B, L, d)."""
        B, _, L, _ = q.shape
        if kernels is not None:
            out = kernels.attention(q, k, v, self.softcap, self.window)
        elif self.softcap is not None:
            out = families.softcapped_attention(q * self.scale, k, v, mask, self.softcap)
        else:
            out = scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)
        return self[self._out](out.transpose(0, 2, 1, 3).reshape(B, L, -1))

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
    """The gated MLP of layer `index`: act(gate) · up, down; gate and up fused in one matrix where the family has
    it; SiLU or GELU-tanh (both with a fused CPU kernel)."""

    def __init__(self, args: ModelArgs, index: int = 0):
        super().__init__()
        d, f, bias, names = args.hidden_size, args.layer_ffn(index), args.mlp_bias, families.layout(args)
        self._gate_up, self._down = names.gate_up, names.down
        self.gelu = args.hidden_act.startswith("gelu")
        if args.fused_gate_up:
            self[self._gate_up] = nn.Linear(d, 2 * f, bias=bias)
        else:
            self.gate_proj = nn.Linear(d, f, bias=bias)
            self.up_proj = nn.Linear(d, f, bias=bias)
        self[self._down] = nn.Linear(f, d, bias=bias)

    def __call__(self, x: mx.array, kernels=None) -> mx.array:
        if self._gate_up in self:
            g, u = mx.split(self[self._gate_up](x), 2, axis=-1)
        else:
            g, u = self.gate_proj(x), self.up_proj(x)
        if kernels is not None:
            a = kernels.gelu_tanh_mul(g, u) if self.gelu else kernels.silu_mul(g, u)
        else:
            a = nn.gelu_approx(g) * u if self.gelu else swiglu(g, u)
        return self[self._down](a)


class TransformerBlock(nn.Module):
    """Pre-norm block; with sandwich norms (Gemma) also a norm on the attention and on the MLP output."""

    def __init__(self, args: ModelArgs, index: int = 0):
        super().__init__()
        self._names = names = families.layout(args)
        self._sandwich = args.sandwich_norms
        self[names.attn] = Attention(args, index)
        self[names.mlp] = MLP(args, index)
        self[names.attn_norm] = families.make_norm(args, args.hidden_size)
        self[names.mlp_norm] = families.make_norm(args, args.hidden_size)
        if args.sandwich_norms:
            self[names.attn_out_norm] = families.make_norm(args, args.hidden_size)
            self[names.mlp_out_norm] = families.make_norm(args, args.hidden_size)

    @property
    def self_attn(self) -> Attention:
        return self[self._names.attn]

    @property
    def mlp(self) -> MLP:
        return self[self._names.mlp]

    def __call__(self, x: mx.array, mask=None, cache=None, kernels=None, tap=None, kv=None) -> mx.array:
        n = self._names
        r = self.self_attn(self[n.attn_norm](x), mask, cache, kernels, tap, kv)
        h = x + (self[n.attn_out_norm](r) if self._sandwich else r)
        r = self.mlp(self[n.mlp_norm](h), kernels)
        return h + (self[n.mlp_out_norm](r) if self._sandwich else r)


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self._embed = families.layout(args).embed
        self._embedding_scale = families.embedding_scale(args)
        self._softcap = args.attn_logit_softcapping is not None
        self[self._embed] = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, i) for i in range(args.num_hidden_layers)]
        self.norm = families.make_norm(args, args.hidden_size)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self[self._embed]

    def masks(self, h: mx.array, cache: list) -> list:
        """Each layer's attention mask for the plain path, as mlx-lm makes them (one per window size)."""
        by_window: dict = {}
        for layer, c in zip(self.layers, cache):
            w = layer.self_attn.window
            if w not in by_window:
                by_window[w] = create_attention_mask(h, c, window_size=w, return_array=self._softcap)
        return [by_window[layer.self_attn.window] for layer in self.layers]

    def __call__(self, inputs: mx.array, cache=None, tap: Optional[list] = None, kv: Optional[list] = None):
        """Causal forward over `inputs` (B, L) continuing `cache` (per layer a KVCache or a RotatingKVCache, or
        None). `tap`: a list that receives every layer's raw (keys, values); `kv`: per layer raw (keys, values) to
        use instead of the layer's own projections (KV Prediction). The fast CPU kernels are chosen here, once per
        forward, and per layer (`kernels.covered`: its cache)."""
        h = self.embed_tokens(inputs)
        if self._embedding_scale is not None:
            h = h * self._embedding_scale
        cache = cache or [None] * len(self.layers)
        kernels = fast_kernels.select(self.layers, h.shape[1], h.dtype, cache)
        masks = self.masks(h, cache) if kernels is None or kernels.partial else [None] * len(self.layers)
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            k = kernels.for_cache(c) if kernels is not None else None
            h = layer(h, masks[i], c, k, tap, kv[i] if kv is not None else None)
        return self.norm(h)


class CausalLM(nn.Module):
    """What every model here shares around its decoder `body` (this module's `Decoder`, MoMa's): the family's
    module name for it, the (tied or own) head with the final logit soft-capping, `layers`."""

    def __init__(self, args: ModelArgs, body: nn.Module):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self._inner = families.layout(args).inner
        self[self._inner] = body
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    @property
    def model(self) -> nn.Module:
        return self[self._inner]

    @property
    def layers(self):
        return self.model.layers

    @property
    def dtype(self):
        """The dtype it computes in (its final norm's)."""
        return self.model.norm.weight.dtype

    def logits(self, h: mx.array) -> mx.array:
        out = self.lm_head(h) if "lm_head" in self else self.model.embed_tokens.as_linear(h)
        cap = self.args.final_logit_softcapping
        return out if cap is None else mx.tanh(out / cap) * cap

    def sanitize(self, weights: dict) -> dict:
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.args.tie_word_embeddings:
            weights.pop("lm_head.weight", None)
        elif "lm_head" in self and "lm_head.weight" not in weights and self.model_type == "gemma3_text":
            self.args.tie_word_embeddings = True  # Gemma 3 ties its head exactly when the checkpoint has none
            self.pop("lm_head")
        return weights


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__(args, Decoder(args))

    def __call__(self, inputs: mx.array, cache=None, tap: Optional[list] = None, kv: Optional[list] = None):
        """Logits (B, L, V); `tap` and `kv` as in `Decoder.__call__`."""
        return self.logits(self.model(inputs, cache, tap, kv))

    def last_logits(self, inputs: mx.array, cache: list) -> mx.array:
        """Logits (B, V) of the last position of `inputs` only: the head is a large matmul per position."""
        return self.logits(self.model(inputs, cache)[:, -1])

    def make_cache(self) -> list:
        """Per layer a KVCache, or for a sliding-window layer a RotatingKVCache of the window (as mlx-lm)."""
        windows = [layer.self_attn.window for layer in self.layers]
        return [KVCache() if w is None else RotatingKVCache(max_size=w) for w in windows]


OUTPUT_PROJECTIONS = ("o_proj.weight", "out_proj.weight", "down_proj.weight", "proj_2.weight", "down_proj")


def init_weights(model: CausalLM, seed: int = 0) -> None:
    """The vocabulary paper's init (lit_gpt): N(0, sqrt(2/(5d))) for embeddings and linears (every MoMa expert its
    own draw); the attention and MLP output projections get std 1/sqrt(d)/n_layers. Biases zero, norms one (Gemma's
    1 + w norms: w zero)."""
    args = model.args
    d, n_layers = args.hidden_size, args.num_hidden_layers
    std, out_std = math.sqrt(2 / (5 * d)), 1 / math.sqrt(d) / n_layers
    flat, params = tree_flatten(model.parameters()), {}
    keys = mx.random.split(mx.random.key(seed), len(flat))
    for key, (name, p) in zip(keys, flat):
        if name.endswith("bias"):
            params[name] = mx.zeros_like(p)
        elif "norm" in name:
            params[name] = mx.zeros_like(p) if args.norm_offset else mx.ones_like(p)
        else:
            s = out_std if name.endswith(OUTPUT_PROJECTIONS) else std
            params[name] = s * mx.random.normal(p.shape, dtype=p.dtype, key=key)
    model.update(tree_unflatten(list(params.items())))


def build(args: ModelArgs, seed: int = 0, dtype=None) -> Model:
    model = Model(args)
    init_weights(model, seed)
    if dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model
