"""The families of the one forward against mlx-lm's own classes, on synthetic checkpoints whose configs carry the
real config.json fields (Gemma 2 2B, Gemma 3 1B/4B, Phi-3.5-mini, Phi-4-mini, OpenELM-270M), scaled down."""

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_map
from mlx_lm.generate import generate_step as mlx_lm_generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model as mlx_lm_load_model
from test_kvp import corpus_and_tokenizer  # noqa: F401  (the fixture)

from mlxsuite import store
from mlxsuite.bench.modes import mlx_lm_model
from mlxsuite.generate import generate_tokens, prefill
from mlxsuite.models import kernels, lm
from mlxsuite.platform import atomic

GEMMA2 = {  # google/gemma-2-2b, scaled down; caps lowered so that tanh bends on random weights
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "attn_logit_softcapping": 1.0,
    "final_logit_softcapping": 2.0,
    "query_pre_attn_scalar": 32,
    "sliding_window": 4096,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "cache_implementation": "hybrid",
    "attention_bias": False,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "torch_dtype": "float32",
}
GEMMA3 = {  # google/gemma-3-1b-it (4B's linear rope scaling), scaled down: window 8, every 3rd layer global
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "hidden_size": 96,
    "intermediate_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "vocab_size": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "query_pre_attn_scalar": 16,
    "sliding_window": 8,
    "sliding_window_pattern": 3,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32768,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
}
PHI35 = {  # microsoft/Phi-3.5-mini-instruct, scaled down (long-rope factors per rotated pair)
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "hidden_act": "silu",
    "sliding_window": 262144,
    "tie_word_embeddings": False,
    "rope_scaling": {
        "type": "longrope",
        "long_factor": [1.0 + i / 4 for i in range(8)],
        "short_factor": [1.0 + i / 8 for i in range(8)],
    },
}
PHI4_MINI = {  # microsoft/Phi-4-mini-instruct: GQA, partial rotary 0.75, tied head; plain RoPE (Phi-3-mini-4k's)
    **PHI35,
    "num_key_value_heads": 2,
    "partial_rotary_factor": 0.75,
    "tie_word_embeddings": True,
    "rope_scaling": None,
    "max_position_embeddings": 4096,
}
OPENELM = {  # apple/OpenELM-270M, scaled down: per-layer heads, KV heads and FFN widths
    "architectures": ["OpenELMForCausalLM"], "model_type": "openelm", "model_dim": 64, "num_transformer_layers": 4,
    "head_dim": 16, "num_query_heads": [2, 4, 4, 6], "num_kv_heads": [1, 2, 2, 2], "num_gqa_groups": 4,
    "ffn_multipliers": [0.5, 1.0, 1.5, 2.0], "ffn_dim_divisor": 16, "ffn_with_glu": True, "vocab_size": 256,
    "normalize_qk_projections": True, "share_input_output_layers": True, "rope_freq_constant": 10000,
    "rope_max_length": 4096, "max_context_length": 2048, "qkv_multipliers": [0.5, 1.0], "activation_fn_name": "swish",
}  # fmt: skip
CONFIGS = {"gemma2": GEMMA2, "gemma3": GEMMA3, "phi3.5": PHI35, "phi4-mini": PHI4_MINI, "openelm": OPENELM}


def write_folder(path, config: dict, bits=None, seed=0):
    """Our model of `config` with perturbed weights (norms too), written as a folder (4-bit: quantized as
    mlx-lm quantizes)."""
    model = lm.Model(lm.ModelArgs.from_dict(config))
    lm.init_weights(model, seed)
    noise = tree_map(lambda p: 0.05 * mx.random.normal(p.shape, key=mx.random.key(seed + 1)), model.parameters())
    model.update(tree_map(lambda p, n: p + n, model.parameters(), noise))
    out = {**config, **model.args.to_dict()}
    if bits:
        nn.quantize(model, group_size=32, bits=bits)
        out["quantization"] = {"group_size": 32, "bits": bits}
    path.mkdir()
    atomic.write_safetensors(path / "model.safetensors", dict(tree_flatten(model.parameters())), {"format": "mlx"})
    (path / "config.json").write_text(json.dumps(out))
    return path


