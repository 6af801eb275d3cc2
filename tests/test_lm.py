"""The LM against mlx-lm's own model files on the same weights, and its parameter accounting."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama, qwen3
from mlx_lm.models.cache import make_prompt_cache

from mlxsuite.models import lm


def _pair(ref_module, **kw):
    args = lm.ModelArgs(
        hidden_size=64, num_hidden_layers=3, intermediate_size=160, num_attention_heads=4, vocab_size=320, **kw
    )
    ours = lm.build(args, seed=1)
    ref_args = ref_module.ModelArgs.from_dict({**args.to_dict(), "model_type": ref_module.__name__.split(".")[-1]})
    ref = ref_module.Model(ref_args)
    ref.load_weights(list(tree_flatten(ours.parameters())), strict=True)
    mx.eval(ref.parameters())
    return ours, ref


def _close(a, b):
    a, b = np.array(a), np.array(b)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize(
    "ref_module,kw",
    [
        (llama, dict(num_key_value_heads=4, tie_word_embeddings=True)),
        (llama, dict(num_key_value_heads=2, tie_word_embeddings=False)),
        (llama, dict(num_key_value_heads=1, attention_bias=True, rope_theta=500000.0)),
        (qwen3, dict(num_key_value_heads=2, qk_norm=True, head_dim=32, tie_word_embeddings=True)),
    ],
)
def test_logits_match_mlx_lm_full_and_cached(ref_module, kw):
    ours, ref = _pair(ref_module, **kw)
    tokens = mx.array(np.random.default_rng(0).integers(0, 320, size=(2, 23)))
    _close(ours(tokens), ref(tokens))

    # cached decoding: prefill 17 tokens, then one token at a time
    c_ours, c_ref = ours.make_cache(), make_prompt_cache(ref)
    _close(ours(tokens[:, :17], cache=c_ours), ref(tokens[:, :17], cache=c_ref))
    for t in range(17, 23):
        _close(ours(tokens[:, t : t + 1], cache=c_ours), ref(tokens[:, t : t + 1], cache=c_ref))
    # and cached logits equal the full forward pass at those positions
    full = ours(tokens)
    c = ours.make_cache()
    ours(tokens[:, :20], cache=c)
    _close(ours(tokens[:, 20:21], cache=c)[:, 0], full[:, 20])


@pytest.mark.parametrize(
    "kw", [dict(), dict(num_key_value_heads=2, tie_word_embeddings=False), dict(qk_norm=True, qkv_bias=True)]
)
def test_parameter_counts_match_the_module(kw):
    args = lm.ModelArgs(
        hidden_size=64, num_hidden_layers=3, intermediate_size=160, num_attention_heads=4, vocab_size=320, **kw
    )
    model = lm.Model(args)
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert total == args.n_params
    assert args.n_vocab_params == 320 * 64
    assert args.n_nonvocab_params == total - 320 * 64 * (1 if args.tie_word_embeddings else 2)


def test_vocab_paper_family_nonvocab_counts():
    """The paper's N_nv labels (notes §1): L·(4d² + 3·d·d_ff + 2d) + d."""
    expected = {
        "vocab-33m": 33_563_136,
        "vocab-85m": 84_953_856,
        "vocab-151m": 151_020_288,
        "vocab-302m": 302_027_776,
        "vocab-631m": 631_174_656,
        "vocab-1130m": 1_130_457_088,
        "vocab-2870m": 2_870_633_600,
    }
    for name, n in expected.items():
        assert lm.preset_args(name, 32000).n_nonvocab_params == n, name


def test_init_follows_the_paper_scales():
    args = lm.preset_args("small", 2048)
    model = lm.build(args, seed=0)
    std = float(np.array(model.model.layers[0].self_attn.q_proj.weight).std())
    out_std = float(np.array(model.model.layers[0].mlp.down_proj.weight).std())
    assert abs(std - (2 / (5 * 256)) ** 0.5) < 0.05 * std
    assert abs(out_std - 1 / 256**0.5 / 6) < 0.05 * out_std


def test_greedy_generation_matches_mlx_lm_generate_step():
    """The one decode loop (prefill in chunks, then one token at a time, the next step scheduled before a token is
    handed out) gives mlx-lm's own greedy tokens on the same weights."""
    from mlx_lm.generate import generate_step as mlx_lm_generate_step

    from mlxsuite.generate import generate_tokens

    ours, ref = _pair(llama, num_key_value_heads=2, tie_word_embeddings=False)
    prompt = mx.array(np.random.default_rng(3).integers(0, 320, size=(37,)))
    want = [int(t) for t, _ in mlx_lm_generate_step(prompt, ref, max_tokens=12, prefill_step_size=8)]
    assert list(generate_tokens(ours, prompt, 12, prefill_step=8)) == want
    assert list(generate_tokens(ours, prompt, 1)) == want[:1]
    assert list(generate_tokens(ours, prompt, 0)) == []
