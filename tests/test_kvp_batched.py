"""KV Prediction's prompt fill batched across layers (one predictor GEMM for every base layer's keys and values, one
RoPE over the stacked keys) writes what the per-layer path writes: the auxiliary's tapped KV through each layer's
predictor map and the base's own forward with `kv`."""

from __future__ import annotations

import contextlib

import mlx.core as mx
import pytest
from test_kvp import micro_base

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)
from mlxsuite.generate import prefill
from mlxsuite.kvp.recipe import prompt_fill
from mlxsuite.models import kernels, lm
from mlxsuite.models import kv_prediction as kvm


def _pair(qk_norm: bool, kv_heads, aux_kind: str) -> kvm.KVPredictionModel:
    base = micro_base(qk_norm, kv_heads, layers=4)
    if aux_kind == "LP":
        aux = kvm.layer_pruned(base, [0, 2])
    else:  # narrower, another head size and KV head count
        args = lm.ModelArgs(
            hidden_size=48,
            num_hidden_layers=3,
            intermediate_size=64,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=61,
            qk_norm=qk_norm,
        )
        aux = lm.build(args, seed=4)
    n_aux = aux.args.num_hidden_layers
    pred = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, kvm.contiguous_layer_map(4, n_aux)))
    mx.eval(pred.parameters())  # default init: random weights and biases
    return kvm.KVPredictionModel(base, aux, pred)


def _per_layer_fill(pair: kvm.KVPredictionModel, cache: list):
    """The reference: the aux's tap, each base layer's own predictor maps, the base's forward with `kv`."""
    aux_cache = pair.auxiliary.make_cache()

    def fill(chunk):
        _, kv = pair.predict(chunk, aux_cache)
        pair.base(chunk, cache, kv=kv)
        return [c.state for c in aux_cache + cache]

    return fill


def _unbatched_fill(pair: kvm.KVPredictionModel, cache: list):
    aux_cache = pair.auxiliary.make_cache()
    return lambda chunk: pair.fill(chunk, aux_cache, cache)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("qk_norm,kv_heads,aux_kind", [(False, None, "LP"), (True, 2, "LP"), (False, 1, "C")])
def test_batched_fill_equals_the_per_layer_path(qk_norm, kv_heads, aux_kind, fused):
    pair = _pair(qk_norm, kv_heads, aux_kind)
    assert pair.predictor.stacked() is not None  # prompt_fill takes the batched path
    tokens = mx.random.randint(0, 61, (2, 37), key=mx.random.key(9))
    with contextlib.nullcontext() if fused else kernels.disabled():
        ref_cache = pair.base.make_cache()
        ref = prefill(pair.base, tokens, ref_cache, 16, _per_layer_fill(pair, ref_cache))
        runs = [prompt_fill(pair)]
        plain_cache = pair.base.make_cache()
        runs.append((plain_cache, _unbatched_fill(pair, plain_cache)))
        for cache, fill in runs:
            logits = prefill(pair.base, tokens, cache, 16, fill)
            assert mx.allclose(logits, ref, atol=1e-5, rtol=1e-5)
            for c, r in zip(cache, ref_cache):
                assert c.offset == r.offset == 37
                for a, b in zip(c.keys_and_values(), r.keys_and_values()):
                    assert mx.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_batched_predictor_equals_the_maps():
    pair = _pair(False, 2, "C")
    aux_keys = [mx.random.normal((2, 1, 5, 16), key=mx.random.key(i)) for i in range(3)]
    aux_values = [mx.random.normal((2, 1, 5, 16), key=mx.random.key(10 + i)) for i in range(3)]
    keys, values = pair.predictor(aux_keys, aux_values)
    bk, bv = pair.predictor.batched(aux_keys, aux_values, pair.predictor.stacked())
    assert bk.shape == (4, 2, 2, 5, 16) == bv.shape
    for i in range(4):
        assert mx.allclose(bk[i], keys[i], atol=1e-5) and mx.allclose(bv[i], values[i], atol=1e-5)


def test_prefill_reserves_the_prompt_in_every_cache_it_writes(monkeypatch):
    """mlx-lm's KVCache grows 256 positions at a time and copies what it holds each time (quadratic in the prompt):
    the prefill reserves the whole prompt at the first write, in the base's cache and in the auxiliary's the fill
    carries, then gives mlx-lm's growth back; logits and caches equal those of mlx-lm's growth."""
    from mlx_lm.models.cache import KVCache

    from mlxsuite import generate

    pair = _pair(False, None, "LP")
    tokens = mx.random.randint(0, 61, (1, 600))
    cache, fill = prompt_fill(pair)
    capacity = []

    def spy(chunk):
        out = fill(chunk)
        capacity.append((cache[0].keys.shape[2], fill.caches[0].keys.shape[2]))
        return out

    spy.caches = fill.caches
    logits = prefill(pair.base, tokens, cache, 100, spy)
    assert capacity[0] == (768, 768) and len(capacity) == 6  # 600 tokens reserved at once (rounded up to 256)
    assert all(c.step == KVCache.step == 256 for c in cache + fill.caches)  # growth given back for the decode
    monkeypatch.setattr(generate, "reserve", lambda cache, n: [])
    grown_cache, grown_fill = prompt_fill(pair)
    grown = prefill(pair.base, tokens, grown_cache, 100, grown_fill)
    assert mx.array_equal(logits, grown)
    for a, b in zip(cache + fill.caches, grown_cache + grown_fill.caches):
        assert a.offset == b.offset == (600 if a in cache else 599)  # the aux never sees the last token
        assert all(mx.array_equal(x, y) for x, y in zip(a.keys_and_values(), b.keys_and_values()))