def chunked_logits(model, tokens: mx.array, chunk: int) -> mx.array:
    cache = make_prompt_cache(model)
    out = [model(tokens[:, i : i + chunk], cache) for i in range(0, tokens.shape[1], chunk)]
    return mx.concatenate(out, axis=1)


@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_logits_equal_mlx_lm_at_every_chunk_size(tmp_path, family, bits):
    folder = write_folder(tmp_path / family, CONFIGS[family], bits)
    ours = store.load(str(folder), "lm").model
    ref, _ = mlx_lm_load_model(folder)
    assert type(ours) is lm.Model and type(ref).__module__.startswith("mlx_lm.models.")
    tokens = mx.random.randint(0, 256, (1, 21), key=mx.random.key(3))
    want = ref(tokens)
    for chunk in (1, 3, 8, 21):
        for got in (chunked_logits(ours, tokens, chunk), chunked_logits(ref, tokens, chunk)):
            assert mx.allclose(got, want, atol=2e-4, rtol=2e-4), (family, chunk, mx.abs(got - want).max().item())
    with kernels.disabled():
        plain = chunked_logits(ours, tokens, 8)
    assert mx.allclose(plain, want, atol=2e-4, rtol=2e-4)
    shared = mlx_lm_model(ours)  # bench's mode mlx-lm: mlx-lm's class of the family on our arrays
    assert type(shared) is type(ref) and mx.allclose(shared(tokens), want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_greedy_generation_equals_mlx_lm(tmp_path, family):
    folder = write_folder(tmp_path / family, CONFIGS[family])
    ours = store.load(str(folder), "lm").model
    ref, _ = mlx_lm_load_model(folder)
    prompt = mx.random.randint(0, 256, (13,), key=mx.random.key(5))
    want = [int(t) for t, _ in mlx_lm_generate_step(prompt, ref, max_tokens=10, prefill_step_size=4)]
    assert list(generate_tokens(ours, prompt, 10, prefill_step=4)) == want


@pytest.mark.parametrize("family", list(CONFIGS))
def test_our_folder_round_trips_and_kernels_agree(tmp_path, family):
    """Saved by store.save, the folder reopens identically; the fused CPU kernels on and off give the same logits
    and the same prefill."""
    model = lm.build(lm.ModelArgs.from_dict(CONFIGS[family]))
    store.save(tmp_path / "m", model)
    again = store.load(str(tmp_path / "m"), "lm").model
    assert again.args == model.args
    tokens = mx.random.randint(0, 256, (2, 17), key=mx.random.key(7))
    fused = model(tokens)
    with kernels.disabled():
        plain = model(tokens)
        plain_first = prefill(model, tokens, model.make_cache(), 5)
    assert mx.allclose(fused, plain, atol=1e-4, rtol=1e-4)
    assert mx.allclose(prefill(again, tokens, again.make_cache(), 5), plain_first, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "openelm"])
def test_training_gradients_agree_with_kernels_on_and_off(family):
    """What `train --init-from` differentiates: the kernels' soft-capping, windows and per-layer shapes."""
    model = lm.build(lm.ModelArgs.from_dict(CONFIGS[family]))
    batch = mx.random.randint(0, 256, (2, 19), key=mx.random.key(11))

    def loss(m):
        return nn.losses.cross_entropy(m(batch[:, :-1]), batch[:, 1:], reduction="mean")

    fused = nn.value_and_grad(model, loss)(model)
    with kernels.disabled():
        plain = nn.value_and_grad(model, loss)(model)
    assert abs(fused[0].item() - plain[0].item()) < 1e-5
    for (name, a), (_, b) in zip(tree_flatten(fused[1]), tree_flatten(plain[1])):
        assert mx.allclose(a, b, atol=1e-5, rtol=1e-3), name


@pytest.mark.parametrize("family", ["gemma3", "openelm"])
def test_flops_count_each_layers_own_shape_and_window(family):
    """flops.forward against the model's own linear weights and mlx-lm's causal (windowed) masks."""
    from mlx_lm.models.base import create_causal_mask

    from mlxsuite.models import flops

    args = lm.ModelArgs.from_dict(CONFIGS[family])
    model = lm.Model(args)
    n, offset = 13, 6
    linear = sum(m.weight.size for layer in model.layers for _, m in layer.named_modules() if isinstance(m, nn.Linear))
    attention = 0
    for layer in model.layers:
        a = layer.self_attn
        mask = create_causal_mask(n, offset, window_size=a.window)[:, : offset + n]
        attention += 4 * a.n_heads * a.head_dim * int(mask.sum().item())
    assert flops.forward(args, n, offset, logits_tokens=0) == 2 * n * linear + attention


