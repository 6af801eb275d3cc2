"""MoMa's model: expert choice, dispatch against dense references, modality routing, mixture-of-depths, causality of
the inference path and its KV cache, FLOPs matching, upcycling, noise-free router supervision."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)
from mlxsuite.generate import generate_tokens
from mlxsuite.models import flops, lm
from mlxsuite.models import moma as mm
from mlxsuite.models import moma_experts as me
from mlxsuite.moma import data as mdata
from mlxsuite.moma import spec as mspec
from mlxsuite.moma import train as mtrain
from mlxsuite.platform.errors import UserError


def tiny_args(**kw):
    base = dict(
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=48,
        num_attention_heads=2,
        vocab_size=60,
        image_start=40,
        image_end=58,
        ffn="moma",
        text_experts=2,
        image_experts=2,
    )
    base.update(kw)
    return mm.ModelArgs(**base)


def mixed_tokens(rng, B, L, n_img):
    """Token rows with exactly n_img image codes (ids 40..57) per row at random positions; text ids 0..39."""
    toks = rng.integers(0, 40, (B, L))
    for b in range(B):
        pos = rng.choice(L, n_img, replace=False)
        toks[b, pos] = rng.integers(40, 58, n_img)
    return mx.array(toks.astype(np.int32))


# ---- expert choice ------------------------------------------------------------------------------------------------


def test_expert_choice_capacity_and_gates_hand_made():
    scores = mx.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.95], [0.6, 0.3], [0.99, 0.2], [0.5, 0.6]])
    member = mx.array([True, True, True, True, False, True])  # token 4 is the other modality
    idx, gates = me.expert_choice(scores, member, k=2)
    assert idx.shape == (2, 2)
    assert sorted(np.array(idx[0]).tolist()) == [0, 1]  # 0.99 of token 4 is not a member
    assert sorted(np.array(idx[1]).tolist()) == [1, 2]
    sel = np.array(me.selection_mask(idx, 6))
    assert sel.sum(0).tolist() == [2, 2]  # exactly k per expert
    assert sel[1].tolist() == [1, 1]  # a token may be picked by several experts ...
    assert sel[3].tolist() == [0, 0] and sel[5].tolist() == [0, 0]  # ... or by none
    # sigmoid gates, not renormalized: token 1 keeps 0.8 and 0.7
    g = {(e, int(t)): float(v) for e in range(2) for t, v in zip(np.array(idx[e]), np.array(gates[e]))}
    assert g[(0, 1)] == pytest.approx(0.8) and g[(1, 1)] == pytest.approx(0.7) and g[(1, 2)] == pytest.approx(0.95)
    # fewer members than capacity: the filler slots get gate 0
    idx, gates = me.expert_choice(scores, mx.array([True] + [False] * 5), k=2)
    assert sorted(np.array(gates[0]).tolist()) == pytest.approx([0.0, 0.9])
    assert me.capacity(96, 4, 1.0) == 24 and me.capacity(10, 8, 1.0) == 1


def test_dispatch_matches_dense_reference_values_and_gradients():
    mx.random.seed(0)
    N, D, H, E, k = 24, 8, 12, 3, 8
    ffn = me.SparseFFN(D, H, [E], by_modality=False)
    ffn.update(
        dict(
            gate_proj=0.3 * mx.random.normal((E, D, H)),
            up_proj=0.3 * mx.random.normal((E, D, H)),
            down_proj=0.3 * mx.random.normal((E, H, D)),
        )
    )
    x = mx.random.normal((N, D))
    member = mx.array(np.arange(N) % 4 != 0)

    def fast(params, x):
        ffn.update(params)
        scores = mx.sigmoid(ffn.routers[0](x))
        idx, gates = me.expert_choice(scores, member, k)
        return ffn.dispatch(x, idx, gates)

    def reference(params, x):
        ffn.update(params)
        scores = mx.sigmoid(ffn.routers[0](x))
        idx, _ = me.expert_choice(scores, member, k)
        sel = mx.stop_gradient(me.selection_mask(idx, N))  # (N, E)
        out = mx.zeros_like(x)
        for e in range(E):  # every expert on every token, masked: no gather, no scatter
            h = nn.silu(x @ ffn.gate_proj[e]) * (x @ ffn.up_proj[e]) @ ffn.down_proj[e]
            out = out + (sel[:, e] * scores[:, e])[:, None] * h
        return out

    params = ffn.trainable_parameters()
    y1, y2 = fast(params, x), reference(params, x)
    assert mx.allclose(y1, y2, atol=1e-5).item()
    cot = mx.random.normal(y1.shape)
    g1 = mx.grad(lambda p, x: (fast(p, x) * cot).sum(), argnums=(0, 1))(params, x)
    g2 = mx.grad(lambda p, x: (reference(p, x) * cot).sum(), argnums=(0, 1))(params, x)
    for (n, a), (_, b) in zip(tree_flatten(g1[0]), tree_flatten(g2[0])):
        assert mx.allclose(a, b, atol=1e-4).item(), n
    assert mx.allclose(g1[1], g2[1], atol=1e-4).item()
    assert float(mx.abs(g1[0]["routers"][0]["weight"]).sum()) > 0  # the router learns through the gates


@pytest.mark.parametrize("counts", [(16, 16), (20, 12)])
def test_grouped_dispatch_matches_a_per_group_dense_reference(counts):
    """Text and image groups: with equal capacities all experts run in one batched matmul, otherwise group by group;
    both give the values and gradients of a masked dense computation, expert by expert, on the group's tokens."""
    mx.random.seed(6)
    W = lambda *s: 0.3 * mx.random.normal(s)  # noqa: E731
    ffn = me.SparseFFN(32, 48, [2, 2], by_modality=True)
    ffn.update(dict(gate_proj=W(4, 32, 48), up_proj=W(4, 32, 48), down_proj=W(4, 48, 32)))
    n_txt, n_img = counts
    x = mx.random.normal((32, 32))
    is_image = mx.array(np.random.default_rng(1).permutation([False] * n_txt + [True] * n_img))
    ctx = me.Context("train", is_image, n_img)

    def fast(p):
        ffn.update(p)
        return ffn(x, is_image, None, [n_txt, n_img], ctx)

    def reference(p):
        ffn.update(p)
        out = mx.zeros_like(x)
        for g, (member, n) in enumerate(zip([mx.logical_not(is_image), is_image], counts)):
            scores = mx.sigmoid(ffn.routers[g](x))
            idx, _ = me.expert_choice(scores, member, n // 2)
            sel = mx.stop_gradient(me.selection_mask(idx, 32))
            for j in range(2):
                e = 2 * g + j
                h = nn.silu(x @ ffn.gate_proj[e]) * (x @ ffn.up_proj[e]) @ ffn.down_proj[e]
                out = out + (sel[:, j] * scores[:, j])[:, None] * h
        return out

    p = ffn.trainable_parameters()
    assert mx.allclose(fast(p), reference(p), atol=1e-5).item()
    g1 = mx.grad(lambda p: fast(p).square().sum())(p)
    g2 = mx.grad(lambda p: reference(p).square().sum())(p)
    for (n, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2)):
        assert mx.allclose(a, b, atol=1e-4).item(), n


