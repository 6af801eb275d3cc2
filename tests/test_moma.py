"""MoMa: expert choice, dispatch, modality routing, causality of the inference path, FLOPs matching, data, a tiny
end-to-end comparison, generation/caption and the CLI's errors."""

import json

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsuite import images as I
from mlxsuite import moma
from mlxsuite.errors import UserError
from mlxsuite.models import lm
from mlxsuite.models import moma as mm


def tiny_args(**kw):
    base = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=2, vocab_size=60,
                image_start=40, image_end=58, ffn="moma", text_experts=2, image_experts=2)
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
    idx, gates = mm.expert_choice(scores, member, k=2)
    assert idx.shape == (2, 2)
    assert sorted(np.array(idx[0]).tolist()) == [0, 1]  # 0.99 of token 4 is not a member
    assert sorted(np.array(idx[1]).tolist()) == [1, 2]
    sel = np.array(mm.selection_mask(idx, 6))
    assert sel.sum(0).tolist() == [2, 2]  # exactly k per expert
    assert sel[1].tolist() == [1, 1]  # a token may be picked by several experts ...
    assert sel[3].tolist() == [0, 0] and sel[5].tolist() == [0, 0]  # ... or by none
    # sigmoid gates, not renormalized: token 1 keeps 0.8 and 0.7
    g = {(e, int(t)): float(v) for e in range(2) for t, v in zip(np.array(idx[e]), np.array(gates[e]))}
    assert g[(0, 1)] == pytest.approx(0.8) and g[(1, 1)] == pytest.approx(0.7) and g[(1, 2)] == pytest.approx(0.95)
    # fewer members than capacity: the filler slots get gate 0
    idx, gates = mm.expert_choice(scores, mx.array([True] + [False] * 5), k=2)
    assert sorted(np.array(gates[0]).tolist()) == pytest.approx([0.0, 0.9])
    assert mm.capacity(96, 4, 1.0) == 24 and mm.capacity(10, 8, 1.0) == 1


def test_dispatch_matches_dense_reference_values_and_gradients():
    mx.random.seed(0)
    N, D, H, E, k = 24, 8, 12, 3, 8
    group = mm.ExpertGroup(D, H, E)
    group.update(dict(gate_proj=0.3 * mx.random.normal((E, D, H)), up_proj=0.3 * mx.random.normal((E, D, H)),
                      down_proj=0.3 * mx.random.normal((E, H, D))))
    x = mx.random.normal((N, D))
    member = mx.array(np.arange(N) % 4 != 0)

    def fast(params, x):
        group.update(params)
        scores = mx.sigmoid(group.router(x))
        idx, gates = mm.expert_choice(scores, member, k)
        return group.dispatch(x, idx, gates)

    def reference(params, x):
        group.update(params)
        scores = mx.sigmoid(group.router(x))
        idx, _ = mm.expert_choice(scores, member, k)
        sel = mx.stop_gradient(mm.selection_mask(idx, N))  # (N, E)
        out = mx.zeros_like(x)
        for e in range(E):  # every expert on every token, masked: no gather, no scatter
            h = nn.silu(x @ group.gate_proj[e]) * (x @ group.up_proj[e]) @ group.down_proj[e]
            out = out + (sel[:, e] * scores[:, e])[:, None] * h
        return out

    params = group.trainable_parameters()
    y1, y2 = fast(params, x), reference(params, x)
    assert mx.allclose(y1, y2, atol=1e-5).item()
    cot = mx.random.normal(y1.shape)
    g1 = mx.grad(lambda p, x: (fast(p, x) * cot).sum(), argnums=(0, 1))(params, x)
    g2 = mx.grad(lambda p, x: (reference(p, x) * cot).sum(), argnums=(0, 1))(params, x)
    for (n, a), (_, b) in zip(tree_flatten(g1[0]), tree_flatten(g2[0])):
        assert mx.allclose(a, b, atol=1e-4).item(), n
    assert mx.allclose(g1[1], g2[1], atol=1e-4).item()
    assert float(mx.abs(g1[0]["router"]["weight"]).sum()) > 0  # the router learns through the gates


