"""`mlxsuite convert`: from-hf, to-mlx-lm, prune, quantize, and their failure paths.

Checkpoints are tiny (d=64, 2 layers, vocabulary ~320) and built here: Hugging Face folders are written with numpy
(safetensors, config.json, a `tokenizers` tokenizer.json); our own models come from `lm.build` and a SentencePiece
tokenizer trained on a few lines. mlx-lm is the reference: converted models must give its logits.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import run_cli as run
from mlx.utils import tree_flatten, tree_map

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)
from mlxsuite import store
from mlxsuite.convert import hf as convert
from mlxsuite.models import lm
from mlxsuite.platform.errors import UserError

D, FFN, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 128, 4, 2, 2, 320
TOKENS = mx.array([[5, 17, 300, 2, 99, 42, 7, 250, 1, 0, 64, 128]])


def close(a: mx.array, b: mx.array, rtol=1e-4) -> bool:
    a, b = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


# ---- Hugging Face checkpoints built by hand ----------------------------------------------------------------------

FAMILIES = {
    # untied head, biases on q/k/v/o and on the MLP (HF llama's attention_bias / mlp_bias), GQA, llama3 RoPE scaling
    "llama": dict(
        model_type="llama",
        tie=False,
        attention_bias=True,
        mlp_bias=True,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
    ),
    # mistral: untied, no biases, a sliding_window mlx-lm ignores, explicit head_dim
    "mistral": dict(model_type="mistral", tie=False, head_dim=16, sliding_window=4096),
    # qwen2: q/k/v biases only, tied embeddings
    "qwen2": dict(model_type="qwen2", tie=True, qkv_bias=True),
    # qwen3: q/k RMSNorm, head_dim != d / heads, tied
    "qwen3": dict(model_type="qwen3", tie=True, head_dim=32, qk_norm=True),
}


def hf_tensors(spec: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    hd = spec.get("head_dim", D // HEADS)
    q, kv = HEADS * hd, KV_HEADS * hd

    def w(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    t = {"model.embed_tokens.weight": w(VOCAB, D, scale=0.5), "model.norm.weight": norm(D)}
    if not spec["tie"]:
        t["lm_head.weight"] = w(VOCAB, D)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(q, D)
        t[p + "self_attn.k_proj.weight"] = w(kv, D)
        t[p + "self_attn.v_proj.weight"] = w(kv, D)
        t[p + "self_attn.o_proj.weight"] = w(D, q)
        if spec.get("attention_bias") or spec.get("qkv_bias"):
            for name, n in (("q", q), ("k", kv), ("v", kv)):
                t[p + f"self_attn.{name}_proj.bias"] = w(n, scale=0.2)
        if spec.get("attention_bias"):
            t[p + "self_attn.o_proj.bias"] = w(D, scale=0.2)
        if spec.get("qk_norm"):
            t[p + "self_attn.q_norm.weight"] = norm(hd)
            t[p + "self_attn.k_norm.weight"] = norm(hd)
        t[p + "mlp.gate_proj.weight"] = w(FFN, D)
        t[p + "mlp.up_proj.weight"] = w(FFN, D)
        t[p + "mlp.down_proj.weight"] = w(D, FFN)
        if spec.get("mlp_bias"):
            for name, n in (("gate", FFN), ("up", FFN), ("down", D)):
                t[p + f"mlp.{name}_proj.bias"] = w(n, scale=0.2)
        t[p + "input_layernorm.weight"] = norm(D)
        t[p + "post_attention_layernorm.weight"] = norm(D)
    if spec["model_type"] in ("llama", "qwen2"):  # legacy precomputed frequencies: dropped (as mlx-lm's sanitize)
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(hd // 2, np.float32)
    return t


def hf_config(spec: dict) -> dict:
    config = {
        "model_type": spec["model_type"],
        "architectures": [spec["model_type"].capitalize() + "ForCausalLM"],
        "hidden_size": D,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0 if spec["model_type"] in ("llama", "mistral") else 1000000.0,
        "max_position_embeddings": 512,
        "hidden_act": "silu",
        "tie_word_embeddings": spec["tie"],
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if spec["model_type"] == "llama":
        config.update(attention_bias=spec.get("attention_bias", False), mlp_bias=spec.get("mlp_bias", False))
    if "head_dim" in spec:
        config["head_dim"] = spec["head_dim"]
    for key in ("sliding_window", "rope_scaling"):
        if key in spec:
            config[key] = spec[key]
    return config


WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "model",
    "weights",
    "convert",
    "layer",
    "tensor",
    "shard",
]


def write_hf_tokenizer(folder: Path, bos: bool) -> None:
    """A word-level tokenizer.json (and tokenizer_config.json) as a Hugging Face checkpoint ships it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(["<unk>", "<s>", "</s>"])
    if bos:  # a Llama tokenizer prepends BOS
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def make_hf(folder: Path, family: str, shards: int = 1, seed: int = 0, tokenizer: bool = True) -> Path:
    from safetensors.numpy import save_file

    spec = FAMILIES[family]
    folder.mkdir(parents=True)
    tensors = hf_tensors(spec, np.random.default_rng(seed))
    (folder / "config.json").write_text(json.dumps(hf_config(spec)))
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = list(tensors)
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in names[s::shards]}
            save_file(part, str(folder / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if tokenizer:
        write_hf_tokenizer(folder, bos=family in ("llama", "mistral"))
    return folder


def mlx_lm_logits(folder: Path, tokens=TOKENS) -> mx.array:
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(folder))
    return model(tokens)


# ---- from-hf -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_from_hf_matches_mlx_lm(tmp_path, capsys, family):
    hf = make_hf(tmp_path / "hf", family)
    code, out, err = run(capsys, "convert", "from-hf", str(hf), family)
    assert code == 0, err
    assert "wrote" in out
    model, tok, folder = store.load_model(family)
    assert folder == tmp_path / "store" / family
    assert close(model(TOKENS), mlx_lm_logits(hf))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family and config["mlxsuite"]["converted_from"]["model_type"] == family
    assert ("lm_head.weight" in dict(tree_flatten(model.parameters()))) == (not FAMILIES[family]["tie"])
    # the HF tokenizer came along and encodes as the tokenizers library does (with the model's own BOS rule)
    assert type(tok).__name__ == "HFTokenizer" and not (folder / "tokenizer.model").exists()
    ids = tok.encode("the quick brown fox")
    bos = family in ("llama", "mistral")
    assert ids == ([1] if bos else []) + [3, 4, 5, 6]
    assert tok.decode(ids) == "the quick brown fox" and tok.eos_id == 2 and tok.bos_id == 1
    assert tok.encode_batch(["lazy dog", "dog"]) == [tok.encode("lazy dog"), tok.encode("dog")]
    if family == "mistral":
        assert "sliding_window" in err  # the ignored window is noted


def test_hf_config_variants():
    config = hf_config(FAMILIES["llama"])
    # transformers >= 5 nests rope_theta and the scaling under rope_parameters
    del config["rope_theta"], config["rope_scaling"]
    args, _ = convert.hf_config_to_args({**config, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert args.rope_theta == 5e5 and args.rope_scaling is None
    scaled = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    args, _ = convert.hf_config_to_args({**config, "rope_parameters": scaled})
    assert args.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    # tie_word_embeddings not stated: tied exactly when there is no lm_head.weight
    del config["tie_word_embeddings"]
    assert convert.hf_config_to_args(config, has_lm_head=False)[0].tie_word_embeddings
    assert not convert.hf_config_to_args(config, has_lm_head=True)[0].tie_word_embeddings
    for bad, words in [
        ({"hidden_act": "gelu"}, "activation"),
        ({"quantization_config": {"quant_method": "awq"}}, "quantized with awq"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, "sliding"),
        ({"rope_scaling": {"rope_type": "nonsense", "factor": 2.0}}, "supported"),
        ({"hidden_size": None}, "hidden_size"),
    ]:
        with pytest.raises(UserError, match=words):
            convert.hf_config_to_args({**config, **bad})


def test_hf_tokenizer_special_ids(tmp_path):
    from mlxsuite.data.hf_tokenizer import HFTokenizer

    write_hf_tokenizer(tmp_path, bos=False)
    cfg = {"eos_token": {"content": "</s>", "special": True}, "bos_token": None}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [2, 5], "bos_token_id": 1}))
    tok = HFTokenizer(tmp_path)
    assert (tok.eos_id, tok.eos_ids, tok.bos_id, tok.vocab_size) == (2, [2, 5], 1, len(WORDS) + 3)
    assert tok.path == tmp_path / "tokenizer.json"
    dst = tmp_path / "copy"
    dst.mkdir()
    tok.save(dst)
    assert sorted(p.name for p in dst.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_from_hf_sharded_with_index(tmp_path, capsys):
    hf = make_hf(tmp_path / "hf", "llama", shards=3)
    out = tmp_path / "out" / "sharded"
    code, _, err = run(capsys, "convert", "from-hf", str(hf), str(out))
    assert code == 0, err
    shards = sorted(p.name for p in out.glob("model*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    model, _, _ = store.load_model(str(out))
    assert close(model(TOKENS), mlx_lm_logits(hf))
    # the output is itself an mlx-lm folder (same names, model_type kept)
    assert close(mlx_lm_logits(out), mlx_lm_logits(hf))


def test_from_hf_dtype(tmp_path, capsys):
    hf = make_hf(tmp_path / "hf", "qwen2")
    code, _, err = run(capsys, "convert", "from-hf", str(hf), "half", "--dtype", "float16")
    assert code == 0, err
    model, _, _ = store.load_model("half")
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float16}
    assert close(model(TOKENS), mlx_lm_logits(hf), rtol=5e-2)


def test_from_hf_quantized_equals_mlx_lm_quantized(tmp_path, capsys):
    hf = make_hf(tmp_path / "hf", "llama")
    code, _, err = run(capsys, "convert", "from-hf", str(hf), "q4", "-q", "--q-bits", "4", "--q-group-size", "32")
    assert code == 0, err
    model, _, folder = store.load_model("q4")
    assert json.loads((folder / "config.json").read_text())["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
    }
    assert isinstance(model.layers[0].mlp.down_proj, nn.QuantizedLinear)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)

    from mlx_lm.utils import load_model

    ref, _ = load_model(hf)
    nn.quantize(ref, group_size=32, bits=4, class_predicate=lambda p, m: hasattr(m, "to_quantized"))
    assert close(model(TOKENS), ref(TOKENS))
    # and mlx-lm opens the quantized folder too
    assert close(mlx_lm_logits(folder), ref(TOKENS))


# ---- our models: to-mlx-lm, prune, quantize ------------------------------------------------------------------------

SAMPLE = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces,   runs\tand tabs",
    "def f(x):\n    return x * 12345\n",
    "naïve café 東京 🙂 ﬁ",
]


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    from mlxsuite.data.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "model",
        "weights",
        "123",
        "4567",
        "naïve",
        "café",
        "def",
        "return",
        "x",
    ]
    texts = ["\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(30)) for _ in range(20)]
    return train_tokenizer(texts, 330, tmp_path_factory.mktemp("sp") / "tokenizer.model")


def our_model(path: Path, tokenizer, seed=0, **overrides) -> lm.Model:
    """A model of this project with every parameter (biases and norms too) perturbed, saved at `path`."""
    args = lm.preset_args("micro", tokenizer.vocab_size, **overrides)
    model = lm.build(args, seed=seed)
    key = iter(mx.random.split(mx.random.key(seed + 1), 1000))
    model.update(tree_map(lambda p: p + 0.1 * mx.random.normal(p.shape, key=next(key)), model.parameters()))
    mx.eval(model.parameters())
    store.save(path, model, tokenizer)
    return model


def greedy(model, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    for _ in range(n):
        ids.append(int(mx.argmax(model(mx.array([ids]))[0, -1])))
    return ids[-n:]


@pytest.mark.parametrize(
    "overrides, mlx_type",
    [
        (dict(tie_word_embeddings=False, num_hidden_layers=3), "llama"),
        (dict(qkv_bias=True, tie_word_embeddings=False), "llama"),  # + a zero o_proj bias
        (dict(qk_norm=True, num_key_value_heads=1), "qwen3"),
    ],
)
def test_to_mlx_lm_round_trip(tmp_path, capsys, sp_tokenizer, overrides, mlx_type):
    import mlx_lm

    ours = our_model(tmp_path / "store" / "base", sp_tokenizer, **overrides)
    out = tmp_path / "exported"
    code, stdout, err = run(capsys, "convert", "to-mlx-lm", "base", str(out))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model_type"] == mlx_type
    model, tokenizer = mlx_lm.load(str(out))
    assert type(model).__module__ == f"mlx_lm.models.{mlx_type}"
    tokens = mx.array([sp_tokenizer.encode(" ".join(SAMPLE))])
    assert close(model(tokens), ours(tokens), rtol=1e-5)
    for text in SAMPLE:  # mlx-lm's tokenizer agrees with SentencePiece, both ways
        ids = sp_tokenizer.encode(text)
        assert tokenizer.encode(text) == ids
        assert tokenizer.decode(ids) == sp_tokenizer.decode(ids)
    assert tokenizer.eos_token_id == sp_tokenizer.eos_id
    # mlx-lm's generation loop (greedy) continues as our model does
    prompt = sp_tokenizer.encode("the quick brown")
    got = [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt=prompt, max_tokens=6)]
    expected = greedy(ours, prompt, 6)
    if sp_tokenizer.eos_id in expected:
        expected = expected[: expected.index(sp_tokenizer.eos_id) + 1]
    assert got == expected
    # ... and back: the mlx-lm folder converts from HF into the same model
    code, _, err = run(capsys, "convert", "from-hf", str(out), "back")
    assert code == 0, err
    back, back_tok, _ = store.load_model("back")
    assert close(back(tokens), ours(tokens), rtol=1e-5)
    assert back_tok.encode(SAMPLE[2]) == sp_tokenizer.encode(SAMPLE[2])


def test_to_mlx_lm_refuses_what_mlx_lm_cannot_run(tmp_path, capsys, sp_tokenizer):
    our_model(tmp_path / "store" / "odd", sp_tokenizer, qk_norm=True, qkv_bias=True)
    code, _, err = run(capsys, "convert", "to-mlx-lm", "odd", str(tmp_path / "x"))
    assert code == 2 and "no mlx-lm architecture" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_pruned_layers_follow_the_paper():
    assert convert.pruned_layers(28, 0.75) == [i for i in range(28) if i % 4 != 3]
    assert len(convert.pruned_layers(28, 0.75)) == 21 and len(convert.pruned_layers(36, 0.75)) == 27
    assert convert.pruned_layers(28, 0.5) == list(range(0, 28, 2)) and len(convert.pruned_layers(36, 0.5)) == 18
    assert convert.pruned_layers(28, 0.25) == [0, 4, 8, 12, 16, 20, 24] and len(convert.pruned_layers(36, 0.25)) == 9
    assert convert.pruned_layers(8, 0.75) == [0, 1, 2, 4, 5, 6]
    with pytest.raises(UserError):
        convert.pruned_layers(28, 0.6)


@pytest.mark.parametrize("keep", ["0.75", "0.5", "0.25"])
def test_prune_keeps_the_right_layers(tmp_path, capsys, sp_tokenizer, keep):
    base = our_model(tmp_path / "store" / "base8", sp_tokenizer, num_hidden_layers=8)
    code, out, err = run(capsys, "convert", "prune", "base8", "lp", "--keep", keep)
    assert code == 0, err
    kept = convert.pruned_layers(8, float(keep))
    assert f"kept layers {','.join(map(str, kept))}" in out
    pruned, tok, folder = store.load_model("lp")
    assert pruned.args.num_hidden_layers == len(kept) and tok.encode("the fox") == sp_tokenizer.encode("the fox")
    assert json.loads((folder / "config.json").read_text())["mlxsuite"]["pruned"]["layers"] == kept
    for new, old in enumerate(kept):
        a, b = dict(tree_flatten(pruned.layers[new].parameters())), dict(tree_flatten(base.layers[old].parameters()))
        assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]) for k in a)
    base.model.layers = [base.layers[i] for i in kept]  # the same network, built by hand
    assert close(pruned(TOKENS[:, :8]), base(TOKENS[:, :8]), rtol=1e-6)


