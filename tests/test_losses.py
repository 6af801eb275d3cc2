"""Every loss and metric a paper defines, against a hand computation in float64 numpy on a tiny case: KV Prediction's
total loss and each of its terms, its prefill cache; MoMa's per-modality CE, router BCE, the auxiliary routers'
inference threshold and mixture-of-depths' top-k; the vocabulary paper's L_u and unigram table. Each reference is
written from the paper's equation (notes in shared/papers), so a dropped term or a flipped sign fails here."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from numpy_reference import (
    cross_entropy64,
    decoder64,
    key_norm64,
    logsumexp64,
    predictor64,
    rmsnorm64,
    rope64,
    silu64,
    weights64,
)

from mlxsuite.kvp.recipe import kvp_loss
from mlxsuite.models import kv_prediction as kvm
from mlxsuite.models import lm
from mlxsuite.models import moma as mm
from mlxsuite.models import moma_experts as me
from mlxsuite.moma import train as mtrain

# ---- KV Prediction (Horton et al. 2024, Eq. 1–3; notes kv-prediction.md §3) ---------------------------------------


def kvp_pair(seed=0):
    """A GQA base with k-norm (non-trivial weights), a narrower auxiliary with another head size, and a predictor
    with its default (random, non-zero bias) init: every map in the loss is non-trivial."""
    base = lm.build(
        lm.ModelArgs(
            hidden_size=32,
            num_hidden_layers=3,
            intermediate_size=40,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=29,
            qk_norm=True,
        ),
        seed=seed,
    )
    for i, layer in enumerate(base.layers):
        layer.self_attn.k_norm.weight = 1.0 + 0.3 * mx.random.normal((8,), key=mx.random.key(100 + i))
    aux = lm.build(
        lm.ModelArgs(
            hidden_size=24,
            num_hidden_layers=2,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=6,
            vocab_size=29,
        ),
        seed=seed + 1,
    )
    mx.random.seed(seed + 2)
    predictor = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, kvm.contiguous_layer_map(3, 2)))
    mx.eval(base.parameters(), predictor.parameters())
    assert all(float(mx.abs(t.bias).sum()) > 0 for t in predictor.key_transforms + predictor.value_transforms)
    return kvm.KVPredictionModel(base, aux, predictor)


def kvp_reference(pair, batch, lambda_kv, lambda_aux, z_loss):
    """The paper's loss by hand: CE of the base over the predicted KV + λ_A·CE of the aux + λ_C·Σ_layers
    (mean|k-norm(K̂_i) − k-norm(K_i)| + mean|V̂_i − V_i|) (+ z-loss on both logits)."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    aux_tap: list = []
    aux_logits = decoder64(pair.auxiliary, inputs, tap=aux_tap)
    pk, pv = predictor64(pair.predictor, [k for k, _ in aux_tap], [v for _, v in aux_tap])
    base_logits = decoder64(pair.base, inputs, kv=list(zip(pk, pv)))
    base_tap: list = []
    decoder64(pair.base, inputs, tap=base_tap)
    w, args = weights64(pair.base), pair.base.args
    k_l1 = sum(
        np.abs(key_norm64(w, args, i, a) - key_norm64(w, args, i, b)).mean()
        for i, (a, (b, _)) in enumerate(zip(pk, base_tap))
    )
    v_l1 = sum(np.abs(a - b).mean() for a, (_, b) in zip(pv, base_tap))
    terms = {
        "base_ce": cross_entropy64(base_logits, targets),
        "aux_ce": cross_entropy64(aux_logits, targets),
        "k_l1_sum": k_l1,
        "v_l1_sum": v_l1,
    }
    z = np.mean(logsumexp64(base_logits) ** 2) + np.mean(logsumexp64(aux_logits) ** 2)
    total = terms["base_ce"] + lambda_aux * terms["aux_ce"] + lambda_kv * (k_l1 + v_l1) + z_loss * z
    return total, terms


