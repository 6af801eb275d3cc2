"""Fast CPU kernels for the decoder's non-matmul work: RoPE from a table, causal softmax attention, SiLU·mul and
GELU-tanh·mul.

MLX's CPU backend has no fused attention (the scores are materialized) and its `exp`/`sigmoid`/`rope` are scalar
code, tens of ns per element, so for small models the softmax, SiLU and RoPE cost more than the matmuls. These
kernels compute the same functions with:

- an exp built from multiply-adds and a bit shift that `mx.compile` fuses into vectorized loops (relative error
  ~2.5e-7), with its exact derivative (exp' = exp) supplied as a custom VJP, so training can use it too;
- RoPE from a cos/sin table computed once per forward (the formula of `mx.fast.rope`'s fallback), the softmax
  scale folded into the queries' rotation;
- the softmax denominator as a matmul with a ones vector;
- above SCORES_PER_BLOCK scores, the attention in blocks (KV head groups, query rows), each pass in cache.
- in a forward that writes a KV cache (no gradient is ever taken through it), the attention in C instead
  (`native_attention`: MLX's CPU backend cannot fuse its passes, nor thread them), where it compiled.

`select` decides once per forward whether they apply (the CPU, a C++ compiler for mx.compile, float32, mlx-lm's
KV caches, sliding windows' rotating ones included); a variant they do not cover runs the plain op for that op only
(a RoPE other than `nn.RoPE`). The layers of `models/lm.py` then use them in place of `mx.fast.rope`,
`scaled_dot_product_attention`, `swiglu` and `nn.gelu_approx` (Gemma's GELU-tanh gate: SiLU's kernel with its own
argument). Results match the plain path to float32 rounding, values and gradients (tests/test_kernels.py,
tests/test_families.py). Compiling whole layers does not pay: building the graph is 1–2 % of a chunk's
time, and every new chunk shape would retrace.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, RotatingKVCache

from mlxsuite.models import native_attention
from mlxsuite.platform import compiler_available


class CPUKernels:
    """The kernels of one forward pass over positions offset, offset+1, …, offset+n−1. Keys are the last L positions
    in order (a KVCache's; a sliding window's RotatingKVCache's after a multi-token update; after a one-token update
    its order is rotated, but the one query may see all of them); a cache of another kind (a RotatingKVCache that
    keeps a prefix, a quantized one) runs the plain ops (`for_cache`). A RoPE other than plain `nn.RoPE` (long-rope,
    Llama 3's) is applied by the layer's own module (`rope`)."""

    def __init__(self, offset: int, n: int, partial: bool = False, inference: bool = False):
        self.offset, self.n = offset, n
        self.partial = partial  # some layers run the plain ops (they need masks)
        self.inference = inference  # every layer writes a KV cache: no gradient is taken (the native attention)
        self.tables: dict = {}

    def for_cache(self, cache) -> Optional[CPUKernels]:
        return self if covered(cache) else None

    def rope(self, x: mx.array, rope: nn.Module, scale: float = 1.0) -> mx.array:
        """`rope` at this forward's positions on (B, heads, n, head_dim), times `scale` (the softmax scale for q)."""
        if type(rope) is not nn.RoPE:
            x = rope(x, offset=self.offset)
            return x * mx.array(scale, dtype=x.dtype) if scale != 1.0 else x
        key = (rope.dims, rope.base, rope.scale)
        if key not in self.tables:
            self.tables[key] = rope_table(rope, self.offset, self.n)
        cos, sin = self.tables[key]
        scale = mx.array(scale, dtype=x.dtype)
        rest = x[..., rope.dims :] * scale if rope.dims < x.shape[-1] else None
        if rope.traditional:  # rotate consecutive pairs
            a, b = _rotate(x[..., 0 : rope.dims : 2], x[..., 1 : rope.dims : 2], cos, sin, scale)
            out = mx.stack([a, b], axis=-1).reshape(*x.shape[:-1], rope.dims)
        else:
            half = rope.dims // 2
            out = mx.concatenate(_rotate(x[..., :half], x[..., half : rope.dims], cos, sin, scale), axis=-1)
        return out if rest is None else mx.concatenate([out, rest], axis=-1)

    def attention(self, q: mx.array, k: mx.array, v: mx.array, softcap=None, window=None) -> mx.array:
        """softmax(q kᵀ + causal mask) v for queries at this forward's positions (q already scaled); GQA by
        grouping the query heads that share a KV head. `softcap`: scores → cap·tanh(scores/cap) first (Gemma 2);
        `window`: a query sees the last `window` positions only. Above SCORES_PER_BLOCK scores, each KV head's
        group apart and the queries in blocks of rows, each block over the keys up to its last query."""
        B, H, n, _ = q.shape
        kv_heads, L = k.shape[1], k.shape[2]
        rep, first_key = H // kv_heads, self.offset + n - L  # the position of k[:, :, 0]
        if self.inference and softcap is None and _native and native_attention.available():
            return native_attention.attention(q, k, v, self.offset, first_key, window)
        if B * H * n * L <= SCORES_PER_BLOCK:
            return _attend(q, k, v, self.offset, first_key, softcap, window)
        rows, out = max(1, SCORES_PER_BLOCK // (B * rep * L)), []
        for s in range(0, n, rows):
            end = min(s + rows, n)
            keys = self.offset + end - first_key
            groups = [
                _attend(
                    q[:, g * rep : (g + 1) * rep, s:end],
                    k[:, g : g + 1, :keys],
                    v[:, g : g + 1, :keys],
                    self.offset + s,
                    first_key,
                    softcap,
                    window,
                )
                for g in range(kv_heads)
            ]
            out.append(mx.concatenate(groups, axis=1) if kv_heads > 1 else groups[0])
        return mx.concatenate(out, axis=2) if len(out) > 1 else out[0]

    @staticmethod
    def silu_mul(g: mx.array, u: mx.array) -> mx.array:
        return silu_mul(g, u)

    @staticmethod
    def gelu_tanh_mul(g: mx.array, u: mx.array) -> mx.array:
        return gelu_tanh_mul(g, u)


# Scores (floats) one attention op may hold: above it the attention runs in blocks (`CPUKernels.attention`), so that
# each of its elementwise passes (mask, max, shift, exp, ·V, ·1) streams a few MB that stay in cache instead of the
# whole chunk × context (19 MB a layer for a 256-token chunk at 2,048 tokens on SmolLM2, where one layer's attention
# took 88 ms whole and 58-62 ms in blocks of ~0.8M scores; 25 → 20 ms at 1,024).
SCORES_PER_BLOCK = 1 << 20


def _attend(q, k, v, query_start: int, key_start: int, softcap=None, window=None) -> mx.array:
    """Causal softmax attention of queries at positions query_start.. over keys at key_start.. (q already scaled)."""
    B, H, n, D = q.shape
    kv_heads, L = k.shape[1], k.shape[2]
    rep = H // kv_heads
    scores = (q.reshape(B, kv_heads, rep * n, D) @ k.swapaxes(-1, -2)).reshape(B, kv_heads, rep, n, L)
    if softcap is not None:
        scores = soft_cap(scores, softcap)
    query_pos = mx.arange(query_start, query_start + n)[:, None]
    key_pos = mx.arange(key_start, key_start + L)[None]
    causal = query_pos >= key_pos
    if window is not None:
        causal = causal & (query_pos < key_pos + window)
    scores = mx.where(causal, scores, -mx.inf)
    row_max = mx.stop_gradient(scores.max(axis=-1, keepdims=True))
    weights = fast_exp(_shift(scores, row_max)).reshape(B, kv_heads, rep * n, L)
    return ((weights @ v) / (weights @ mx.ones((L, 1), dtype=weights.dtype))).reshape(B, H, n, D)


_enabled = _native = True


@contextmanager
def disabled(native_only: bool = False):
    """Run the plain MLX ops inside this block, or (`native_only`) these kernels with MLX's ops for the attention
    instead of the native one (to compare the paths)."""
    global _enabled, _native
    before = _enabled, _native
    _native = False
    _enabled = _enabled and native_only
    try:
        yield
    finally:
        _enabled, _native = before


def select(layers: list, n: int, dtype, cache: list) -> Optional[CPUKernels]:
    """The kernels for a forward of `layers` (this project's decoder layers) over n positions of activations in
    `dtype` with `cache` (None entries: no cache), or None where they do not apply or do not pay (n = 1) and the
    plain MLX ops run."""
    if n == 1 or not available(layers, dtype, cache):
        return None  # one token (a decode step): the plain ops are fewer ops, and per-op cost is all there is
    offset = cache[0].offset if cache[0] is not None else 0
    inference = all(c is not None for c in cache)
    return CPUKernels(offset, n, partial=not all(covered(c) for c in cache), inference=inference)


def covered(cache) -> bool:
    """Whether the kernels' attention applies with this layer cache (None: no cache)."""
    return cache is None or type(cache) is KVCache or (type(cache) is RotatingKVCache and cache.keep == 0)


def available(layers: list, dtype, cache: list = ()) -> bool:
    """Whether the kernels apply: the CPU, a C++ compiler (mx.compile), float32, KV caches of mlx-lm's plain or
    rotating kind (a layer whose cache `covered` refuses runs the plain ops)."""
    if not _enabled or mx.default_device().type != mx.DeviceType.cpu or dtype != mx.float32:
        return False
    return compiler_available() and all(c is None or type(c) in (KVCache, RotatingKVCache) for c in cache)


def rope_table(rope: nn.RoPE, start: int, n: int) -> tuple[mx.array, mx.array]:
    """cos and sin (n, dims/2) for positions start..start+n-1, computed as mx.fast.rope's fallback does."""
    half = rope.dims // 2
    positions = (mx.arange(n, dtype=mx.float32) + start) * rope.scale
    inv_freqs = mx.exp(mx.arange(0, -half, -1, dtype=mx.float32) * (math.log(rope.base) / half))
    theta = positions[:, None] * inv_freqs
    return mx.cos(theta), mx.sin(theta)


@mx.compile
def _rotate(x1, x2, cos, sin, scale):
    return (x1 * cos - x2 * sin) * scale, (x1 * sin + x2 * cos) * scale


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


@mx.custom_function
def fast_exp(x: mx.array) -> mx.array:
    """exp(x) for x in [-88.03, 88] (callers clip), vectorized; its gradient is exact for the value computed."""
    return _mul(_exp_mantissa(x), _exp_bits(x).view(mx.float32))


@fast_exp.vjp
def _fast_exp_vjp(primals, cotangent, output):
    return _mul(cotangent, output)


@mx.compile
def _shift(scores, row_max):
    return mx.maximum(scores - row_max, _EXP_MIN)


@mx.compile
def _neg_clip(g):
    return mx.clip(-g, _EXP_MIN, _EXP_MAX)


@mx.compile
def _silu_finish(g, u, p, two_n):
    return g / (1.0 + p * two_n) * u


@mx.compile
def _sigmoid_finish(p, two_n):
    return 1.0 / (1.0 + p * two_n)


@mx.compile
def _silu_mul_grads(g, u, s, cotangent):
    gs = g * s
    return cotangent * u * (s + gs * (1.0 - s)), cotangent * gs


def _exp_neg(g: mx.array) -> tuple[mx.array, mx.array]:
    """exp(-g) as (mantissa part, 2^n part): their product, kept unmultiplied so the caller fuses it."""
    x = _neg_clip(g)
    return _exp_mantissa(x), _exp_bits(x).view(mx.float32)


@mx.custom_function
def silu_mul(g: mx.array, u: mx.array) -> mx.array:
    """silu(g) · u = g · u / (1 + exp(-g)), vectorized, with its exact derivative."""
    return _silu_finish(g, u, *_exp_neg(g))


@silu_mul.vjp
def _silu_mul_vjp(primals, cotangent, output):
    g, u = primals
    s = _sigmoid_finish(*_exp_neg(g))
    return _silu_mul_grads(g, u, s, cotangent)


# GELU-tanh (Gemma's gate, nn.gelu_approx) is x·sigmoid(z), z = 2·sqrt(2/π)·(x + 0.044715·x³): the SiLU kernel's
# structure with z in place of x.
_GELU_C, _GELU_A = 2 * math.sqrt(2 / math.pi), 0.044715


@mx.compile
def _gelu_z(g):
    return _GELU_C * (g + _GELU_A * (g * g * g))


@mx.compile
def _gelu_mul_grads(g, u, s, cotangent):
    gs = g * s
    dz = _GELU_C * (1.0 + (3 * _GELU_A) * (g * g))
    return cotangent * u * (s + gs * (1.0 - s) * dz), cotangent * gs


@mx.custom_function
def gelu_tanh_mul(g: mx.array, u: mx.array) -> mx.array:
    """gelu_approx(g) · u = g · u / (1 + exp(-z)), vectorized, with its exact derivative."""
    return _silu_finish(g, u, *_exp_neg(_gelu_z(g)))


@gelu_tanh_mul.vjp
def _gelu_tanh_mul_vjp(primals, cotangent, output):
    g, u = primals
    s = _sigmoid_finish(*_exp_neg(_gelu_z(g)))
    return _gelu_mul_grads(g, u, s, cotangent)


# Gemma 2's soft-capping cap·tanh(s/cap) = cap − 2·cap / (1 + exp(2s/cap)) with the fast exp (MLX's CPU tanh is
# scalar code, and the scores are chunk × context per head); past |2s/cap| = 88 tanh is ±1 to float32 rounding.
@mx.compile
def _cap_arg(scores, inv_half_cap):
    return mx.clip(scores * inv_half_cap, _EXP_MIN, _EXP_MAX)


@mx.compile
def _cap_finish(e, cap):
    return cap - (cap + cap) / (1.0 + e)


def soft_cap(scores: mx.array, cap: float) -> mx.array:
    """cap · tanh(scores / cap), vectorized (the fast exp's exact VJP carries the gradient)."""
    c = mx.array(cap, dtype=scores.dtype)
    return _cap_finish(fast_exp(_cap_arg(scores, 2.0 / c)), c)
