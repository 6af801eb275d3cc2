"""KV Prediction: equivalence with the base under an identity predictor, key-tap placement, layer maps, training
with exact resume, the stored pair, and the CLI's refusals."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import mlx.core as mx
import pytest
from conftest import run_cli as run

import mlxsuite  # noqa: F401  (fast BLAS before mlx.core)
from mlxsuite import store
from mlxsuite.models import flops, kernels, lm
from mlxsuite.models import kv_prediction as kvm


def prompt_step(pair, tokens, prefill_step=None):
    """KV Prediction's prompt step through the one prefill: (the base's logits for the first token, its cache)."""
    from mlxsuite.generate import prefill
    from mlxsuite.kvp.recipe import prompt_fill

    cache, fill = prompt_fill(pair)
    return prefill(pair.base, tokens, cache, prefill_step, fill), cache


def micro_base(qk_norm=False, kv_heads=None, layers=3, vocab=61, seed=1) -> lm.Model:
    args = lm.ModelArgs(
        hidden_size=64,
        num_hidden_layers=layers,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        qk_norm=qk_norm,
    )
    model = lm.build(args, seed=seed)
    if qk_norm:  # non-trivial norm weights, so a missing or doubled k-norm shows
        for i, layer in enumerate(model.layers):
            k = mx.random.split(mx.random.key(100 + i))
            layer.self_attn.k_norm.weight = mx.random.uniform(0.5, 1.5, (args.head_dim,), key=k[0])
            layer.self_attn.q_norm.weight = mx.random.uniform(0.5, 1.5, (args.head_dim,), key=k[1])
    mx.eval(model.parameters())
    return model


def identity_pair(base: lm.Model, scale_keys: float = 1.0) -> kvm.KVPredictionModel:
    n = base.args.num_hidden_layers
    aux = kvm.layer_pruned(base, list(range(n)))  # a copy of the base
    pred = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, list(range(n))))
    pred.set_identity()
    for t in pred.key_transforms:
        t.weight = t.weight * scale_keys
    return kvm.KVPredictionModel(base, aux, pred)


# ---- equivalence --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qk_norm,kv_heads", [(False, None), (True, None), (False, 2), (True, 1)])
def test_identity_predictor_reproduces_the_base(qk_norm, kv_heads):
    base = micro_base(qk_norm, kv_heads)
    pair = identity_pair(base)
    tokens = mx.random.randint(0, base.args.vocab_size, (2, 11), key=mx.random.key(3))
    ref_cache = base.make_cache()
    ref = base(tokens, ref_cache)
    # prompt step: aux on N−1 tokens, predicted cache, base on the last token
    logits, cache = prompt_step(pair, tokens)
    assert cache[0].offset == tokens.shape[1]
    assert mx.allclose(logits, ref[:, -1], atol=1e-5)
    # later decoding steps: plain base steps over the predicted cache
    for step in range(3):
        nxt = mx.array([[step + 5], [step + 7]])
        assert mx.allclose(base(nxt, cache), base(nxt, ref_cache), atol=1e-5)
    # training / log-likelihood path: predicted KV at every position
    base_logits, aux_logits, pk, pv = pair(tokens)
    assert mx.allclose(base_logits, ref, atol=1e-5)
    assert mx.allclose(aux_logits, ref, atol=1e-5)
    tk, tv = pair.base_targets(tokens)
    assert all(mx.allclose(a, b, atol=1e-6) for a, b in zip(pk + pv, tk + tv))
    # a one-token prompt has no prefix: the base alone
    one, _ = prompt_step(pair, tokens[:, :1])
    assert mx.allclose(one, base(tokens[:, :1])[:, -1], atol=1e-5)


def test_keys_are_tapped_before_k_norm_and_rope():
    """Scaling predicted keys is invisible behind the base's k-norm (RMSNorm is scale-invariant) only if the k-norm
    is applied after the predictor; without k-norm the same scaling must change the logits."""
    tokens = mx.random.randint(0, 61, (1, 9), key=mx.random.key(4))
    base = micro_base(qk_norm=True)
    logits, _ = prompt_step(identity_pair(base, scale_keys=3.0), tokens)
    assert mx.allclose(logits, base(tokens)[:, -1], atol=1e-4)
    plain = micro_base(qk_norm=False)
    logits, _ = prompt_step(identity_pair(plain, scale_keys=3.0), tokens)
    assert not mx.allclose(logits, plain(tokens)[:, -1], atol=1e-3)


def test_predictor_shapes_with_different_widths():
    base = micro_base(kv_heads=2, layers=4)
    aux_args = lm.ModelArgs(
        hidden_size=48,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=61,
    )
    aux = lm.build(aux_args, seed=2)
    pred = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, kvm.contiguous_layer_map(4, 2)))
    pair = kvm.KVPredictionModel(base, aux, pred)
    tokens = mx.random.randint(0, 61, (2, 7), key=mx.random.key(5))
    bl, al, pk, pv = pair(tokens)
    assert bl.shape == (2, 7, 61) and al.shape == (2, 7, 61)
    assert len(pk) == 4 and pk[0].shape == (2, 2, 7, 16) and pv[3].shape == (2, 2, 7, 16)
    assert pred.key_transforms[0].weight.shape == (32, 16)
    logits, cache = prompt_step(pair, tokens)
    assert logits.shape == (2, 61) and cache[0].offset == 7 and cache[0].keys.shape[1] == 2


@pytest.mark.parametrize("qk_norm,kv_heads,aux_kind", [(False, None, "LP"), (True, 2, "LP"), (True, 1, "C")])
def test_chunked_kvp_prefill_equals_the_unchunked_reference(qk_norm, kv_heads, aux_kind):
    """The inference path (aux in chunks, fused CPU layers, predictor per chunk) = aux in one pass + predictor +
    base on the last token: same logits and same base cache, for any chunk size, fused or not."""
    import contextlib

    from mlxsuite.platform import compiler_available

    base = micro_base(qk_norm, kv_heads, layers=4)
    if aux_kind == "LP":
        aux = kvm.layer_pruned(base, [0, 2])
    else:  # a narrower aux with another head size: the base's own RoPE table must be used for predicted keys
        aux = lm.build(
            lm.ModelArgs(
                hidden_size=48,
                num_hidden_layers=2,
                intermediate_size=64,
                num_attention_heads=3,
                num_key_value_heads=1,
                head_dim=16,
                vocab_size=61,
                qk_norm=qk_norm,
            ),
            seed=4,
        )
    pred = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, kvm.contiguous_layer_map(4, 2)))
    mx.eval(pred.parameters())
    pair = kvm.KVPredictionModel(base, aux, pred)
    tokens = mx.random.randint(0, 61, (2, 41), key=mx.random.key(8))
    with kernels.disabled():  # the reference: the aux in one pass, plain MLX ops
        ref, ref_cache = prompt_step(pair, tokens, 10**6)
    fused_runs = kernels.available(aux.layers, mx.float32)
    assert fused_runs == compiler_available()
    for fused in (True, False) if fused_runs else (False,):
        for step in (1, 7, 16, 40, 1000):
            with contextlib.nullcontext() if fused else kernels.disabled():
                logits, cache = prompt_step(pair, tokens, step)
            assert mx.allclose(logits, ref, atol=1e-4, rtol=1e-4), (fused, step)
            for c, r in zip(cache, ref_cache):
                assert c.offset == r.offset == 41
                for a, b in zip(c.keys_and_values(), r.keys_and_values()):
                    assert mx.allclose(a, b, atol=1e-4, rtol=1e-4), (fused, step)
    if not fused_runs:
        pytest.skip("no C++ compiler: the fused kernels are not used here; only the plain path was checked")


# ---- layer maps (notes §1.5) ---------------------------------------------------------------------------------------


def test_layer_maps_reproduce_the_released_lists():
    c = kvm.contiguous_layer_map
    assert c(28, 16) == [j for j in range(12) for _ in range(2)] + [12, 13, 14, 15]
    assert c(28, 20) == [j for j in range(8) for _ in range(2)] + list(range(8, 20))
    assert c(36, 28) == [j for j in range(8) for _ in range(2)] + list(range(8, 28))
    assert c(36, 20) == [j for j in range(16) for _ in range(2)] + [16, 17, 18, 19]
    assert c(36, 16) == [j for j in range(4) for _ in range(3)] + [j for j in range(4, 16) for _ in range(2)]
    assert c(3, 2) == [0, 0, 1]  # corenet's gpt-test-base ← gpt-test-aux


def test_lp_layer_maps_follow_the_paper():
    from mlxsuite.convert.hf import pruned_layers

    for n in (28, 36):
        for keep, expect in ((0.5, [i // 2 for i in range(n)]), (0.25, [i // 4 for i in range(n)])):
            kept = pruned_layers(n, keep)
            assert kvm.lp_layer_map(keep, kept, n) == expect == kvm.retained_layer_map(kept, n)
        kept = pruned_layers(n, 0.75)
        m = kvm.lp_layer_map(0.75, kept, n)
        assert m[:8] == [0, 1, 2, 2, 3, 4, 5, 5] and len(set(m)) == len(kept) == n * 3 // 4
        assert all(kept[m[i]] <= i and (m[i] + 1 == len(kept) or kept[m[i] + 1] > i) for i in range(n))
        assert m != kvm.contiguous_layer_map(n, len(kept))
    with pytest.raises(ValueError):
        kvm.PredictorArgs(layer_map=[0, 2], aux_kv_dims=[8, 8], base_kv_heads=[1, 1], base_head_dims=[8, 8])


def test_layer_pruned_aux_copies_the_retained_layers():
    base = micro_base(layers=4)
    aux = kvm.layer_pruned(base, [0, 2])
    assert aux.args.num_hidden_layers == 2
    assert mx.array_equal(aux.layers[1].mlp.up_proj.weight, base.layers[2].mlp.up_proj.weight)
    assert mx.array_equal(aux.model.embed_tokens.weight, base.model.embed_tokens.weight)


# ---- training, storing, the CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory):
    from mlxsuite.data.tokenizer import train_tokenizer

    root = Path(sysconfig.get_paths()["stdlib"])
    folder = tmp_path_factory.mktemp("corpus")
    texts = []
    for name in (
        "textwrap.py",
        "bisect.py",
        "heapq.py",
        "fnmatch.py",
        "shlex.py",
        "glob.py",
        "colorsys.py",
        "keyword.py",
        "stat.py",
        "struct.py",
        "this.py",
        "queue.py",
    ):
        if (root / name).exists():
            texts.append((root / name).read_text())
            (folder / name.replace(".py", ".txt")).write_text(texts[-1])
    tok = train_tokenizer(texts, 384, tmp_path_factory.mktemp("tok") / "tokenizer.model")
    return folder, tok


def save_base(name: str, tok, seed=0, layers=4, **kw) -> Path:
    args = lm.ModelArgs(
        hidden_size=64,
        num_hidden_layers=layers,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=tok.vocab_size,
        **kw,
    )
    model = lm.build(args, seed=seed)
    return store.save(store.output_path(name), model, tok)


def spec_for(corpus, **kw):
    from mlxsuite.kvp.recipe import KVPRunSpec
    from mlxsuite.train.trainer import TrainConfig

    train = TrainConfig(
        steps=kw.pop("steps", 12),
        lr=3e-3,
        warmup=2,
        save_every=kw.pop("save_every", 6),
        eval_every=100,
        log_every=1,
        compile=False,
    )
    return KVPRunSpec(
        out=kw.pop("out", "pair"),
        base="base",
        aux=kw.pop("aux", "prune:0.5"),
        corpus=str(corpus),
        seq_len=32,
        batch_size=4,
        eval_windows=2,
        train=train,
        **kw,
    )


class Stop(Exception):
    pass


def test_training_lowers_the_loss_resumes_exactly_and_loads(corpus_and_tokenizer, capsys):
    from mlxsuite.kvp.recipe import load_pair, train_kvp
    from mlxsuite.train import trainer

    corpus, tok = corpus_and_tokenizer
    save_base("base", tok, qk_norm=True)
    full = train_kvp(spec_for(corpus))
    folder = Path(full["folder"])
    log = [r for r in trainer.read_metrics(folder / "run") if r["event"] == "train"]
    assert log[-1]["loss"] < log[0]["loss"]
    assert set(log[0]) >= {"base_ce", "aux_ce", "k_l1_sum", "v_l1_sum"}
    pair, _, _, meta = load_pair("pair")
    assert abs(meta["lambda_kv"] - 1 / 4) < 1e-9 and meta["layer_map"] == [0, 0, 1, 1]
    final = dict(pair.predictor.parameters()["key_transforms"][0])

    def interrupt(event, info):
        if event == "save" and info["step"] == 6:
            raise Stop

    with pytest.raises(Stop):
        train_kvp(spec_for(corpus, out="pair2"), callback=interrupt)
    train_kvp(spec_for(corpus, out="pair2"), resume=True)
    pair2, _, _, _ = load_pair("pair2")
    again = pair2.predictor.parameters()["key_transforms"][0]
    assert all(mx.allclose(final[k], again[k], atol=1e-6) for k in ("weight", "bias"))
    aux_a = pair.auxiliary.layers[1].mlp.up_proj.weight
    assert mx.allclose(aux_a, pair2.auxiliary.layers[1].mlp.up_proj.weight, atol=1e-6)
    # the stored aux is a normal model folder
    aux, _, _ = store.load_model(str(folder / "aux"))
    assert aux.args.num_hidden_layers == 2

    # generation through the CLI: the first token comes from the base over the predicted cache
    code, out, err = run(capsys, "generate", "base", "--kvp", "pair", "--prompt", "def f(x):", "-m", "5", "--json")
    assert code == 0, err
    assert "completion" in json.loads(out)

    # evaluation through the CLI, with the per-layer error plot
    png = folder / "err.png"
    code, out, err = run(
        capsys,
        "kvp",
        "eval",
        "pair",
        "--corpus",
        str(corpus),
        "--prompt-len",
        "8",
        "--cont-len",
        "4",
        "--samples",
        "2",
        "--agree-tokens",
        "3",
        "--code",
        "2",
        "--json",
        "--plot",
        str(png),
    )
    assert code == 0, err
    r = json.loads(out)
    assert set(r["methods"]) == {"base", "aux-joint", "kvp"} and len(r["kv_error"]["v_l1"]) == 4 and png.stat().st_size
    assert r["flops"]["prefill_flops"]["kvp"] < r["flops"]["prefill_flops"]["base"]

    # the hook for `mlxsuite generate BASE --kvp DIR`: the pair must belong to that base
    from mlxsuite.generate import generate_text
    from mlxsuite.kvp.recipe import prompt_fill
    from mlxsuite.platform.errors import UserError

    pair, tok2, _, _ = load_pair("pair", expect_base="base")
    cache, fill = prompt_fill(pair)
    expected = generate_text(pair.base, tok2, "def", max_tokens=3, cache=cache, fill=fill)
    code, out, err = run(capsys, "generate", "base", "--kvp", "pair", "-p", "def", "-m", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["completion"] == expected
    save_base("other", tok, seed=5)
    with pytest.raises(UserError, match="trained for the base"):
        load_pair("pair", expect_base="other")
    code, _, err = run(capsys, "generate", "other", "--kvp", "pair", "-p", "def")
    assert code == 2 and "trained for the base" in err

    # a changed base is detected
    base_folder = store.output_path("base")
    w = mx.load(str(base_folder / "model.safetensors"))
    w["model.norm.weight"] = w["model.norm.weight"] * 2
    mx.save_safetensors(str(base_folder / "model.safetensors"), w)
    code, _, err = run(capsys, "generate", "base", "--kvp", "pair", "--prompt", "x", "-m", "2")
    assert code == 2 and "changed" in err and len(err.strip().splitlines()) == 1


def test_mismatched_tokenizer_is_refused(corpus_and_tokenizer, tmp_path, capsys):
    from mlxsuite.data.tokenizer import train_tokenizer

    corpus, tok = corpus_and_tokenizer
    save_base("base", tok)
    other = train_tokenizer(
        ["alpha beta gamma delta\n" * 50, "one two three four five\n" * 40], 330, tmp_path / "other" / "tokenizer.model"
    )
    save_base("small", other, layers=2)
    code, out, err = run(
        capsys, "kvp", "train", "base", "--aux", "small", "--out", "p", "--steps", "2", "--corpus", str(corpus)
    )
    assert code == 2 and "tokenizer" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "kvp", "train", "base", "--aux", "prune:0.3", "--out", "p")
    assert code == 2 and "prune" in err


def test_eval_reports_all_methods(corpus_and_tokenizer, capsys, tmp_path):
    import shutil

    from mlxsuite.kvp.evaluate import evaluate_kvp

    corpus, tok = corpus_and_tokenizer
    held_out = tmp_path / "corpus"  # the last file is held out: Python with documented functions, for the code task
    shutil.copytree(corpus, held_out)
    (held_out / "zzz_textwrap.txt").write_text((Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text())
    base = micro_base(qk_norm=True, vocab=tok.vocab_size)
    pair = identity_pair(base)
    other = micro_base(qk_norm=True, vocab=tok.vocab_size, seed=9)  # a "baseline" that is another model
    r = evaluate_kvp(
        str(tmp_path),
        str(held_out),
        prompt_len=12,
        cont_len=4,
        samples=4,
        agree_tokens=5,
        code=3,
        loaded=(pair, tok, other),
    )
    m = r["methods"]
    assert list(m) == ["base", "baseline", "aux-joint", "kvp"]
    # identity pair: KVP is the base exactly; aux is a copy of the base too: full agreement, same answers
    assert abs(m["kvp"]["ce"] - m["base"]["ce"]) < 1e-4 and m["kvp"]["code_em"] == m["base"]["code_em"]
    for name in ("base", "aux-joint", "kvp"):
        assert m[name]["agree_token_match"] == m[name]["agree_exact"] == 1.0
    # another model agrees less (random weights: almost never)
    assert m["baseline"]["agree_token_match"] < 1.0 and m["baseline"]["agree_exact"] < 1.0
    assert r["code_samples"] == 3
    assert max(r["kv_error"]["k_l1"] + r["kv_error"]["v_l1"]) < 1e-5
    fl = r["flops"]
    assert fl["prefill_flops"]["kvp"] == flops.kvp_prefill(pair, 12) and abs(fl["param_ratio"] - 1) < 1e-9
    assert fl["prefill_flops"]["kvp"] > fl["prefill_flops"]["base"]  # same-size aux + predictor: no saving


def test_agreement_counts_matching_tokens_by_hand():
    """Token match and exact match against the base's greedy continuation, on hand-made continuations."""
    import numpy as np

    from mlxsuite.kvp import evaluate as kvp_eval

    outputs = {
        "base": np.array([[1, 2, 3, 4], [5, 6, 7, 8]]),
        "copy": np.array([[1, 2, 3, 4], [5, 6, 7, 8]]),
        "half": np.array([[1, 2, 9, 9], [5, 6, 7, 8]]),
        "late": np.array([[0, 2, 3, 4], [5, 6, 7, 0]]),
    }
    real = kvp_eval.greedy
    kvp_eval.greedy = lambda m, prompts, n: outputs[m.name]
    try:
        ms = [kvp_eval.Method(n, None, None) for n in outputs]
        r = kvp_eval.agreement(ms, np.zeros((2, 3), np.int32), 4)
    finally:
        kvp_eval.greedy = real
    assert r["copy"] == {"token_match": 1.0, "exact": 1.0, "prefix": 4.0}
    assert r["half"] == {"token_match": 6 / 8, "exact": 0.5, "prefix": (2 + 4) / 2}
    assert r["late"] == {"token_match": 6 / 8, "exact": 0.0, "prefix": (0 + 3) / 2}  # same match rate, diverges earlier