@pytest.mark.parametrize("lambda_kv, lambda_aux, z_loss", [(0.37, 0.6, 0.0), (1.0, 1.0, 1e-3), (0.0, 0.25, 0.0)])
def test_kvp_loss_and_every_term_by_hand(lambda_kv, lambda_aux, z_loss):
    pair = kvp_pair()
    batch = np.random.default_rng(1).integers(0, 29, (2, 12)).astype(np.int32)
    total, terms = kvp_loss(lambda_kv, lambda_aux, z_loss)(pair, mx.array(batch))
    ref_total, ref_terms = kvp_reference(pair, batch, lambda_kv, lambda_aux, z_loss)
    assert float(total) == pytest.approx(ref_total, rel=1e-4)
    for name in ("base_ce", "aux_ce"):
        assert float(terms[name]) == pytest.approx(ref_terms[name], rel=1e-4), name
    if lambda_kv > 0:  # with λ_C = 0 the consistency terms are not computed (reported as 0)
        for name in ("k_l1_sum", "v_l1_sum"):
            assert float(terms[name]) == pytest.approx(ref_terms[name], rel=1e-4), name
    # every term moves the total: the KV terms are not negligible beside the CEs on this case
    assert min(ref_terms["k_l1_sum"], ref_terms["v_l1_sum"]) > 0.05 * ref_terms["base_ce"]


def test_kvp_loss_gradient_reaches_predictor_and_aux_only():
    """The base is frozen in training, and its true KV are targets without gradient (stop-gradient)."""
    pair = kvp_pair()
    pair.base.freeze()
    batch = mx.array(np.random.default_rng(2).integers(0, 29, (2, 9)).astype(np.int32))
    loss = kvp_loss(0.5)
    grads = nn.value_and_grad(pair, lambda m, b: loss(m, b)[0])(pair, batch)[1]
    from mlx.utils import tree_flatten

    names = [k for k, _ in tree_flatten(grads)]
    assert names and not any(k.startswith("base.") for k in names)
    assert any(k.startswith("predictor.value_transforms") for k in names)
    assert any(k.startswith("auxiliary.") for k in names)


def test_kvp_prefill_writes_the_predicted_kv_into_the_base_cache():
    """The inference path (`fill`, two chunks): the base's cache holds the predicted keys after the base's k-norm
    and RoPE at their absolute positions, and the predicted values — as computed by hand."""
    pair = kvp_pair(seed=3)
    tokens = np.random.default_rng(4).integers(0, 29, (2, 11)).astype(np.int32)
    aux_cache, base_cache = pair.auxiliary.make_cache(), pair.base.make_cache()
    for chunk in (tokens[:, :6], tokens[:, 6:]):
        mx.eval(pair.fill(mx.array(chunk), aux_cache, base_cache))
    tap: list = []
    decoder64(pair.auxiliary, tokens, tap=tap)
    pk, pv = predictor64(pair.predictor, [k for k, _ in tap], [v for _, v in tap])
    w, args = weights64(pair.base), pair.base.args
    for i, cache in enumerate(base_cache):
        keys, values = (np.array(a, np.float64) for a in cache.keys_and_values())
        expect_keys = rope64(key_norm64(w, args, i, pk[i]), 0, args.rope_theta)
        np.testing.assert_allclose(keys, expect_keys, rtol=1e-4, atol=1e-5, err_msg=f"keys {i}")
        np.testing.assert_allclose(values, pv[i], rtol=1e-4, atol=1e-5, err_msg=f"values {i}")


# ---- MoMa (Lin et al. 2024, §2–3; notes moma.md) -----------------------------------------------------------------


def test_per_modality_ce_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 7, 13)).astype(np.float32) * 2
    targets = rng.integers(0, 13, (2, 7)).astype(np.int32)
    targets[0, :3] = [8, 9, 10]  # image ids are [8, 12): some of each
    targets[1, 0] = 3
    total, text, image = mtrain.per_modality_ce(mx.array(logits), mx.array(targets), 8, 12)
    z = logits.astype(np.float64)
    ce = -(np.take_along_axis(z, targets[..., None], -1)[..., 0] - np.log(np.exp(z).sum(-1)))
    img = (targets >= 8) & (targets < 12)
    assert 0 < img.sum() < img.size
    assert float(total) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(text) == pytest.approx(ce[~img].mean(), rel=1e-5)
    assert float(image) == pytest.approx(ce[img].mean(), rel=1e-5)