@pytest.mark.parametrize("bits, group", [(4, 32), (8, 64)])
def test_quantize_loads_and_runs(tmp_path, capsys, sp_tokenizer, bits, group):
    base = our_model(tmp_path / "store" / "fp", sp_tokenizer, tie_word_embeddings=False)
    code, out, err = run(capsys, "convert", "quantize", "fp", "fpq", "--bits", str(bits), "--group-size", str(group))
    assert code == 0, err
    assert "2 of 16 layers stay in float" in err  # the two down_proj (input 176)
    model, _, folder = store.load_model("fpq")
    assert json.loads((folder / "config.json").read_text())["quantization"] == {
        "group_size": group,
        "bits": bits,
        "mode": "affine",
    }
    # micro: d=64, ffn=176, so down_proj (input 176) stays float, as mlx-lm's predicate leaves it
    assert isinstance(model.layers[0].mlp.up_proj, nn.QuantizedLinear) and isinstance(model.lm_head, nn.QuantizedLinear)
    assert isinstance(model.layers[0].mlp.down_proj, nn.Linear)
    quantizable = lambda p, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % group == 0  # noqa: E731
    nn.quantize(base, group_size=group, bits=bits, class_predicate=quantizable)
    assert close(model(TOKENS), base(TOKENS), rtol=1e-5)
    # quantized models go on: pruned, and exported to mlx-lm
    assert run(capsys, "convert", "prune", "fpq", "fpq-lp", "--keep", "0.5")[0] == 0
    assert store.load_model("fpq-lp")[0].args.num_hidden_layers == 1
    assert run(capsys, "convert", "to-mlx-lm", "fpq", str(tmp_path / "fpq-mlx"))[0] == 0
    assert close(mlx_lm_logits(tmp_path / "fpq-mlx"), base(TOKENS), rtol=1e-5)
    # quantizing twice is refused, and so is a group size no layer fits
    code, _, err = run(capsys, "convert", "quantize", "fpq", "fpqq")
    assert code == 2 and "already quantized" in err
    code, _, err = run(capsys, "convert", "quantize", "fp", "fpqq", "--group-size", "128")
    assert code == 2 and "no layer can be quantized" in err and not (tmp_path / "store" / "fpqq").exists()


