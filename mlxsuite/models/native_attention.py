"""The CPU prefill's causal attention as one fused C kernel (`attention.c`), for inference on a KV cache.

MLX's CPU backend materializes attention's scores and runs each elementwise pass over them (mask, max, shift, exp)
as its own single-threaded loop: at 2,048 tokens on SmolLM2 those passes cost as much as the two GEMMs
(BENCHMARKS.md, issue 26). The kernel computes, per (KV head, block of query rows), the scores of the query heads
sharing that KV head with one GEMM, the softmax in one pass per row while they are in cache, and the weighted
values with one GEMM; the blocks run on the BLAS's thread count (each GEMM single-threaded meanwhile).

It is compiled once per machine with the system C compiler (`platform.native`) and needs the optimized BLAS loaded
into the global symbol scope (`platform.blas`), whose `cblas_sgemm` it calls. It has no gradient: `kernels`
uses it only for forwards that write a KV cache (generation, prefill, KV Prediction's fill), never in training.
Its inputs are evaluated first (it reads MLX's buffers in place); the output is a new array.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from mlxsuite.platform import blas, native

# Rows of one GEMM (a work item: the query heads sharing a KV head × a block of query rows): ~128 × 2,048 keys of
# scores is 1 MB, in L2; paired on SmolLM2 (3 query heads per KV head), 32-64 query rows beat 128 and per-head items
# (benchmarks/native_attention.py).
GEMM_ROWS = 128
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-pthread"]
_INT, _LONG, _PTR = ctypes.c_int, ctypes.c_long, ctypes.c_void_p


@functools.cache
def _kernel() -> Optional[ctypes._CFuncPtr]:
    if blas.blas_info().status != "loaded":
        return None  # its GEMMs need the optimized BLAS's cblas_sgemm in the global scope
    path = native.build("mlxsuite_attention", Path(__file__).with_name("attention.c").read_text(), _FLAGS,
                        blas.cache_dir())  # fmt: skip
    if path is None:
        return None
    try:
        fn = ctypes.CDLL(path).mlxsuite_attention
    except (OSError, AttributeError):
        return None
    fn.argtypes = [_INT] * 5 + [_PTR, _LONG, _LONG] * 3 + [_PTR] + [_LONG] * 5 + [_INT, _INT]
    fn.restype = _INT
    return fn


def available() -> bool:
    return _kernel() is not None


def _view(x: mx.array) -> tuple[np.ndarray, int, int]:
    """MLX's buffer as a numpy view (no copy; a copy only if the last axis is strided), its head and row strides
    in floats."""
    a = np.asarray(x)
    if a.strides[-1] != a.itemsize:
        a = np.ascontiguousarray(a)
    return a, a.strides[1] // a.itemsize, a.strides[2] // a.itemsize


def attention(q: mx.array, k: mx.array, v: mx.array, query_pos: int, key_pos: int, window=None) -> mx.array:
    """softmax(q kᵀ + causal mask) v, (B, H, n, D) float32 queries (already scaled) at positions query_pos.. over
    (B, kv_heads, L, D) keys/values at positions key_pos..; `window`: a query sees the last `window` positions only.
    The last key is the last query's (a prefill chunk on its cache)."""
    B, H, n, D = q.shape
    kv_heads, L = k.shape[1], k.shape[2]
    if key_pos + L != query_pos + n or H % kv_heads or {q.dtype, k.dtype, v.dtype} != {mx.float32}:
        raise ValueError(f"native attention: keys at {key_pos}..{key_pos + L}, queries at {query_pos}..{query_pos + n}")
    mx.eval(q, k, v)
    (qa, q_head, q_row), (ka, k_head, k_row), (va, v_head, v_row) = _view(q), _view(k), _view(v)
    out = np.empty((B, n, H, D), np.float32)
    kernel, threads, rows = _kernel(), blas.blas_threads() or 1, max(8, GEMM_ROWS // (H // kv_heads))
    with blas.single_threaded():
        for b in range(B):
            rc = kernel(
                H, kv_heads, n, L, D,
                qa[b].ctypes.data, q_head, q_row, ka[b].ctypes.data, k_head, k_row, va[b].ctypes.data, v_head, v_row,
                out[b].ctypes.data, D, H * D, query_pos, key_pos, window or 0, rows, threads,
            )  # fmt: skip
            if rc != 0:
                raise MemoryError("native attention: no memory for a block of scores")
    return mx.array(out).transpose(0, 2, 1, 3)