def tiny_moma(**kw):
    args = dict(
        hidden_size=16,
        num_hidden_layers=2,
        intermediate_size=24,
        num_attention_heads=2,
        vocab_size=30,
        image_start=20,
        image_end=28,
        ffn="moma",
        text_experts=2,
        image_experts=3,
    )
    return mm.build(mm.ModelArgs(**{**args, **kw}), seed=1)


def moma_tokens(seed, B=2, L=12, n_img=4):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, 20, (B, L))
    for b in range(B):
        toks[b, rng.choice(L, n_img, replace=False)] = rng.integers(20, 28, n_img)
    return toks.astype(np.int32)


def test_router_bce_by_hand():
    """Stage 2: each auxiliary router's mean BCE against the batch-level selections over the tokens it decides
    for, averaged over routers; accuracy counts sigmoid(z) > 0.5 against the selections."""
    model = tiny_moma(mod=True)
    toks = moma_tokens(0, L=13)
    batch = (mx.array(toks), mx.arange(8))
    collect: list = []
    model(mx.array(toks[:, :-1]), n_image=8, mode="train", collect=collect)
    losses, correct, count = [], 0.0, 0.0
    for logits, target, valid in collect:
        z, t, v = (np.array(a, np.float64) for a in (logits, target, valid))
        bce = -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z))))
        losses.append((bce * v[:, None]).sum() / (v.sum() * z.shape[1]))
        correct += (((z > 0) == (t > 0.5)) * v[:, None]).sum()
        count += v.sum() * z.shape[1]
    assert len(collect) == 1 + 2 * 2  # one MoD router (layer 0) and a text and an image router per layer
    loss, aux = mtrain.router_loss(model, batch)
    assert float(loss) == pytest.approx(np.mean(losses), rel=1e-5)
    assert float(aux["router_acc"]) == pytest.approx(correct / count, rel=1e-6)


class FixedLogits(nn.Module):
    """An auxiliary router that answers the given logits whatever its input."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self._logits = mx.array(logits.astype(np.float32))

    def __call__(self, x):
        return self._logits


def logit(p):
    return np.log(p / (1 - p))


def test_inference_routes_a_token_iff_its_auxiliary_score_is_above_one_half():
    """Causal inference: a token goes to an expert of its group iff that expert's auxiliary score is > 0.5 (0.49:
    no, 0.51: yes), gated by the main router's sigmoid; a MoD layer processes a token iff its score is > 0.5."""
    model = tiny_moma(num_hidden_layers=1, mod=True)
    layer = model.layers[0]
    toks = np.array([[1, 21, 2, 22, 3, 23]], np.int32)
    is_image = (toks[0] >= 20) & (toks[0] < 28)
    rng = np.random.default_rng(5)
    mod_scores = np.array([0.51, 0.49, 0.51, 0.51, 0.49, 0.51])
    expert_scores = [rng.choice([0.49, 0.51], (6, e)) for e in (2, 3)]
    layer.mod_aux_router = FixedLogits(logit(mod_scores)[:, None])
    layer.moe.aux_routers = [FixedLogits(logit(s)) for s in expert_scores]
    routes: list = []
    out = model.model(mx.array(toks), mode="infer", routes=routes)
    mod_sel = mod_scores > 0.5
    assert np.array(routes[0])[:, 0].tolist() == mod_sel.tolist()
    for g, (scores, member) in enumerate(zip(expert_scores, (~is_image, is_image))):
        expect = (scores > 0.5) & member[:, None] & mod_sel[:, None]
        assert {0.49, 0.51} <= set(scores[member & mod_sel].ravel())  # both sides of 0.5 on routed tokens
        assert np.array(routes[1 + g]).astype(bool).tolist() == expect.tolist()
    # the layer's output by hand: x + r·(block(x) − x) on processed tokens, x elsewhere
    w = weights64(model)
    x = w["model.embed_tokens.weight"][toks[0]]
    skipped = np.array(out, np.float64)[0, ~mod_sel]
    np.testing.assert_allclose(skipped, rmsnorm64(x, w["model.norm.weight"], 1e-5)[~mod_sel], rtol=1e-4, atol=1e-5)