def test_code_samples_cut_lines_after_punctuation_never_in_whitespace():
    """Lines 5, 15, 25, … are candidates; the cut is after the first "(", "=", "." or "," leaving 3–30 characters."""
    from mlxsuite.kvp.evaluate import code_samples, line_end

    lines = ["x = 0"] * 40
    lines[5] = "    result = compute_total(a, b)"  # after "=": " compute_total(a, b)", 20 characters
    lines[15] = "    return os.path.join(first_argument_name, b)"  # after "os.": 33 characters; "path.": 28
    lines[25] = "    # a comment = that is long enough"  # a comment: never
    lines[35] = "    short(a)"  # too short: never
    samples = code_samples(["\n".join(lines)], 10)
    got = {s.prompt.rsplit("\n", 1)[1]: s.answer for s in samples}
    assert got == {"    result =": "compute_total(a, b)", "    return os.path.": "join(first_argument_name, b)"}
    for s in samples:  # the context: the lines before the cut line
        row = 5 if "result" in s.prompt.rsplit("\n", 1)[1] else 15
        assert s.prompt.split("\n")[:-1] == lines[:row]
    assert line_end(" g(a)") is None and line_end(" g(a)\n    z") == "g(a)"


def test_kvp_flops_add_up_and_first_token():
    from mlxsuite.generate import prefill, sample

    base = micro_base(kv_heads=2, layers=4)
    pair = identity_pair(base)
    pred = flops.predictor(pair, 36)
    assert pred == 2 * 36 * 2 * 4 * 32 * 32  # K and V maps per base layer, 32 → 32 (2 KV heads × 16)
    assert flops.kvp_prefill(pair, 37, 2) == 2 * (
        flops.forward(base.args, 36, logits_tokens=0) + pred + flops.forward(base.args, 1, 36)
    )
    tokens = mx.random.randint(0, 61, (2, 9), key=mx.random.key(6))
    tok = sample(prompt_step(pair, tokens)[0])
    assert tok.shape == (2,) and mx.array_equal(tok, mx.argmax(base(tokens)[:, -1], axis=-1))
    assert mx.array_equal(sample(prefill(pair.auxiliary, tokens, pair.auxiliary.make_cache())), tok)


