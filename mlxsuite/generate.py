"""Prefill and token generation with a KV cache, in the manner of mlx-lm's `generate_step`.

Prefill runs the prompt in chunks of `prefill_step` tokens and evaluates only the cache (no logits for prompt
positions); the last prompt token goes through the full model to give the first token's logits.

On the CPU the prefill takes a fused path (`fused_prefill_supported`). MLX's CPU backend has no fused attention
(the scores are materialized) and its `exp`/`sigmoid`/`rope` are scalar code, tens of ns per element, so for small
models the softmax, SiLU and RoPE cost more than the matmuls. The fused path computes the same function with:
an exp built from multiply-adds and a bit shift that `mx.compile` fuses into vectorized kernels (relative error
~2.5e-7), RoPE from a cos/sin table computed once per prompt (the same formula as `mx.fast.rope`'s fallback),
the softmax denominator as a matmul with a ones vector, and no final norm. Results match the model's own forward
to float32 rounding (tests/test_ttft.py); prefill is 1.5-2x faster than the model's forward (benchmarks/
ttft_vs_mlx_lm.py). Compiling whole layers does not pay: building the graph is 1-2% of a chunk's time, and each
new chunk shape would retrace.

DEFAULT_PREFILL_STEP: on the CPU, benchmarks/prefill_step.py (presets small and base, 512/1024/2048 tokens, steps
64-2048, two runs on 2 shared cores at load averages 4 and 7-11) gave 256 the best score in both runs (geometric
mean of time / best time: 1.005 and 1.038; 128: 1.084 and 1.047; 512: 1.139 and 1.127; mlx-lm's 2048: 1.52 and
1.72); 256 was within 4% of the best in 10 of the 12 configurations and within 12% in all. Smaller chunks win on
the CPU because the attention is unfused (the scores are chunk × context). On a GPU (not measured here) mlx-lm's
2048 stays: users report larger chunks faster on Apple GPUs (lmstudio-js #506).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache

from .platform import compiler_available

DEFAULT_PREFILL_STEP = {"cpu": 256, "gpu": 2048}


def default_prefill_step() -> int:
    return DEFAULT_PREFILL_STEP["cpu" if mx.default_device().type == mx.DeviceType.cpu else "gpu"]


def prefill(
    model, tokens: mx.array, cache: list, prefill_step: Optional[int] = None, *, fused: Optional[bool] = None
) -> mx.array:
    """Run `tokens` (B, L) into `cache`: all but the last in chunks of `prefill_step` without logits, the last
    through the full model; return its logits (B, V).

    `fused=None` takes the fused CPU path when `fused_prefill_supported`; False forces the model's own forward."""
    step = prefill_step or default_prefill_step()
    if step < 1:
        raise ValueError(f"prefill_step must be positive, got {step}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    L = tokens.shape[1]
    if L == 0:
        raise ValueError("empty prompt")
    if fused is None:
        fused = fused_prefill_supported(model, cache)
    tables = _rope_table(model.model.layers[0].self_attn.rope, cache[0].offset, L - 1) if fused and L > 1 else None
    done = 0
    while L - done > 1:
        n = min(step, L - 1 - done)
        chunk = tokens[:, done : done + n]
        if fused:
            _fused_backbone(model, chunk, cache, tables[0][done : done + n], tables[1][done : done + n])
        else:
            model.model(chunk, cache)  # the backbone only: no logits for prompt positions
        mx.eval([c.state for c in cache])
        done += n
    return model(tokens[:, done:], cache)[:, -1]


# ---- the fused CPU prefill ------------------------------------------------------------------------------------


def fused_prefill_supported(model, cache: list) -> bool:
    """The fused path needs: the CPU, a C++ compiler for mx.compile, float32, this project's LM with standard
    (non-scaled, full-width) RoPE, and plain KV caches. Anything else takes the model's own forward."""
    from .models.lm import Attention, Model

    if mx.default_device().type != mx.DeviceType.cpu or not compiler_available():
        return False
    if not isinstance(model, Model) or any(type(c) is not KVCache for c in cache):
        return False
    if model.model.embed_tokens.weight.dtype != mx.float32:
        return False
    for layer in model.model.layers:
        attn = layer.self_attn
        if type(attn) is not Attention or type(attn.rope) is not nn.RoPE or attn.rope.dims != attn.head_dim:
            return False
    return True


def _fused_backbone(model, tokens: mx.array, cache: list, cos: mx.array, sin: mx.array, *, raw_kv: bool = False):
    """The decoder layers on one chunk, writing its keys and values into `cache` (no final norm). Returns nothing,
    or with `raw_kv` every layer's raw keys and values for the chunk (k_proj/v_proj outputs, (B, kv_heads, n,
    head_dim): before k-norm and RoPE; what KV Prediction's predictor reads, `KVPredictionModel.prefill`).
    Callers evaluate only the caches (and what they derive from the raw KV), so MLX never computes the last layer's
    attention and MLP here: only the hidden state needs them."""
    h = model.model.embed_tokens(tokens)
    B, n, _ = h.shape
    offset = cache[0].offset
    keys, values = [], []
    for layer, c in zip(model.model.layers, cache):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).reshape(B, n, attn.n_heads, -1).transpose(0, 2, 1, 3)
        k, v = attn.raw_kv(x)
        if raw_kv:
            keys.append(k)
            values.append(v)
        if "q_norm" in attn:
            q, k = attn.q_norm(q), attn.k_norm(k)
        traditional = attn.rope.traditional
        k = _apply_rope(k, cos, sin, 1.0, traditional)
        q = _apply_rope(q, cos, sin, attn.scale, traditional)  # the softmax scale rides along, as in SDPA
        k, v = c.update_and_fetch(k, v)
        out = _causal_attention(q, k, v, offset)
        h = h + attn.o_proj(out.transpose(0, 2, 1, 3).reshape(B, n, -1))
        x = layer.post_attention_layernorm(h)
        mlp = layer.mlp
        h = h + mlp.down_proj(_silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))
    return (keys, values) if raw_kv else None


