"""The native CPU attention (models/attention.c, called by models/native_attention.py) against a float64 numpy
reference: GQA groups of 1-4 heads, query rows across several blocks, a cache before the chunk, keys starting after
position 0 and sliding windows (a rotating cache), batches, keys/values as strided views of a larger cache buffer,
one and two threads. And where it runs: the forwards that write a KV cache, never a forward under a gradient.

It needs a C compiler and the optimized BLAS (`mlxsuite doctor`); without them these tests skip, except the one that
says it must be there on a Linux machine that has both."""

import shutil
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from numpy_reference import attention64

from mlxsuite.generate import prefill
from mlxsuite.models import kernels, lm, native_attention
from mlxsuite.platform import blas

needs_native = pytest.mark.skipif(
    not native_attention.available(), reason="no C compiler or no optimized BLAS: MLX's ops run the attention"
)


def test_native_attention_is_there_where_it_should_be():
    if sys.platform != "linux" or mx.default_device().type != mx.DeviceType.cpu:
        pytest.skip("the native attention is for MLX's CPU backend on Linux")
    if blas.blas_info().status != "loaded" or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no optimized BLAS or no C compiler here")
    assert native_attention.available()


def run_case(rng, threads, monkeypatch, window=False, spread=2.0):
    monkeypatch.setattr(blas, "blas_threads", lambda: threads)
    monkeypatch.setattr(native_attention, "GEMM_ROWS", int(rng.choice([8, 16, 128])))
    B, kv_heads, rep = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 5))
    n, D = int(rng.integers(1, 40)), int(rng.choice([4, 16, 64, 80]))
    query_pos = int(rng.integers(0, 60))
    key_pos = int(rng.integers(0, query_pos + 1)) if window else 0
    w = int(rng.integers(1, query_pos + n - key_pos + 2)) if window else None
    L, spare = query_pos + n - key_pos, int(rng.integers(0, 9))
    q = (rng.standard_normal((B, kv_heads * rep, n, D)) * spread).astype(np.float32)
    k_buf = (rng.standard_normal((B, kv_heads, L + spare, D)) * 2).astype(np.float32)
    v_buf = rng.standard_normal((B, kv_heads, L + spare, D)).astype(np.float32)
    k, v = mx.array(k_buf)[:, :, :L], mx.array(v_buf)[:, :, :L]  # a KVCache's view of its buffer
    got = native_attention.attention(mx.array(q), k, v, query_pos, key_pos, w)
    want = attention64(q.astype(np.float64), k_buf[:, :, :L], v_buf[:, :, :L], query_pos, 1.0, key_pos, w)
    np.testing.assert_allclose(np.array(got), want, rtol=2e-4, atol=2e-5)


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_native_attention_equals_the_reference(seed, threads, monkeypatch):
    run_case(np.random.default_rng(seed), threads, monkeypatch)


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_native_attention_with_sliding_windows(seed, threads, monkeypatch):
    run_case(np.random.default_rng(100 + seed), threads, monkeypatch, window=True)


@needs_native
def test_native_attention_with_scores_far_from_zero(monkeypatch):
    """Scores in the hundreds: exp of an unshifted score would overflow float32."""
    for seed in range(3):
        run_case(np.random.default_rng(200 + seed), 2, monkeypatch, spread=40.0)


@needs_native
def test_native_attention_refuses_keys_that_do_not_end_at_the_last_query():
    q, kv = mx.zeros((1, 2, 3, 4)), mx.zeros((1, 1, 5, 4))
    with pytest.raises(ValueError):
        native_attention.attention(q, kv, kv, 3, 0)  # keys up to 4, queries up to 5


def test_single_threaded_blas_restores_the_thread_count():
    setter = next((f for f in blas._SET_THREADS if blas._HANDLE is not None and hasattr(blas._HANDLE, f)), None)
    if setter is None or blas.blas_threads() is None:
        pytest.skip("the BLAS here does not set thread counts")
    before = blas.blas_threads()
    getattr(blas._HANDLE, setter)(2)
    try:
        with blas.single_threaded():
            assert blas.blas_threads() == 1
        assert blas.blas_threads() == 2
    finally:
        getattr(blas._HANDLE, setter)(before)


@needs_native
def test_a_cached_forward_runs_it_and_a_gradient_never_does(monkeypatch):
    """Prefill on a KV cache (chunks of 5 over 13 tokens: a cache before each chunk) calls the native attention in
    every layer and gives MLX's ops' logits; a training forward (no cache) under a gradient never calls it."""
    calls = []
    native = native_attention.attention

    def spy(*args, **kw):
        calls.append(args[3:5])
        return native(*args, **kw)

    monkeypatch.setattr(native_attention, "attention", spy)
    model = lm.build(lm.preset_args("micro", 61, num_key_value_heads=1), seed=2)
    tokens = mx.random.randint(0, 61, (1, 13), key=mx.random.key(4))
    got = prefill(model, tokens, model.make_cache(), prefill_step=5)
    assert sorted(set(calls)) == [(0, 0), (5, 0), (10, 0)] and len(calls) == 3 * len(model.layers)  # 0..4, 5..9, 10..11
    with kernels.disabled(native_only=True):
        want = prefill(model, tokens, model.make_cache(), prefill_step=5)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-4)

    calls.clear()
    loss = lambda m: nn.losses.cross_entropy(m(tokens[:, :-1]), tokens[:, 1:], reduction="mean")  # noqa: E731
    mx.eval(nn.value_and_grad(model, loss)(model))
    assert calls == []