def test_expert_outputs_in_inference_are_gated_by_the_main_router():
    """SparseFFN.infer by hand: y = Σ_{e: aux score > 0.5} sigmoid(x·W_g)_e · SwiGLU_e(x), per modality group."""
    model = tiny_moma(num_hidden_layers=1)
    ffn = model.layers[0].moe
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    is_image = np.array([False, True, False, True, True])
    scores = [rng.choice([0.49, 0.51], (5, e)) for e in (2, 3)]
    ffn.aux_routers = [FixedLogits(logit(s)) for s in scores]
    ctx = me.Context("infer", mx.array(is_image))
    y = ffn.infer(mx.array(x), ffn.members(mx.array(is_image), None), ctx)
    w = weights64(ffn)
    x64 = x.astype(np.float64)
    expect = np.zeros_like(x64)
    e0 = 0
    for g, member in enumerate((~is_image, is_image)):
        gate = 1 / (1 + np.exp(-(x64 @ w[f"routers.{g}.weight"].T)))
        for j in range(scores[g].shape[1]):
            e = e0 + j
            ffn_out = (silu64(x64 @ w["gate_proj"][e]) * (x64 @ w["up_proj"][e])) @ w["down_proj"][e]
            on = (scores[g][:, j] > 0.5) & member
            expect += (on * gate[:, j])[:, None] * ffn_out
        e0 += scores[g].shape[1]
    np.testing.assert_allclose(np.array(y), expect, rtol=1e-4, atol=1e-6)


def test_mixture_of_depths_keeps_the_top_k_tokens_of_the_batch():
    """Training: a MoD layer processes the top c_d·N tokens of the batch by its router's sigmoid(x·w)."""
    model = tiny_moma(mod=True, mod_capacity=0.25)
    toks = moma_tokens(3, B=2, L=10, n_img=4)
    routes: list = []
    model.model(mx.array(toks), mode="train", n_image=8, routes=routes)
    w = weights64(model)
    x = w["model.embed_tokens.weight"][toks.reshape(-1)]  # layer 0's input
    r = x @ w["model.layers.0.mod_router.weight"][0]
    k = round(20 * 0.25)
    expect = np.zeros(20, bool)
    expect[np.argsort(-r)[:k]] = True
    assert np.array(routes[0])[:, 0].astype(bool).tolist() == expect.tolist()


# ---- the vocabulary paper (Tao et al. 2024, Eq. 4; notes vocab-scaling.md §2) -------------------------------------


def test_unigram_table_and_lu_by_hand():
    """p_uni = counts / total with unseen ids counted once; L_u = mean(−log p(w|ctx) + log p_uni(w))."""
    from mlxsuite.data.tokenizer import unigram_probs
    from mlxsuite.train.evaluate import evaluate_lm

    stream = np.array([0, 1, 1, 3, 3, 3, 5, 1, 0, 3])
    counts = np.array([2, 3, 1, 4, 1, 1, 1], np.float64)  # ids 2, 4, 6 unseen: 1 each
    p_uni = unigram_probs(stream, 7)
    np.testing.assert_allclose(p_uni, counts / counts.sum(), rtol=1e-12)

    class Bigram(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = mx.array(np.random.default_rng(0).standard_normal((7, 7)).astype(np.float32))

        def __call__(self, x):
            return self.table[x]

    model = Bigram()
    windows = np.random.default_rng(1).integers(0, 7, (5, 9)).astype(np.int32)
    got = evaluate_lm(model, windows, unigram=p_uni, batch_size=2)
    table = np.array(model.table, np.float64)
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    nll = -logp[windows[:, :-1], windows[:, 1:]]
    assert got["ce"] == pytest.approx(nll.mean(), rel=1e-5)
    assert got["lu"] == pytest.approx((nll + np.log(p_uni[windows[:, 1:]])).mean(), rel=1e-5)


def test_tokens_per_character_by_hand():
    """f(V) = a·ln²V + b·lnV + c with V clamped at 200K (reference code constants)."""
    from mlxsuite.vocab.scaling.laws import PAPER_COMPRESSION as f

    for v in (1000, 32000, 150_000, 400_000):
        lnv = np.log(min(v, 200_000))
        assert float(f(v)) == pytest.approx(0.00639222 * lnv**2 - 0.15811069 * lnv + 1.20470122, rel=1e-12)