def _rope_table(rope: nn.RoPE, start: int, n: int) -> tuple[mx.array, mx.array]:
    """cos and sin (n, dims/2) for positions start..start+n-1, computed as mx.fast.rope's fallback does."""
    half = rope.dims // 2
    positions = (mx.arange(n, dtype=mx.float32) + start) * rope.scale
    inv_freqs = mx.exp(mx.arange(0, -half, -1, dtype=mx.float32) * (math.log(rope.base) / half))
    theta = positions[:, None] * inv_freqs
    return mx.cos(theta), mx.sin(theta)


@mx.compile
def _rotate(x1, x2, cos, sin, scale):
    return (x1 * cos - x2 * sin) * scale, (x1 * sin + x2 * cos) * scale


def _apply_rope(x: mx.array, cos: mx.array, sin: mx.array, scale: float, traditional: bool) -> mx.array:
    scale = mx.array(scale, dtype=x.dtype)
    if traditional:  # rotate consecutive pairs
        a, b = _rotate(x[..., 0::2], x[..., 1::2], cos, sin, scale)
        return mx.stack([a, b], axis=-1).reshape(x.shape)
    half = x.shape[-1] // 2
    a, b = _rotate(x[..., :half], x[..., half:], cos, sin, scale)
    return mx.concatenate([a, b], axis=-1)


def _causal_attention(q: mx.array, k: mx.array, v: mx.array, offset: int) -> mx.array:
    """softmax(q kᵀ + causal mask) v for queries at positions offset.. (q already scaled); GQA by grouping."""
    B, H, n, D = q.shape
    kv_heads, L = k.shape[1], k.shape[2]
    rep = H // kv_heads
    scores = (q.reshape(B, kv_heads, rep * n, D) @ k.swapaxes(-1, -2)).reshape(B, kv_heads, rep, n, L)
    causal = mx.arange(offset, offset + n)[:, None] >= mx.arange(L)[None]
    scores = mx.where(causal, scores, -mx.inf)
    weights = _exp(_shift(scores, scores.max(axis=-1, keepdims=True))).reshape(B, kv_heads, rep * n, L)
    return ((weights @ v) / (weights @ mx.ones((L, 1), dtype=weights.dtype))).reshape(B, H, n, D)


def _silu_mul(g: mx.array, u: mx.array) -> mx.array:
    """silu(g) · u = g · u / (1 + exp(-g))."""
    x = _neg_clip(g)
    return _silu_finish(g, u, _exp_mantissa(x), _exp_bits(x).view(mx.float32))