@pytest.mark.parametrize("mod", [False, True])
def test_modality_routing_never_crosses_groups(mod):
    mx.random.seed(1)
    args = tiny_args(num_hidden_layers=3 if mod else 2, mod=mod)
    model = mm.build(args)
    toks = mixed_tokens(np.random.default_rng(0), 4, 16, 6)
    is_img = np.array(model.is_image(toks)).reshape(-1)
    for mode in ("train", "infer"):
        if mode == "infer":  # random auxiliary routers route somewhere
            for m in model.aux_modules():
                m.update({"fc2": {"weight": 3 * mx.random.normal(m.fc2.weight.shape)}})
        routes: list = []
        model(toks, n_image=int(is_img.sum()), mode=mode, routes=routes)
        groups = [r for r in routes if r.shape[1] == 2]  # (tokens, experts) of the text and image groups
        assert len(groups) == 2 * args.num_hidden_layers
        for li in range(args.num_hidden_layers):
            text_sel, img_sel = np.array(groups[2 * li]), np.array(groups[2 * li + 1])
            if text_sel.shape[0] == is_img.size:
                img_mask = is_img
            else:  # MoD training: the FFN saw the layer's selected tokens only; check per-token counts instead
                img_mask = None
            if img_mask is not None:
                assert text_sel[img_mask].sum() == 0 and img_sel[~img_mask].sum() == 0
            assert text_sel.sum() > 0 and img_sel.sum() > 0
            if mode == "train" and not (mod and li % 2 == 0):
                assert img_sel.sum(0).tolist() == [12, 12] and text_sel.sum(0).tolist() == [20, 20]  # k_e = n_M / E_M