# ---- failure paths: exit 2, one stderr line, nothing written -------------------------------------------------------


def fails(capsys, tmp_path, out: Path, *args) -> str:
    code, stdout, err = run(capsys, "convert", *args)
    assert code == 2, (stdout, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert not out.exists()
    leftovers = [p.name for p in out.parent.glob(f".{out.name}.*")] if out.parent.exists() else []
    assert leftovers == []
    return lines[0]


def test_pickle_checkpoints_are_refused(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(hf_config(FAMILIES["llama"])))
    (hf / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    out = tmp_path / "store" / "p"
    msg = fails(capsys, tmp_path, out, "from-hf", str(hf), "p")
    assert "pickle" in msg and "pytorch_model.bin" in msg and "safetensors" in msg
    (tmp_path / "model.pt").write_bytes(b"\x80\x04")
    msg = fails(capsys, tmp_path, out, "from-hf", str(tmp_path / "model.pt"), "p")
    assert "pickle" in msg
    # an index pointing at pickle shards is refused too
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "pytorch_model-1.bin"}}))
    assert "only safetensors" in fails(capsys, tmp_path, out, "from-hf", str(hf), "p")


def test_missing_unexpected_and_misshaped_tensors_reported_together(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    hf = make_hf(tmp_path / "hf", "qwen2", shards=2)
    for f in sorted(hf.glob("model-*.safetensors")):
        t = load_file(str(f))
        t.pop("model.layers.1.mlp.up_proj.weight", None)
        if "model.layers.0.self_attn.k_proj.weight" in t:
            t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((D, D), np.float32)
        if "model.norm.weight" in t:
            t["model.layers.0.mlp.extra.weight"] = np.zeros(3, np.float32)
        save_file(t, str(f))
    msg = fails(capsys, tmp_path, tmp_path / "store" / "bad", "from-hf", str(hf), "bad")
    assert "missing: model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected: model.layers.0.mlp.extra.weight" in msg
    assert "model.layers.0.self_attn.k_proj.weight is 64x64, expected 32x64" in msg


def test_existing_out_needs_force(tmp_path, capsys):
    hf = make_hf(tmp_path / "hf", "qwen3")
    out = tmp_path / "store" / "m"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "convert", "from-hf", str(hf), "m")
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert run(capsys, "convert", "from-hf", str(hf), "m", "--force")[0] == 0
    assert not (out / "keep.txt").exists() and store.load_model("m")[0].args.qk_norm


