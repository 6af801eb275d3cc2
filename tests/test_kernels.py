"""The fused CPU kernels of models/kernels.py: values and gradients of every custom VJP (exp, SiLU·mul,
GELU-tanh·mul), of soft-capping, and of the RoPE and attention built on them, against MLX's own autodiff of the
plain expressions and against central finite differences of a float64 numpy reference, on random shapes (odd lengths
included). And the selection: where the README says the kernels run (the CPU, float32, a C++ compiler for
mx.compile), the decoder's forward must use them.

The kernels compute the same values with or without a compiler (mx.compile only fuses), so these tests run on any
machine; only the selection test depends on the compiler."""

import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from numpy_reference import attention64, rope64

from mlxsuite.models import kernels, lm
from mlxsuite.platform import compiler_available

RTOL = 2e-4  # float32 kernels against float64 references


def numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the float64 scalar function f at x, element by element."""
    x = x.astype(np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += h
        minus[i] -= h
        grad[i] = (f(plus) - f(minus)) / (2 * h)
    return grad


def close(a, b, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=RTOL, atol=atol)


def random_shape(rng, *dims):
    """A shape whose dims are drawn from the given (low, high) ranges; odd values come up often."""
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in dims)


# ---- exp ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_exp_values_and_gradient(seed):
    rng = np.random.default_rng(seed)
    shape = random_shape(rng, (1, 3), (1, 9), (1, 13))
    x = rng.uniform(-30, 10, shape).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    close(kernels.fast_exp(mx.array(x)), np.exp(x.astype(np.float64)), atol=0)
    # the far end of the clipped range and exactly 0 at the lowest exponent
    assert float(kernels.fast_exp(mx.array(-88.03))) < 1e-37
    close(kernels.fast_exp(mx.array([80.0, -80.0])), np.exp([80.0, -80.0]), atol=0)

    def weighted(f):
        return lambda a: (mx.array(w) * f(a)).sum()

    fused = mx.grad(weighted(kernels.fast_exp))(mx.array(x))
    close(fused, mx.grad(weighted(mx.exp))(mx.array(x)), atol=0)
    small = x.reshape(-1)[:12].reshape(-1)  # finite differences on a few elements
    ws = w.reshape(-1)[:12].astype(np.float64)
    fd = numeric_grad(lambda a: (ws * np.exp(a)).sum(), small)
    close(np.array(fused).reshape(-1)[:12], fd, atol=1e-6)


# ---- SiLU · mul --------------------------------------------------------------------------------------------------


def _silu_mul64(g, u):
    return g / (1.0 + np.exp(-g)) * u


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_silu_mul_values_and_gradients(seed):
    rng = np.random.default_rng(seed)
    shape = random_shape(rng, (1, 2), (1, 7), (1, 11))
    g = (rng.standard_normal(shape) * 4).astype(np.float32)
    u = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    close(kernels.silu_mul(mx.array(g), mx.array(u)), _silu_mul64(g.astype(np.float64), u))

    def loss(f):
        return lambda a, b: (mx.array(w) * f(a, b)).sum()

    fused = mx.grad(loss(kernels.silu_mul), argnums=(0, 1))(mx.array(g), mx.array(u))
    plain = mx.grad(loss(lambda a, b: nn.silu(a) * b), argnums=(0, 1))(mx.array(g), mx.array(u))
    for f, p in zip(fused, plain):
        close(f, p)
    g64, u64, w64 = g.astype(np.float64), u.astype(np.float64), w.astype(np.float64)
    close(fused[0], numeric_grad(lambda a: (w64 * _silu_mul64(a, u64)).sum(), g64))
    close(fused[1], numeric_grad(lambda b: (w64 * _silu_mul64(g64, b)).sum(), u64))


def test_silu_mul_saturates_without_overflow():
    g = mx.array([-200.0, -90.0, 0.0, 90.0, 200.0])
    u = mx.ones(5)
    close(kernels.silu_mul(g, u), _silu_mul64(np.array(g, np.float64), 1.0), atol=1e-30)
    gg, gu = mx.grad(lambda a, b: kernels.silu_mul(a, b).sum(), argnums=(0, 1))(g, u)
    assert np.isfinite(np.array(gg)).all() and np.isfinite(np.array(gu)).all()
    close(gg, mx.grad(lambda a: (nn.silu(a) * u).sum())(g), atol=1e-6)


# ---- GELU-tanh · mul (Gemma's gate) and soft-capping (Gemma 2) -------------------------------------------------


def _gelu_tanh_mul64(g, u):
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * u


@pytest.mark.parametrize("seed", [0, 1])
def test_gelu_tanh_mul_values_and_gradients(seed):
    rng = np.random.default_rng(seed)
    shape = random_shape(rng, (1, 2), (1, 7), (1, 11))
    g = (rng.standard_normal(shape) * 4).astype(np.float32)
    u = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    close(kernels.gelu_tanh_mul(mx.array(g), mx.array(u)), _gelu_tanh_mul64(g.astype(np.float64), u))
    fused = mx.grad(lambda a, b: (mx.array(w) * kernels.gelu_tanh_mul(a, b)).sum(), argnums=(0, 1))(
        mx.array(g), mx.array(u)
    )
    g64, u64, w64 = g.astype(np.float64), u.astype(np.float64), w.astype(np.float64)
    close(fused[0], numeric_grad(lambda a: (w64 * _gelu_tanh_mul64(a, u64)).sum(), g64))
    close(fused[1], numeric_grad(lambda b: (w64 * _gelu_tanh_mul64(g64, b)).sum(), u64))


@pytest.mark.parametrize("cap", [1.0, 50.0])
def test_soft_cap_values_and_gradient(cap):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 17)) * 2 * cap).astype(np.float32)
    w = rng.standard_normal(x.shape).astype(np.float32)
    close(kernels.soft_cap(mx.array(x), cap), cap * np.tanh(x.astype(np.float64) / cap), atol=1e-5 * cap)
    fused = mx.grad(lambda a: (mx.array(w) * kernels.soft_cap(a, cap)).sum())(mx.array(x))
    close(fused, numeric_grad(lambda a: (w.astype(np.float64) * cap * np.tanh(a / cap)).sum(), x))


# ---- RoPE --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_rope_values_and_gradient(traditional, seed):
    rng = np.random.default_rng(seed)
    B, H, n, half = random_shape(rng, (1, 2), (1, 3), (1, 9), (1, 5))
    D, start, scale = 2 * half, int(rng.integers(0, 20)), 0.3
    rope = nn.RoPE(D, traditional=traditional, base=500.0)
    k = kernels.CPUKernels(start, n)
    x = rng.standard_normal((B, H, n, D)).astype(np.float32)
    w = rng.standard_normal(x.shape).astype(np.float32)
    close(k.rope(mx.array(x), rope, scale), rope64(x.astype(np.float64), start, 500.0, traditional, scale))
    close(k.rope(mx.array(x), rope), rope(mx.array(x), offset=start))  # the plain path: mx.fast.rope

    fused = mx.grad(lambda a: (mx.array(w) * k.rope(a, rope, scale)).sum())(mx.array(x))
    plain = mx.grad(lambda a: (mx.array(w) * rope(a, offset=start) * scale).sum())(mx.array(x))
    close(fused, plain)
    w64 = w.astype(np.float64)
    close(fused, numeric_grad(lambda a: (w64 * rope64(a, start, 500.0, traditional, scale)).sum(), x))


# ---- attention ---------------------------------------------------------------------------------------------------


def plain_attention(q, k, v, offset):
    n, L = q.shape[2], k.shape[2]
    causal = mx.arange(offset, offset + n)[:, None] >= mx.arange(L)[None]
    mask = mx.where(causal, 0.0, -mx.inf)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)


@pytest.mark.parametrize("blocked", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attention_values_and_gradients(seed, blocked, monkeypatch):
    """Whole, and in blocks (a score budget of 5: KV head groups apart, one or a few query rows per block)."""
    if blocked:
        monkeypatch.setattr(kernels, "SCORES_PER_BLOCK", 5)
    rng = np.random.default_rng(seed)
    B, kv_heads, rep, n, D = random_shape(rng, (1, 2), (1, 2), (1, 3), (1, 7), (2, 5))
    offset = int(rng.integers(0, 6))  # queries continue a cache of `offset` positions
    L = offset + n
    q = (rng.standard_normal((B, kv_heads * rep, n, D)) * 2).astype(np.float32)
    k = (rng.standard_normal((B, kv_heads, L, D)) * 2).astype(np.float32)
    v = rng.standard_normal((B, kv_heads, L, D)).astype(np.float32)
    w = rng.standard_normal(q.shape).astype(np.float32)
    ker = kernels.CPUKernels(offset, n)
    args = [mx.array(a) for a in (q, k, v)]
    close(ker.attention(*args), attention64(q.astype(np.float64), k, v, offset))
    close(ker.attention(*args), plain_attention(*args, offset))

    fused = mx.grad(lambda *a: (mx.array(w) * ker.attention(*a)).sum(), argnums=(0, 1, 2))(*args)
    plain = mx.grad(lambda *a: (mx.array(w) * plain_attention(*a, offset)).sum(), argnums=(0, 1, 2))(*args)
    for f, p in zip(fused, plain):
        close(f, p)
    q64, k64, v64, w64 = (a.astype(np.float64) for a in (q, k, v, w))
    close(fused[0], numeric_grad(lambda a: (w64 * attention64(a, k64, v64, offset)).sum(), q64))
    close(fused[1], numeric_grad(lambda a: (w64 * attention64(q64, a, v64, offset)).sum(), k64))
    close(fused[2], numeric_grad(lambda a: (w64 * attention64(q64, k64, a, offset)).sum(), v64))


@pytest.mark.parametrize("softcap,window", [(None, 3), (2.0, None), (2.0, 4)])
def test_blocked_attention_equals_whole_with_softcap_and_windows(softcap, window, monkeypatch):
    """The blocks (rows × KV groups, each over the keys up to its last query) give the whole attention's values and
    gradients with soft-capping and sliding windows, queries continuing a cache, GQA."""
    rng = np.random.default_rng(7)
    offset, n, kv_heads, rep, D = 5, 6, 2, 2, 4
    q = mx.array(rng.standard_normal((1, kv_heads * rep, n, D)).astype(np.float32))
    k = mx.array(rng.standard_normal((1, kv_heads, offset + n, D)).astype(np.float32))
    v = mx.array(rng.standard_normal((1, kv_heads, offset + n, D)).astype(np.float32))
    ker = kernels.CPUKernels(offset, n)

    def run(*a):
        return ker.attention(*a, softcap=softcap, window=window)

    loss = lambda *a: (run(*a) * mx.arange(run(*a).size).reshape(run(*a).shape)).sum()  # noqa: E731
    whole, whole_grads = run(q, k, v), mx.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for budget in (1, 30, 100):
        monkeypatch.setattr(kernels, "SCORES_PER_BLOCK", budget)
        close(run(q, k, v), whole)
        for a, b in zip(mx.grad(loss, argnums=(0, 1, 2))(q, k, v), whole_grads):
            close(a, b)


# ---- the whole decoder: fused = plain, values and gradients ------------------------------------------------------


def test_decoder_gradients_fused_equal_plain():
    model = lm.build(lm.preset_args("micro", 53, num_key_value_heads=1), seed=3)
    tokens = mx.random.randint(0, 53, (2, 19), key=mx.random.key(1))

    def loss(m):
        return nn.losses.cross_entropy(m(tokens[:, :-1]), tokens[:, 1:], reduction="mean")

    grad_fn = nn.value_and_grad(model, loss)
    fused_loss, fused = grad_fn(model)
    with kernels.disabled():
        plain_loss, plain = grad_fn(model)
    close(fused_loss, plain_loss)
    from mlx.utils import tree_flatten

    for (name, a), (_, b) in zip(tree_flatten(fused), tree_flatten(plain)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-3, atol=2e-6, err_msg=name)


# ---- selection ---------------------------------------------------------------------------------------------------


def test_the_decoder_selects_the_fused_kernels_where_the_readme_says(monkeypatch):
    """The README: on the CPU in float32 the decoder's forward uses the fused kernels when mx.compile has a C++
    compiler (always on macOS; on Linux g++, c++ or clang++ on PATH). Fails, not skips, when they should run but
    the forward does not select them."""
    if mx.default_device().type != mx.DeviceType.cpu:
        pytest.skip("the fused kernels are CPU-only; this run uses a GPU")
    if sys.platform != "darwin" and not compiler_available():
        pytest.skip("no C++ compiler on PATH: the fused kernels are not used here (the plain path is what runs)")
    selected = []
    select = kernels.select

    def spy(*args):
        selected.append(select(*args))
        return selected[-1]

    monkeypatch.setattr(kernels, "select", spy)
    model = lm.build(lm.preset_args("micro", 40), seed=0)
    mx.eval(model(mx.array([[1, 2, 3]])))
    assert len(selected) == 1 and isinstance(selected[0], kernels.CPUKernels)
    with kernels.disabled():
        model(mx.array([[1, 2, 3]]))
    assert selected[-1] is None
    assert not kernels.available(model.layers, mx.bfloat16)