def test_mod_training_respects_modality_on_selected_tokens():
    """Under MoD the FFN runs on the layer's selected tokens: its image group still only takes image tokens."""
    mx.random.seed(2)
    args = tiny_args(num_hidden_layers=1, mod=True)
    model = mm.build(args)
    toks = mixed_tokens(np.random.default_rng(1), 4, 16, 8)
    routes: list = []
    model(toks, n_image=32, mode="train", routes=routes)
    sel = np.array(routes[0])[:, 0] > 0  # MoD selection over all 64 tokens
    assert sel.sum() == 16
    is_img = np.array(model.is_image(toks)).reshape(-1)[sel]
    # routes[1], routes[2]: text and image groups over the selected tokens, in selection order (unknown); use counts
    text_sel, img_sel = np.array(routes[1]), np.array(routes[2])
    assert (text_sel.sum(1) > 0).sum() <= (~is_img).sum() and (img_sel.sum(1) > 0).sum() <= is_img.sum()


def test_mod_gathered_attention_matches_masked_full_attention():
    """Training-mode MoD runs attention on the gathered selected tokens; it equals full attention with the
    unselected keys masked out, read at the selected positions."""
    mx.random.seed(5)
    args = tiny_args(num_attention_heads=4, num_key_value_heads=2)
    attn = lm.Attention(args)
    B, L, D = 3, 10, args.hidden_size
    x = mx.random.normal((B, L, D))
    sel_idx = mx.array(np.sort(np.random.default_rng(0).choice(B * L, 9, replace=False)).astype(np.uint32))
    sel = np.zeros(B * L, bool)
    sel[np.array(sel_idx)] = True
    allowed = np.tril(np.ones((L, L), bool))[None] & sel.reshape(B, L)[:, None, :]
    full = attn(x, mx.array(np.where(allowed, 0.0, -1e9)[:, None].astype(np.float32))).reshape(B * L, D)[sel_idx]
    gathered = mm.attend_selected(attn, x.reshape(B * L, D)[sel_idx], sel_idx // L, sel_idx % L, L)
    assert mx.allclose(full, gathered, atol=1e-5).item()


# ---- causality ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["moma2t2i", "moe4x", "moma2t2i+mod"])
def test_inference_mode_is_causal_and_expert_choice_is_not(variant):
    mx.random.seed(3)
    f = mspec.parse_variant(variant)
    args = tiny_args(num_hidden_layers=3, **f)
    model = mm.build(args)
    for m in model.aux_modules():  # make the auxiliary routers route (untrained ones are near 0.5)
        m.update({"fc2": {"weight": 2 * mx.random.normal(m.fc2.weight.shape)}})
    rng = np.random.default_rng(4)
    a = mixed_tokens(rng, 2, 24, 8)
    b = np.array(a).copy()
    t = 11
    b[:, t + 1 :] = np.array(mixed_tokens(rng, 2, 24, 8))[:, t + 1 :]
    b = mx.array(b)
    ya, yb = model(a, mode="infer"), model(b, mode="infer")
    assert mx.allclose(ya[:, : t + 1], yb[:, : t + 1], atol=1e-5).item()
    assert not mx.allclose(ya[:, t + 1 :], yb[:, t + 1 :], atol=1e-3).item()
    # expert choice compares tokens across the batch: future tokens change earlier outputs
    na, nb = int(np.array(model.is_image(a)).sum()), int(np.array(model.is_image(b)).sum())
    za, zb = model(a, n_image=na, mode="train"), model(b, n_image=nb, mode="train")
    assert not mx.allclose(za[:, : t + 1], zb[:, : t + 1], atol=1e-5).item()


def _routing_aux_routers(model, scale=3.0):
    """Auxiliary routers that route somewhere (untrained ones sit near 0.5)."""
    for m in model.aux_modules():
        m.update({"fc2": {"weight": scale * mx.random.normal(m.fc2.weight.shape)}})


@pytest.mark.parametrize("variant", ["moma2t2i", "moe4x", "moma2t2i+mod", "dense+mod"])
def test_cached_generation_equals_uncached(variant):
    """The shared decode loop over MoMa's per-layer KV cache (chunked prefill, then one token at a time) gives the
    tokens and logits of running the whole prefix through the causal path at every step; MoD layers remember which
    cached positions they processed."""
    mx.random.seed(9)
    model = mm.build(tiny_args(num_hidden_layers=3, **mspec.parse_variant(variant)))
    _routing_aux_routers(model)
    model.eval()
    prompt = mixed_tokens(np.random.default_rng(5), 1, 11, 4)[0]
    cache = model.make_cache()
    seen = []

    def keep(logits):
        seen.append(logits[0])
        return logits

    tokens = list(generate_tokens(model, prompt, 10, cache=cache, processor=keep, prefill_step=4))
    seq = np.array(prompt).tolist()
    for t, logits in zip(tokens, seen):
        full = model(mx.array([seq]))[0, -1]  # no cache: the whole prefix again
        np.testing.assert_allclose(np.array(logits), np.array(full), atol=1e-4, rtol=1e-4)
        assert t == int(mx.argmax(full).item())
        seq.append(t)
    assert cache[0].offset == len(seq) - 1  # every position went through the cache but the last token, never fed
    if "+mod" in variant:
        kept = np.array(cache[0].selected)[0]
        assert isinstance(cache[0], mm.MoDCache) and kept.shape == (len(seq) - 1,)
        assert 0 < kept.sum() < kept.size  # the layer processed some positions and skipped others


def test_expert_choice_refuses_a_cache():
    model = mm.build(tiny_args())
    with pytest.raises(ValueError, match="cache"):
        model(mx.array([[1, 2, 3]]), model.make_cache(), mode="train")


# ---- FLOPs matching -----------------------------------------------------------------------------------------------


def test_variants_are_flops_matched():
    assert mm.mod_matched_layers(4) == 7 and mm.mod_matched_layers(8) == 13
    spec = mspec.MomaRunSpec(out="x", preset="tiny", seq_len=128)
    layout = mdata.Layout(512, 64, 1, 2)
    rows = mspec.flops_table(spec, layout, ["moe8x", "moma1t1i", "moma4t4i", "moma4t4i+mod", "moma1t1i+mod"], 0.375)
    by = {r["variant"]: r for r in rows}
    for v, r in by.items():
        assert r["ratio_to_dense"] == pytest.approx(1.0, abs=0.03), v
    assert by["moma4t4i+mod"]["layers"] == 7
    dense_params = lm.preset_args("tiny", layout.size).n_params
    assert by["dense"]["params"] == dense_params
    assert by["moma4t4i"]["params"] > 3 * dense_params  # 8 full-size FFNs per layer
    # the paper's parameter rule: 8 experts × 8d² per layer
    a = mm.ModelArgs(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=176,
        num_attention_heads=2,
        vocab_size=100,
        ffn="moe",
        num_experts=8,
    )
    assert flops.moma_train_per_token(a, 32)["total"] == pytest.approx(
        flops.moma_train_per_token(mm.ModelArgs(**{**a.__dict__, "ffn": "dense"}), 32)["total"] + 6 * 2 * 64 * 8
    )


def _hand_train_flops(n, d, ff, vocab, seq_len, mod, text_experts=4, image_experts=4, image_fraction=0.5):
    """Training FLOPs per token counted by hand (issue 24): 6 × (the multiply-adds a token passes through) + 6·T·d
    of causal scores per layer; a MoD layer (0, 2, 4, …) sees c_d = 1/4 of the tokens (c_d² of the pairs) and its
    router."""
    router = d * (text_experts * (1 - image_fraction) + image_experts * image_fraction)
    full = 6 * (4 * d * d + 3 * d * ff + router) + 6 * seq_len * d
    total = 6 * vocab * d
    for i in range(n):
        if mod and i % 2 == 0:
            total += 6 * (0.25 * (4 * d * d + 3 * d * ff + router) + d) + 6 * 0.25**2 * seq_len * d
        else:
            total += full
    return total


@pytest.mark.parametrize("preset", ["micro", "tiny", "small"])
def test_mod_variant_is_flops_matched_to_dense_within_two_percent(preset):
    """Issue 24: on every small preset the MoD variant's depth (and width where depth alone cannot: micro's 2 dense
    layers are 1.5 or 2.5 MoD-layer equivalents) makes its training FLOPs per token dense's within 2 %."""
    layout = mdata.Layout(512, 64, 1, 2)
    spec = mspec.MomaRunSpec(out="x", preset=preset, seq_len=128)
    rows = {r["variant"]: r for r in mspec.flops_table(spec, layout, ["moma4t4i+mod", "moma1t1i+mod"], 0.5)}
    for v in ("moma4t4i+mod", "moma1t1i+mod"):
        assert rows[v]["ratio_to_dense"] == pytest.approx(1.0, abs=0.02), (v, rows[v])
    dense = lm.PRESETS[preset]
    mod = mspec.model_args(mspec.MomaRunSpec(out="x", preset=preset, variant="moma4t4i+mod", seq_len=128), layout)
    assert mod.num_attention_heads == dense["num_attention_heads"] and mod.head_dim % 2 == 0
    hand_dense = _hand_train_flops(
        dense["num_hidden_layers"], dense["hidden_size"], dense["intermediate_size"], layout.size, 128, False, 0, 0
    )
    hand_mod = _hand_train_flops(mod.num_hidden_layers, mod.hidden_size, mod.intermediate_size, layout.size, 128, True)
    assert rows["dense"]["flops_per_token"] == pytest.approx(hand_dense, rel=1e-12)
    assert rows["moma4t4i+mod"]["flops_per_token"] == pytest.approx(hand_mod, rel=1e-12)
    assert hand_mod / hand_dense == pytest.approx(1.0, abs=0.02)
    if preset == "tiny":  # depth alone matches: the width is kept (the paper's first step)
        assert (mod.num_hidden_layers, mod.hidden_size) == (7, 128)
    if preset == "micro":  # the matched shape trains: one forward and backward of the narrower, deeper model
        model = mm.build(mod)
        rng = np.random.default_rng(0)
        x = mx.array(
            np.where(rng.random((4, 16)) < 0.5, rng.integers(0, 512, (4, 16)), rng.integers(512, 576, (4, 16)))
        )
        n_image = int(((np.array(x) >= 512) & (np.array(x) < 576)).sum())
        loss, grads = nn.value_and_grad(model, lambda m, t: m(t, n_image=n_image, mode="train").mean())(model, x)
        mx.eval(loss, grads)
        assert np.isfinite(loss.item())


def test_upcycle_copies_modality_ffns_into_every_expert():
    src = mm.build(tiny_args(text_experts=1, image_experts=1), seed=1)
    dst = mm.build(tiny_args(text_experts=4, image_experts=4, router_noise=True), seed=2)
    mm.upcycle(dst, src)
    for i, layer in enumerate(dst.layers):
        for name in ("gate_proj", "up_proj", "down_proj"):
            s, d = getattr(src.layers[i].moe, name), getattr(layer.moe, name)
            for e in range(8):  # experts 0-3 are the text group, 4-7 the image group
                assert mx.array_equal(d[e], s[e // 4]).item()
    assert mx.array_equal(dst.model.embed_tokens.weight, src.model.embed_tokens.weight).item()
    assert mx.array_equal(dst.layers[0].self_attn.q_proj.weight, src.layers[0].self_attn.q_proj.weight).item()
    # Gumbel-sigmoid noise breaks the symmetry of the identical experts in training only
    toks = mixed_tokens(np.random.default_rng(0), 2, 16, 4)
    dst.train()
    a, b = dst(toks, n_image=8, mode="train"), dst(toks, n_image=8, mode="train")
    assert not mx.allclose(a, b).item()
    dst.eval()
    assert mx.allclose(dst(toks, n_image=8, mode="train"), dst(toks, n_image=8, mode="train")).item()


def _upcycled(seed=2):
    src = mm.build(tiny_args(text_experts=1, image_experts=1), seed=1)
    dst = mm.build(tiny_args(text_experts=2, image_experts=2, router_noise=True), seed=seed)
    mm.upcycle(dst, src)
    for m in dst.aux_modules():  # auxiliary routers that route somewhere (untrained ones sit near 0.5)
        m.update({"fc2": {"weight": 3 * mx.random.normal(m.fc2.weight.shape)}})
    return dst


def _router_batch(rng, B=4, L=16, n_img=6):
    """(tokens (B, L+1), image positions (B, n_img)) with exactly n_img image codes among the first L inputs."""
    toks = np.concatenate([np.array(mixed_tokens(rng, B, L, n_img)), rng.integers(0, 40, (B, 1))], axis=1)
    return toks.astype(np.int32), np.zeros((B, n_img), np.int32)


def test_router_training_targets_are_noise_free_after_upcycling():
    """Issue 14.1: an upcycled model trains with Gumbel-sigmoid router noise, but the selections that supervise the
    auxiliary routers (stage 2, model in training mode as the trainer leaves it) must not be noisy: identical
    inputs give identical targets, and they are the noise-free (eval-mode) selections."""
    mx.random.seed(7)
    model = _upcycled()
    model.only_aux_trainable()
    toks, pos = _router_batch(np.random.default_rng(3))
    inputs = mx.array(toks[:, :-1])

    def targets(training):
        model.train(training)
        collect: list = []
        model(inputs, n_image=pos.size, mode="train", collect=collect)
        return [np.array(t) for _, t, _ in collect]

    first, second, clean = targets(True), targets(True), targets(False)
    assert len(first) == 2 * model.args.num_hidden_layers
    for a, b, c in zip(first, second, clean):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    model.train()
    batch = (mx.array(toks), mx.array(pos))
    (l1, _), (l2, _) = mtrain.router_loss(model, batch), mtrain.router_loss(model, batch)
    assert l1.item() == l2.item()
    # main training of the same model does draw noise: two forward passes route differently
    assert not mx.allclose(
        model(inputs, n_image=pos.size, mode="train"), model(inputs, n_image=pos.size, mode="train")
    ).item()


def test_router_accuracy_of_an_upcycled_model_is_against_noise_free_selections():
    mx.random.seed(8)
    model = _upcycled(seed=3)
    batches = [_router_batch(np.random.default_rng(s)) for s in (4, 5)]
    # the reference, by hand: aux decisions (logit > 0) against the eval-mode (noise-free) selections
    model.eval()
    per_batch = []
    for toks, pos in batches:
        collect: list = []
        model(mx.array(toks[:, :-1]), n_image=pos.size, mode="train", collect=collect)
        accs = []
        for logits, target, valid in collect:
            v = np.array(valid)[:, None]
            ok = (np.array(logits) > 0) == (np.array(target) > 0.5)
            accs.append((ok & v).sum() / (v.sum() * ok.shape[1]))
        per_batch.append(accs)
    expected = np.mean(per_batch, axis=0)
    model.train()  # as train_routers leaves it
    got = mtrain.router_accuracy(model, batches)
    np.testing.assert_allclose(got["router_acc_per_router"], expected, atol=1e-4)
    assert got["router_acc"] == pytest.approx(expected.mean(), abs=1e-6)
    assert 0.3 < got["router_acc"] < 0.95  # the reference is not trivial


def test_parse_variant_and_errors():
    assert mspec.parse_variant("moma4t4i+mod") == dict(mod=True, ffn="moma", text_experts=4, image_experts=4)
    assert mspec.parse_variant("moe8x") == dict(mod=False, ffn="moe", num_experts=8)
    for bad in ("moma4t", "sparse", "moe0x"):
        with pytest.raises(UserError):
            mspec.parse_variant(bad)
    args = tiny_args(text_experts=3)
    with pytest.raises(UserError, match="does not divide"):
        mspec.check_divisible(args, rows=4, seq_len=16, image_tokens_per_row=8)  # 32 text tokens over 3 experts


@pytest.mark.parametrize("B,L,fraction", [(16, 128, 0.25), (3, 200, 0.5), (5, 40, 0.3)])
def test_mod_attention_band_equals_the_whole_selection(B, L, fraction):
    """MoD attention in bands of query chunks (a token's row-mates lie within L − 1 flat places) = the k × k masked
    attention over the whole selection, values and gradients; small selections take the k × k path itself."""
    import numpy as np

    from mlxsuite.models import lm
    from mlxsuite.models.moma import attend_selected

    args = lm.ModelArgs(
        hidden_size=64,
        num_hidden_layers=1,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    attn = lm.Attention(args)
    mx.eval(attn.parameters())
    n = int(B * L * fraction)
    sel = mx.array(np.sort(np.random.default_rng(B).choice(B * L, n, replace=False)).astype(np.uint32))
    rows, pos = sel // L, sel % L
    xs = mx.random.normal((n, 64), key=mx.random.key(L))

    def whole(x):
        q, k, v = attn.project(x[:, None])
        q, k = attn.finish_queries(q, pos), attn.finish_keys(k, pos)
        q, k, v = (t.transpose(2, 1, 0, 3) for t in (q, k, v))
        allowed = (rows[:, None] == rows[None]) & (pos[:, None] >= pos[None])
        return attn.attend(q, k, v, mx.where(allowed, 0.0, -1e9))[0]

    banded = lambda x: attend_selected(attn, x, rows, pos, L)  # noqa: E731
    np.testing.assert_allclose(np.array(banded(xs)), np.array(whole(xs)), atol=1e-5)
    g = [mx.grad(lambda x, f=f: (f(x) * mx.sin(x[:, :1])).sum())(xs) for f in (banded, whole)]
    np.testing.assert_allclose(np.array(g[0]), np.array(g[1]), atol=1e-5)