def test_real_config_fields_are_read():
    gemma3 = lm.ModelArgs.from_dict(GEMMA3)
    assert [gemma3.is_sliding(i) for i in range(6)] == [True, True, False, True, True, False]
    assert gemma3.norm_offset and gemma3.qk_norm and gemma3.hidden_act == "gelu_pytorch_tanh"
    elm = lm.ModelArgs.from_dict(OPENELM)
    assert (elm.hidden_size, elm.num_hidden_layers, elm.tie_word_embeddings) == (64, 4, True)
    assert [elm.layer_widths(i) for i in range(4)] == [(32, 16, 32), (64, 32, 64), (64, 32, 96), (96, 32, 128)]
    model = lm.Model(elm)
    assert elm.n_params == sum(v.size for _, v in tree_flatten(model.parameters()))
    phi = lm.ModelArgs.from_dict(PHI4_MINI)
    assert phi.head_dim == 16 and model_rope_dims(phi) == 12


def model_rope_dims(args) -> int:
    return lm.Model(args).layers[0].self_attn.rope.dims


# ---- KV Prediction on per-layer-shaped models (the paper's KVP-C pairs: OpenELM-270M → OpenELM-1.1B) -----------

OPENELM_BASE = {  # apple/OpenELM-1_1B's shape, scaled down: deeper, more and wider heads than the auxiliary
    **OPENELM, "num_transformer_layers": 6, "num_query_heads": [4, 4, 6, 6, 8, 8], "num_kv_heads": [2, 2, 2, 2, 4, 4],
    "ffn_multipliers": [0.5, 0.8, 1.1, 1.4, 1.7, 2.0],
}  # fmt: skip


def openelm(config: dict, seed: int) -> lm.Model:
    return lm.build(lm.ModelArgs.from_dict(config), seed=seed)


def kvp_prompt_logits(pair, tokens, step):
    from mlxsuite.kvp.recipe import prompt_fill

    cache, fill = prompt_fill(pair)
    return prefill(pair.base, tokens, cache, step, fill)


def test_openelm_kvp_c_pair_trains_and_its_identity_case_reproduces_the_base():
    import mlx.optimizers as optim

    from mlxsuite.kvp.recipe import kvp_loss
    from mlxsuite.models import kv_prediction as kvm

    base, aux = openelm(OPENELM_BASE, 1), openelm(OPENELM, 2)
    layer_map = kvm.contiguous_layer_map(6, 4)
    pred_args = kvm.PredictorArgs.for_models(base, aux, layer_map)
    assert pred_args.aux_kv_dims == [16, 32, 32, 32] and pred_args.base_kv_heads == [2, 2, 2, 2, 4, 4]
    pair = kvm.KVPredictionModel(base, aux, kvm.KVPredictor(pred_args))
    base.freeze()
    loss_fn = nn.value_and_grad(pair, lambda p, b: kvp_loss(1.0)(p, b)[0])
    opt = optim.Adam(1e-2)
    batch = mx.random.randint(0, 256, (2, 17), key=mx.random.key(9))
    losses = []
    for _ in range(4):
        loss, grads = loss_fn(pair, batch)
        opt.update(pair, grads)
        mx.eval(pair.parameters(), opt.state)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    tokens = mx.random.randint(0, 256, (1, 12), key=mx.random.key(10))
    assert mx.isfinite(kvp_prompt_logits(pair, tokens, 5)).all()
    # identity case: the auxiliary is the base, the predictor the identity (square per layer, widths differ)
    same = kvm.layer_pruned(base, list(range(6)))
    identity = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, same, list(range(6))))
    identity.set_identity()
    twin = kvm.KVPredictionModel(base, same, identity)
    want = base(tokens)
    for step in (1, 4, 11):
        assert mx.allclose(kvp_prompt_logits(twin, tokens, step), want[:, -1], atol=1e-4)
    assert mx.allclose(twin(tokens)[0], want, atol=1e-4)