def test_joint_dispatch_of_both_groups_matches_group_by_group():
    """With equal capacities the text and image experts run in one batched matmul; same values and gradients as
    running the groups one after the other."""
    mx.random.seed(6)
    args = tiny_args()
    ffn = mm.SparseFFN(args)
    W = lambda *s: 0.3 * mx.random.normal(s)  # noqa: E731
    ffn.update({"groups": [dict(gate_proj=W(2, 32, 48), up_proj=W(2, 32, 48), down_proj=W(2, 48, 32))
                           for _ in range(2)]})
    x = mx.random.normal((32, 32))
    is_image = mx.array(np.arange(32) % 2 == 0)
    ctx = mm.Context("train", is_image, 16)

    def joint(p):
        ffn.update(p)
        return ffn(x, is_image, None, [16, 16], ctx)

    def separate(p):
        ffn.update(p)
        members = [mx.logical_not(is_image), is_image]
        return sum(g.train_forward(x, m, 8, False, ctx) for g, m in zip(ffn.groups, members))

    p = ffn.trainable_parameters()
    assert mx.allclose(joint(p), separate(p), atol=1e-5).item()
    g1 = mx.grad(lambda p: joint(p).square().sum())(p)
    g2 = mx.grad(lambda p: separate(p).square().sum())(p)
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
    gathered = mm.attend_selected(attn, x.reshape(B * L, D)[sel_idx], sel_idx // L, sel_idx % L)
    assert mx.allclose(full, gathered, atol=1e-5).item()


# ---- causality ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["moma2t2i", "moe4x", "moma2t2i+mod"])
def test_inference_mode_is_causal_and_expert_choice_is_not(variant):
    mx.random.seed(3)
    f = moma.parse_variant(variant)
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


# ---- FLOPs matching -----------------------------------------------------------------------------------------------


def test_variants_are_flops_matched():
    assert mm.mod_matched_layers(4) == 7 and mm.mod_matched_layers(8) == 13
    spec = moma.MomaRunSpec(out="x", preset="tiny", seq_len=128)
    layout = moma.Layout(512, 64, 1, 2)
    rows = moma.flops_table(spec, layout, ["moe8x", "moma1t1i", "moma4t4i", "moma4t4i+mod", "moma1t1i+mod"], 0.375)
    by = {r["variant"]: r for r in rows}
    for v, r in by.items():
        assert r["ratio_to_dense"] == pytest.approx(1.0, abs=0.03), v
    assert by["moma4t4i+mod"]["layers"] == 7
    dense_params = lm.preset_args("tiny", layout.size).n_params
    assert by["dense"]["params"] == dense_params
    assert by["moma4t4i"]["params"] > 3 * dense_params  # 8 full-size FFNs per layer
    # the paper's parameter rule: 8 experts × 8d² per layer
    a = mm.ModelArgs(hidden_size=64, num_hidden_layers=2, intermediate_size=176, num_attention_heads=2,
                     vocab_size=100, ffn="moe", num_experts=8)
    assert a.flops_per_token(32)["total"] == pytest.approx(
        mm.ModelArgs(**{**a.__dict__, "ffn": "dense"}).flops_per_token(32)["total"] + 6 * 2 * 64 * 8)


def test_upcycle_copies_modality_ffns_into_every_expert():
    src = mm.build(tiny_args(text_experts=1, image_experts=1), seed=1)
    dst = mm.build(tiny_args(text_experts=4, image_experts=4, router_noise=True), seed=2)
    mm.upcycle(dst, src)
    for i, layer in enumerate(dst.layers):
        for g in range(2):
            s, d = src.layers[i].moe.groups[g], layer.moe.groups[g]
            for name in ("gate_proj", "up_proj", "down_proj"):
                assert all(mx.array_equal(getattr(d, name)[e], getattr(s, name)[0]).item() for e in range(4))
    assert mx.array_equal(dst.embed_tokens.weight, src.embed_tokens.weight).item()
    assert mx.array_equal(dst.layers[0].self_attn.q_proj.weight, src.layers[0].self_attn.q_proj.weight).item()
    # Gumbel-sigmoid noise breaks the symmetry of the identical experts in training only
    toks = mixed_tokens(np.random.default_rng(0), 2, 16, 4)
    dst.train()
    a, b = dst(toks, n_image=8), dst(toks, n_image=8)
    assert not mx.allclose(a, b).item()
    dst.eval()
    assert mx.allclose(dst(toks, n_image=8), dst(toks, n_image=8)).item()


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
    (l1, _), (l2, _) = moma.router_loss(model, batch), moma.router_loss(model, batch)
    assert l1.item() == l2.item()
    # main training of the same model does draw noise: two forward passes route differently
    assert not mx.allclose(model(inputs, n_image=pos.size, mode="train"),
                           model(inputs, n_image=pos.size, mode="train")).item()


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
    got = moma.router_accuracy(model, batches)
    np.testing.assert_allclose(got["router_acc_per_router"], expected, atol=1e-4)
    assert got["router_acc"] == pytest.approx(expected.mean(), abs=1e-6)
    assert 0.3 < got["router_acc"] < 0.95  # the reference is not trivial


def test_parse_variant_and_errors():
    assert moma.parse_variant("moma4t4i+mod") == dict(mod=True, ffn="moma", text_experts=4, image_experts=4)
    assert moma.parse_variant("moe8x") == dict(mod=False, ffn="moe", num_experts=8)
    for bad in ("moma4t", "sparse", "moe0x"):
        with pytest.raises(UserError):
            moma.parse_variant(bad)
    args = tiny_args(text_experts=3)
    with pytest.raises(UserError, match="does not divide"):
        moma.check_divisible(args, rows=4, seq_len=16, image_tokens_per_row=8)  # 32 text tokens over 3 experts


# ---- data ---------------------------------------------------------------------------------------------------------


def test_image_tokenizer_and_mixed_rows(tmp_path):
    ds = I.load_digits()
    assert ds.images.shape == (1797, 8, 8) and ds.captions[7][0].startswith("a handwritten digit")
    imtok = I.ImageTokenizer.train(ds.images[:300], num_codes=16, patch=2, iters=5)
    codes = imtok.encode(ds.images[:50])
    assert codes.shape == (50, 16) and codes.max() < 16
    rec = imtok.decode(codes)
    assert rec.shape == (50, 8, 8) and float(((rec - ds.images[:50]) ** 2).mean()) < 0.03
    imtok.save(tmp_path)
    again = I.ImageTokenizer.load(tmp_path)
    assert np.array_equal(again.encode(ds.images[:5]), codes[:5])

    layout = moma.Layout(text_size=40, num_codes=16, bos=1, eos=2)
    caps = [[[5, 6, 7], [8, 9]] for _ in range(50)]
    text = np.arange(3, 40, dtype=np.int32).repeat(20)
    mixed = moma.MixedData(layout, codes, caps, text, seq_len=64)
    toks, pos = mixed.rows(np.random.default_rng(0), 3)
    assert toks.shape == (3, 65) and pos.shape == (3, mixed.images_per_row * 16)
    for r in range(3):
        img = layout.is_image(toks[r, :-1])
        assert img.sum() == pos.shape[1] and np.array_equal(np.flatnonzero(img), np.sort(pos[r]))
        assert (toks[r] == layout.boi).sum() == mixed.images_per_row == (toks[r] == layout.eoi).sum()


def test_image_folder_errors(tmp_path):
    from PIL import Image

    (tmp_path / "a.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "x"}) + "\n" +
                                             json.dumps({"file": "b.png", "caption": "y"}) + "\n")
    with pytest.raises(UserError, match="cannot read image"):
        I.load_image_folder(tmp_path)
    (tmp_path / "a.png").unlink()
    with pytest.raises(UserError, match="not an image"):
        I.load_image_folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "b.png", "caption": "y"}) + "\n")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(UserError, match="no caption"):
        I.load_image_folder(tmp_path)