def test_unsupported_model_type_and_bad_options(tmp_path, capsys):
    hf = make_hf(tmp_path / "hf", "llama", tokenizer=False)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    out = tmp_path / "store" / "g"
    msg = fails(capsys, tmp_path, out, "from-hf", str(hf), "g")
    assert "unsupported" in msg and "gpt2" in msg
    (hf / "config.json").write_text(json.dumps(config))
    assert "bits" in fails(capsys, tmp_path, out, "from-hf", str(hf), "g", "-q", "--q-bits", "7")
    assert "not found" in fails(capsys, tmp_path, out, "from-hf", str(tmp_path / "nope"), "g")
    assert "--keep" in fails(capsys, tmp_path, out, "prune", str(hf), "g", "--keep", "0.6")


def test_interrupted_conversion_leaves_nothing(tmp_path):
    hf = make_hf(tmp_path / "hf", "llama", shards=2)
    out = tmp_path / "store" / "half-done"

    def interrupt(done, total, name):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert.from_hf(hf, out, progress=interrupt)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_converted_model_trains_evaluates_and_generates(tmp_path, capsys, small_corpus):
    """A from-hf model is a model like any other: continued training (--init-from), eval and generate."""
    hf = make_hf(tmp_path / "hf", "qwen2")
    code, _, err = run(capsys, "convert", "from-hf", str(hf), "conv")
    assert code == 0, err
    code, out, err = run(
        capsys,
        "train",
        "--init-from",
        "conv",
        "--out",
        "ft",
        "--corpus",
        str(small_corpus),
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--eval-windows",
        "2",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    assert math.isfinite(json.loads(out)["val_ce"])
    before = mx.load(str(store.resolve("conv") / "model.safetensors"))
    after = mx.load(str(store.resolve("ft") / "model.safetensors"))
    assert set(before) == set(after)
    assert not mx.allclose(before["model.norm.weight"], after["model.norm.weight"]).item()  # it trained
    assert (store.resolve("ft") / "tokenizer.json").exists()
    code, out, err = run(
        capsys, "eval", "ft", "--corpus", str(small_corpus), "--seq-len", "16", "--windows", "2", "--json"
    )
    assert code == 0, err
    code, out, err = run(capsys, "generate", "ft", "-p", "def", "-m", "3", "--json")
    assert code == 0, err