def test_layer_pruning_keeps_each_layers_shape(tmp_path):
    from mlxsuite.models import kv_prediction as kvm

    base = openelm(OPENELM_BASE, 1)
    aux = kvm.layer_pruned(base, [0, 3, 5])
    assert [aux.args.layer_widths(i) for i in range(3)] == [base.args.layer_widths(i) for i in (0, 3, 5)]
    store.save(tmp_path / "lp", aux)
    ref, _ = mlx_lm_load_model(tmp_path / "lp")  # mlx-lm's openelm opens the pruned folder
    tokens = mx.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert mx.allclose(ref(tokens), aux(tokens), atol=1e-4)
    gemma3 = lm.build(lm.ModelArgs.from_dict(GEMMA3))
    with pytest.raises(ValueError, match="sliding-window pattern"):
        kvm.layer_pruned(gemma3, [0, 1])


# ---- any other mlx-lm architecture: through mlx-lm's own class -----------------------------------------------------

GRANITE = {  # ibm-granite/granite-3.0-2b-instruct's fields, scaled down
    "architectures": ["GraniteForCausalLM"], "model_type": "granite", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
    "rms_norm_eps": 1e-6, "logits_scaling": 8.0, "attention_multiplier": 0.015625, "embedding_multiplier": 12.0,
    "residual_multiplier": 0.22, "max_position_embeddings": 4096, "attention_bias": False, "mlp_bias": False,
    "rope_theta": 10000.0, "tie_word_embeddings": True,
}  # fmt: skip


def granite_folder(path, tokenizer=None):
    from mlx_lm.models import granite

    config = {**GRANITE, "vocab_size": tokenizer.vocab_size} if tokenizer is not None else GRANITE
    model = granite.Model(granite.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    path.mkdir()
    atomic.write_safetensors(path / "model.safetensors", dict(tree_flatten(model.parameters())), {"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config))
    if tokenizer is not None:
        tokenizer.save(path)
    return path, model


def test_an_architecture_without_a_family_runs_through_mlx_lms_class(tmp_path, capsys):
    from conftest import run_cli

    from mlxsuite.models.mlx_lm_class import MlxLmClass

    folder, ref = granite_folder(tmp_path / "granite")
    loaded = store.load(str(folder), "lm")
    assert isinstance(loaded.model, MlxLmClass) and "mlx-lm's own class" in loaded.notes[0]
    prompt = mx.array([5, 7, 11, 13, 17, 19])
    want = [int(t) for t, _ in mlx_lm_generate_step(prompt, ref, max_tokens=6, prefill_step_size=4)]
    assert list(generate_tokens(loaded.model, prompt, 6, prefill_step=4)) == want
    code, out, err = run_cli(capsys, "bench", "ttft", str(folder), "-p", "8", "-r", "1", "-o", "json")
    assert code == 0, err
    records = json.loads(out)
    assert {r["implementation"] for r in records} == {"mlx-lm's granite class"}
    assert not any(r["fused_prefill"] for r in records) and "ran through mlx-lm's own class" in err
    code, _, err = run_cli(capsys, "kvp", "train", str(folder), "--out", str(tmp_path / "pair"))
    assert code == 2 and "granite" in err and "mlx-lm's own class" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pair").exists()


def test_bench_compares_a_family_with_mlx_lms_class(tmp_path, capsys):
    from conftest import run_cli

    folder = write_folder(tmp_path / "openelm", OPENELM)
    code, out, err = run_cli(
        capsys, "bench", "ttft", str(folder), "--compare-mlx-lm", "-p", "12", "-r", "1", "-o", "json"
    )
    assert code == 0, err
    records = json.loads(out)
    assert {r["mode"] for r in records} == {"base", "mlx-lm"}
    assert {r["implementation"] for r in records} == {"mlxsuite's openelm family"}


def test_kvp_train_with_a_smaller_openelm_as_auxiliary(corpus_and_tokenizer):  # noqa: F811  (the fixture)
    """`kvp train BASE --aux AUX` (KVP-C) between OpenELM-shaped models of one tokenizer: trains, stores, reloads,
    and its prompt step runs."""
    from test_kvp import spec_for

    from mlxsuite.kvp.recipe import load_pair, train_kvp

    corpus, tok = corpus_and_tokenizer
    for name, config, seed in (("base", OPENELM_BASE, 1), ("small", OPENELM, 2)):
        model = lm.build(lm.ModelArgs.from_dict({**config, "vocab_size": tok.vocab_size}), seed=seed)
        store.save(store.output_path(name), model, tok)
    result = train_kvp(spec_for(corpus, aux="small", steps=3, save_every=3))
    pair, _, _, meta = load_pair(result["folder"])
    assert meta["layer_map"] == [0, 0, 1, 1, 2, 3]
    assert [t.weight.shape for t in pair.predictor.key_transforms[:2]] == [(32, 16), (32, 16)]
    tokens = mx.array([tok.encode("def heappush(heap, item):")])
    assert mx.isfinite(kvp_prompt_logits(pair, tokens, 4)).all()


def test_eval_through_mlx_lms_class_says_so(corpus_and_tokenizer, tmp_path, capsys):  # noqa: F811  (the fixture)
    from conftest import run_cli

    corpus, tok = corpus_and_tokenizer
    folder, _ = granite_folder(tmp_path / "granite", tok)
    code, out, err = run_cli(capsys, "eval", str(folder), "--corpus", str(corpus), "--seq-len", "32", "--windows", "2",
                             "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["implementation"] == "mlx-lm's granite class" and result["ce"] > 0


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "phi3.5"])
def test_kvp_identity_case_on_gemma_and_phi(family):
    """The seams under soft-capping, sliding windows with their rotating caches (prompt longer than the window),
    fused qkv and long-rope: auxiliary = base, identity predictor → the base's logits, chunk by chunk."""
    from mlxsuite.models import kv_prediction as kvm

    base = lm.build(lm.ModelArgs.from_dict(CONFIGS[family]), seed=3)
    n = base.args.num_hidden_layers
    same = kvm.layer_pruned(base, list(range(n))) if family != "gemma3" else lm.Model(base.args)
    same.update(base.parameters())
    identity = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, same, list(range(n))))
    identity.set_identity()
    twin = kvm.KVPredictionModel(base, same, identity)
    tokens = mx.random.randint(0, 256, (1, 19), key=mx.random.key(12))
    want = base(tokens)[:, -1]
    for step in (2, 7, 18):
        assert mx.allclose(kvp_prompt_logits(twin, tokens, step), want, atol=1e-4), step