# exp(x) = 2^n · 2^f, n = round(x·log2 e), |f| <= 1/2, for x in [-88.03, 88] (callers clip): 2^f from a degree-6
# polynomial, relative error ~2.5e-7; 2^n written into the exponent bits (n = -127 gives exactly 0). MLX's CPU
# exp is scalar code (~15-40 ns per element); this is ~10x faster because mx.compile fuses each part into one
# loop that the C++ compiler vectorizes: no max/min/where inside (MLX's versions carry branches), every
# intermediate used once (shared ones split the fusion), and the bit cast (not fusable) between the two parts.
_LOG2E = 1.4426950408889634
_ROUND = 12582912.0  # 1.5·2^23: (t + _ROUND) - _ROUND rounds t to the nearest integer in float32
_EXP_MIN, _EXP_MAX = -88.03, 88.0
_C = [(-math.log(2)) ** k / math.factorial(k) for k in range(7)]  # 2^f = Σ _C[k]·(-f)^k


@mx.compile
def _exp_mantissa(x):
    t = x * _LOG2E
    g = ((t + _ROUND) - _ROUND) - t  # -f: the rounded value first, so that t stays inside the fused kernel
    g2 = g * g
    lo = (_C[0] + _C[1] * g) + (_C[2] + _C[3] * g) * g2
    hi = (_C[4] + _C[5] * g) + _C[6] * (g * g)
    return lo + hi * (g2 * g2)


@mx.compile
def _exp_bits(x):
    n = ((x + x) * (_LOG2E * 0.5) - _ROUND) + _ROUND  # the same n as above, written so it is not merged with it
    return (n.astype(mx.int32) + 127) << 23


@mx.compile
def _mul(a, b):
    return a * b


def _exp(x: mx.array) -> mx.array:
    return _mul(_exp_mantissa(x), _exp_bits(x).view(mx.float32))


@mx.compile
def _shift(scores, row_max):
    return mx.maximum(scores - row_max, _EXP_MIN)


@mx.compile
def _neg_clip(g):
    return mx.clip(-g, _EXP_MIN, _EXP_MAX)


@mx.compile
def _silu_finish(g, u, p, two_n):
    return g / (1.0 + p * two_n) * u


# ---- sampling and generation ----------------------------------------------------------------------------------


def sample(logits: mx.array, temperature: float = 0.0, top_k: int = 0) -> mx.array:
    """Greedy at temperature 0, else softmax sampling (optionally restricted to the top k logits)."""
    if temperature <= 0:
        return mx.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = mx.sort(logits, axis=-1)[..., -top_k][..., None]
        logits = mx.where(logits < kth, -mx.inf, logits)
    return mx.random.categorical(logits)


def generate_tokens(
    model,
    prompt: mx.array,
    max_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    cache: Optional[list] = None,
    first_logits: Optional[mx.array] = None,
    prefill_step: Optional[int] = None,
    processor: Optional[Callable[[mx.array], mx.array]] = None,
) -> Iterator[int]:
    """Yield up to `max_tokens` token ids for a 1-D prompt. With `cache` and `first_logits` given, the prompt is
    taken as already prefilled into `cache` (KV Prediction fills it another way). `processor` maps the logits
    before sampling (e.g. to restrict the choice to some ids)."""
    if cache is None:
        cache = model.make_cache()
    logits = first_logits if first_logits is not None else prefill(model, prompt[None], cache, prefill_step)
    for _ in range(max_tokens):
        token = sample(logits if processor is None else processor(logits), temperature, top_k)
        mx.eval(token)
        yield int(token.item())
        logits = model(token.reshape(1, 1), cache)[:, -1]


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    on_token: Optional[Callable[[str], None]] = None,
) -> str:
    ids = tokenizer.encode(prompt) or [tokenizer.bos_id]
    return decode_stream(tokenizer, generate_tokens(model, mx.array(ids), max_tokens, temperature, top_k), on_token)


def decode_stream(tokenizer, tokens: Iterator[int], on_token: Optional[Callable[[str], None]] = None) -> str:
    """Decode generated ids up to EOS; `on_token` receives each new piece of text as it appears."""
    out: list[int] = []
    shown = ""
    for token in tokens:
        if token == tokenizer.eos_id:
            break
        out.append(token)
        if on_token is not None:
            text = tokenizer.decode(out)
            on_token(text[len(shown) :])
            shown = text
    return tokenizer.decode(out)