# ---- end to end ---------------------------------------------------------------------------------------------------


@pytest.fixture
def corpus_file(tmp_path):
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(p.read_text() for p in sorted(root.glob("*.py"))[:6])
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return str(path)


def test_tiny_compare_end_to_end(tmp_path, monkeypatch, corpus_file, capsys):
    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = dict(preset="micro", model_overrides=dict(hidden_size=32, intermediate_size=64), corpus=corpus_file,
                text_tokens=6000, seq_len=48, batch_size=4, codebook_size=16, text_vocab=400, router_steps=4,
                eval_batches=1, train=dict(lr=3e-3, warmup=1, compile=False))
    result = moma.compare(["dense", "moma1t1i"], flops_budget=4e8, prefix="t", base=base,
                          plot=str(tmp_path / "curves.png"))
    rows = {r["variant"]: r for r in result["variants"]}
    assert set(rows) == {"dense", "moma1t1i"}
    for r in rows.values():
        assert all(np.isfinite(v) for v in [*r["final"].values(), *r["final_train"].values()])
        assert set(r["eta"]) == {"overall", "text", "image"} == set(r["eta_val"])
        assert r["tokens_per_s"] > 0
    assert rows["dense"]["eta"]["overall"] >= 1.0 and rows["dense"]["eta_val"]["overall"] >= 1.0
    assert rows["moma1t1i"]["router_acc"] > 0.5 and rows["moma1t1i"]["final_causal"]["loss"] > 0
    assert (tmp_path / "curves.png").exists()
    # resumable: a second call trains nothing more
    again = moma.compare(["dense", "moma1t1i"], flops_budget=4e8, prefix="t", base=base)
    assert again["variants"][0]["final"] == rows["dense"]["final"]

    # upcycling: a moma2t2i run seeded from the trained 1t1i run, with Gumbel-sigmoid router noise
    spec = moma.MomaRunSpec(out="up", variant="moma2t2i", upcycle_from="t-moma1t1i",
                            **{**base, "train": moma.trainer.TrainConfig(steps=2, warmup=1, compile=False)})
    up = moma.train_moma(spec)
    assert np.isfinite(up["loss"])
    saved = json.loads((tmp_path / "models" / "up" / "run" / "spec.json").read_text())
    assert saved["data_offset"] > 0
    assert json.loads((tmp_path / "models" / "up" / "config.json").read_text())["router_noise"]

    # generation and captioning through the causal path (the CLI)
    from mlxsuite.cli import main

    main(["moma", "generate", "t-moma1t1i", "--prompt", "a handwritten digit seven", "--out",
          str(tmp_path / "seven.png")])
    assert (tmp_path / "seven.png").exists()
    out = capsys.readouterr().out
    assert "█" in out or "▓" in out or "░" in out or "▒" in out
    I.save_png(I.load_digits().images[7], tmp_path / "d.png", scale=1)
    main(["moma", "caption", "t-moma1t1i", str(tmp_path / "d.png"), "--json"])
    assert "caption" in json.loads(capsys.readouterr().out)