def test_kvp_lp_on_a_sliding_window_pattern_is_refused_in_one_line(corpus_and_tokenizer, capsys):  # noqa: F811
    from conftest import run_cli

    _, tok = corpus_and_tokenizer
    store.save(store.output_path("g3"), lm.build(lm.ModelArgs.from_dict({**GEMMA3, "vocab_size": tok.vocab_size})), tok)
    code, _, err = run_cli(capsys, "kvp", "train", "g3", "--out", "g3-pair", "--aux", "prune:0.5")
    assert code == 2 and "sliding-window pattern" in err and len(err.strip().splitlines()) == 1
    assert not store.output_path("g3-pair").exists()


@pytest.mark.parametrize("family", ["gemma3", "openelm"])
def test_generate_json_equals_greedy_decoding_with_mlx_lms_class(family, corpus_and_tokenizer, tmp_path, capsys):  # noqa: F811
    """`generate --json` on a family folder gives the text that the same decoding gives with mlx-lm's own class
    doing the forward (greedy: equal texts iff equal tokens)."""
    from conftest import run_cli

    from mlxsuite.chat import prompt_ids
    from mlxsuite.generate import generate_ids
    from mlxsuite.models.mlx_lm_class import MlxLmClass

    _, tok = corpus_and_tokenizer
    config = {**CONFIGS[family], "vocab_size": tok.vocab_size}
    model = lm.build(lm.ModelArgs.from_dict(config), seed=4)
    store.save(tmp_path / family, model, tok)
    prompt = "def heappush(heap, item):\n    heap.append(item)\n"
    code, out, err = run_cli(capsys, "generate", str(tmp_path / family), "-p", prompt, "-m", "12", "--json")
    assert code == 0, err
    ref, _ = mlx_lm_load_model(tmp_path / family)
    ids = prompt_ids(tok, prompt, False, None, {}, after_cache=False)
    want = generate_ids(MlxLmClass(ref, store.read_config(tmp_path / family)), tok, ids, 12)
    got = json.loads(out)
    assert got["completion"] == want.text and got["generation_tokens"] == want.generation_tokens