def test_two_processes_match_one_process(corpus_and_tokenizer, tmp_path):
    """`mlx.launch -n 2 -- mlxsuite kvp train …` (ring backend, each rank half of every batch) = one process."""
    import os
    import shutil
    import subprocess
    import sys

    import numpy as np

    bin_dir = Path(sys.executable).parent
    if shutil.which("mlx.launch", path=str(bin_dir)) is None:
        pytest.skip("mlx.launch not installed")
    corpus, tok = corpus_and_tokenizer
    save_base("base", tok, qk_norm=True)
    args = [
        "kvp",
        "train",
        "base",
        "--aux",
        "prune:0.5",
        "--corpus",
        str(corpus),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--warmup",
        "2",
        "--save-every",
        "3",
        "--eval-every",
        "100",
        "--log-every",
        "1",
        "--eval-windows",
        "2",
        "--quiet",
    ]
    env = {**os.environ, "MLXSUITE_LOCAL_RANKS": "2"}
    one = subprocess.run([str(bin_dir / "mlxsuite"), *args, "--out", "one"], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            str(bin_dir / "mlx.launch"),
            "-n",
            "2",
            "--backend",
            "ring",
            "--",
            str(bin_dir / "mlxsuite"),
            *args,
            "--out",
            "two",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    from mlxsuite.train import trainer

    def logged(name, key):
        return [m[key] for m in trainer.read_metrics(store.output_path(name) / "run") if m["event"] == "train"]

    assert len(logged("one", "loss")) == len(logged("two", "loss")) == 6
    # the loss and every term of it, averaged over the ranks; the gradient norm (after averaging across ranks,
    # before clipping): AdamW barely sees gradients summed instead of averaged, the norm does
    for key in ("loss", "base_ce", "aux_ce", "k_l1_sum", "v_l1_sum", "grad_norm"):
        np.testing.assert_allclose(logged("one", key), logged("two", key), rtol=1e-4, err_msg=key)
    for weights in ("predictor.safetensors", "aux/model.safetensors"):  # everything that trains
        a = mx.load(str(store.output_path("one") / weights))
        b = mx.load(str(store.output_path("two") / weights))
        assert a.keys() == b.keys() and a
        for k in a:
            np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-3, atol=1e-5, err_msg=f"{weights} {k}")