def test_eta_interpolation_and_augment():
    # dense final 2.0 at 100 FLOPs; sparse crosses 2.0 halfway (in loss) between 40 (2.4) and 60 (1.6): log-FLOPs
    # interpolation gives t* = sqrt(40·60)
    assert moma.eta(2.0, [20, 40, 60, 100], [3.0, 2.4, 1.6, 1.2], 100) == pytest.approx(100 / np.sqrt(40 * 60))
    assert moma.eta(2.0, [50, 100], [2.5, 2.1], 100) is None
    orig = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8) + 1
    imgs, caps = moma.shift_augment(orig, [["a"], ["b"]])
    assert imgs.shape == (18, 8, 8) and caps[9] == ["b"] and np.array_equal(imgs[8:10], orig)  # block 4: no shift
    assert imgs[0, 0, 0] == 0 and imgs[0, 1, 1] == orig[0, 0, 0]  # block 0: shifted down-right, zero fill


def _fake_run(folder, losses_by_step: dict, per_step_flops: float, eval_every: int):
    """A run folder as `compare` leaves it: config.json (FLOPs accounting) and run/metrics.jsonl, every step logged."""
    (folder / "run").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"mlxsuite": {"flops_per_token": per_step_flops,
                                                                 "tokens_per_step": 1}}))
    lines = []
    n = len(losses_by_step["loss"])
    for i in range(n):
        rec = {k: float(v[i]) for k, v in losses_by_step.items()}
        lines.append({"event": "train", "step": i + 1, "tokens_per_s": 1.0, **rec})
        if (i + 1) % eval_every == 0:
            lines.append({"event": "eval", "step": i + 1, **rec})
    (folder / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def _power_law(flops):
    return 1.5 + 2.0 * (np.asarray(flops) / 1e9) ** -0.35


@pytest.mark.parametrize("steps", [300, 700])
def test_eta_recovers_a_known_speed_up_on_power_law_curves(tmp_path, steps):
    """Issue 14.2: a sparse run whose loss curve is dense's at η× the FLOPs, L_s(F) = L_d(η·F), must read η — per
    modality, through the same path `compare` takes (metrics log → smoothed curves → η). A trailing mean read 3.7
    as 3.24 and 2.0 as 1.90."""
    per_step = 1e9
    F = per_step * np.arange(1, steps + 1)
    dense = _fake_run(tmp_path / "dense", {"loss": _power_law(F), "loss_text": _power_law(F) + 0.3,
                                           "loss_image": _power_law(F) - 0.2}, per_step, steps // 12)
    sparse = _fake_run(tmp_path / "sparse", {"loss": _power_law(3.7 * F), "loss_text": _power_law(2.0 * F) + 0.3,
                                             "loss_image": _power_law(5.2 * F) - 0.2}, per_step, steps // 12)
    d, s = moma.curves(dense), moma.curves(sparse)
    got = moma.etas(d, s)
    assert got["overall"] == pytest.approx(3.7, rel=0.02)
    assert got["text"] == pytest.approx(2.0, rel=0.02)
    assert got["image"] == pytest.approx(5.2, rel=0.02)
    assert moma.etas(d, d) == {"overall": 1.0, "text": 1.0, "image": 1.0}
    # the evaluation points (every steps/12), interpolated in log FLOPs
    val = moma.etas(d, s, validation=True)
    assert val["overall"] == pytest.approx(3.7, rel=0.02) and val["image"] == pytest.approx(5.2, rel=0.03)


def test_eta_of_dense_against_itself_on_a_noisy_curve_is_one(tmp_path):
    """The training loss is logged per step on fresh batches, so it is noisy (here σ = 0.05 nats around a power law);
    dense must not reach its own final loss early (the trailing mean gave 1.05–1.11), and a noisy sparse curve with
    η = 2 must still read about 2."""
    rng = np.random.default_rng(0)
    per_step, steps = 1e9, 600
    F = per_step * np.arange(1, steps + 1)
    noisy = lambda f: _power_law(f) + 0.05 * rng.standard_normal(steps)  # noqa: E731
    reads = []
    for i in range(5):
        dense = _fake_run(tmp_path / f"d{i}", {k: noisy(F) for k in moma.KEYS}, per_step, 50)
        d = moma.curves(dense)
        assert all(abs(v - 1.0) <= 0.02 for v in moma.etas(d, d).values())
        sparse = _fake_run(tmp_path / f"s{i}", {k: noisy(2.0 * F) for k in moma.KEYS}, per_step, 50)
        reads += list(moma.etas(d, moma.curves(sparse)).values())
    assert np.mean(reads) == pytest.approx(2.0, rel=0.06) and min(reads) > 1.4 and max(reads) < 2.6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["moma", "train", "--variant", "moma3x", "--out", "x"], "unknown variant"),
        (["moma", "compare", "--variants", "dense,bogus", "--flops", "1e9"], "unknown variant"),
        (["moma", "generate", "nope", "--prompt", "a"], "model not found"),
    ],
)
def test_cli_errors_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    from mlxsuite.cli import main

    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_group_size_and_caption_errors(tmp_path, monkeypatch, capsys, corpus_file):
    from PIL import Image

    from mlxsuite.cli import main

    monkeypatch.setenv("MLXSUITE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:  # 4 rows × 48 tokens = 192 tokens; the image group has 4×32 = 128 over 3
        main(["moma", "train", "--variant", "moma2t3i", "--out", "x", "--preset", "micro", "--corpus", corpus_file,
              "--seq-len", "48", "--batch-size", "4", "--text-tokens", "6000", "--codebook-size", "16", "--steps", "1"])
    assert e.value.code == 2 and "does not divide" in capsys.readouterr().err
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    (folder / "captions.jsonl").write_text(json.dumps({"file": "zzz.png", "caption": "hi"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["moma", "train", "--out", "y", "--images", str(folder), "--corpus", corpus_file])
    assert e.value.code == 2 and "zzz.png" in capsys.readouterr().err
