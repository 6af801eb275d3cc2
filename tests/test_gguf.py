"""`mlxsuite convert from-gguf` on synthetic GGUF files.

The fixtures are written the way llama.cpp's converter writes a Hugging Face llama: tensors renamed and the q/k rows
permuted with mlx-lm's own GGUF exporter helpers (`mlx_lm.gguf.translate_weight_names`, `permute_weights`), metadata
under `llama.*` and `tokenizer.ggml.*`, saved by `mx.save_gguf`. `mx.save_gguf` writes only F32/F16/I8/I16/I32
tensors, so the quantized fixtures are built by hand: Q8_0/Q4_0/Q4_1 blocks packed with numpy from ggml's block
layouts, saved as an I8 tensor of the same bytes, and the tensor's type and first dimension patched in the header.
The reference is always mlx-lm's llama on the Hugging Face weights (for quantized tensors: the values the ggml
blocks decode to).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import run_cli as run

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)
from mlxsuite.convert import gguf_reader as gguf
from mlxsuite.platform.errors import UserError

D, FFN, HEADS, KV_HEADS, LAYERS = 64, 128, 4, 2, 2
TEXTS = [
    "def add(a, b):\n    return a + b  # 12345\n",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café, 東京 🙂\ttab  two spaces",
    "<|im_start|>user\nhello<|im_end|>",
]


# ---- fixtures: tokenizers --------------------------------------------------------------------------------------------


def train_bpe(digits: bool):
    """A small byte-level BPE trained with `tokenizers` (the reference the GGUF vocabulary must reproduce)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    if digits:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [t * 3 for t in TEXTS] + ["def function(x): return x * 2 + 10 for i in range(100)"] * 5
    tk.train_from_iterator(corpus, trainer)
    return tk


def bpe_metadata(tk, pre: str) -> dict:
    model = json.loads(tk.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t.startswith("<|") else 1 for t in tokens]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(1, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(2, dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(False),
        "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}",
    }


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """A SentencePiece BPE trained with Llama's settings (identity normalizer, byte fallback, dummy prefix)."""
    import sentencepiece as sp_lib

    lines = TEXTS * 4 + [f"line {i} with words model weights {i * 37}" for i in range(40)]
    prefix = tmp_path_factory.mktemp("spm") / "llama"
    sp_lib.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 5), model_prefix=str(prefix), vocab_size=340, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, minloglevel=2,
    )  # fmt: skip
    return Path(f"{prefix}.model")


def spm_metadata(sp_model: Path) -> dict:
    """A llama-style GGUF vocabulary from a SentencePiece model, as llama.cpp's converter writes it."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(sp_model).read_bytes())
    spec = proto.trainer_spec
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p.piece for p in proto.pieces],
        "tokenizer.ggml.scores": mx.array([p.score for p in proto.pieces], dtype=mx.float32),
        "tokenizer.ggml.token_type": mx.array([p.type for p in proto.pieces], dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": mx.array(spec.bos_id, dtype=mx.uint32),
        "tokenizer.ggml.eos_token_id": mx.array(spec.eos_id, dtype=mx.uint32),
        "tokenizer.ggml.unknown_token_id": mx.array(spec.unk_id, dtype=mx.uint32),
        "tokenizer.ggml.add_bos_token": mx.array(True),
        "tokenizer.ggml.add_space_prefix": mx.array(proto.normalizer_spec.add_dummy_prefix),
    }


# ---- fixtures: weights and files -------------------------------------------------------------------------------------


def hf_weights(vocab: int, tie: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hd = D // HEADS

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, D, scale=0.5), "model.norm.weight": 1 + w(D)}
    if not tie:
        t["lm_head.weight"] = w(vocab, D)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(HEADS * hd, D, scale=0.3)
        t[p + "self_attn.k_proj.weight"] = w(KV_HEADS * hd, D, scale=0.3)
        t[p + "self_attn.v_proj.weight"] = w(KV_HEADS * hd, D)
        t[p + "self_attn.o_proj.weight"] = w(D, HEADS * hd)
        t[p + "mlp.gate_proj.weight"] = w(FFN, D)
        t[p + "mlp.up_proj.weight"] = w(FFN, D)
        t[p + "mlp.down_proj.weight"] = w(D, FFN)
        t[p + "input_layernorm.weight"] = 1 + w(D)
        t[p + "post_attention_layernorm.weight"] = 1 + w(D)
    return t


def hf_config(vocab: int, tie: bool) -> dict:
    return {
        "model_type": "llama", "hidden_size": D, "num_hidden_layers": LAYERS, "intermediate_size": FFN,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": tie,
    }  # fmt: skip


# ggml block quantization (ggml-quants.c layouts): fp16 d [, fp16 m], then the quants
def q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = x.reshape(-1, 32)
    d = (np.abs(b).max(1) / 127).astype(np.float16)
    q = np.round(b / np.maximum(d.astype(np.float32), 1e-8)[:, None]).clip(-127, 127).astype(np.int8)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)
    return blocks, (q * d.astype(np.float32)[:, None]).reshape(x.shape)


def _nibbles(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)  # byte j: element j low, element j + 16 high


def q4_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = x.reshape(-1, 32)
    d = (np.abs(b).max(1) / 8).astype(np.float16)
    q = (np.round(b / np.maximum(d.astype(np.float32), 1e-8)[:, None]) + 8).clip(0, 15).astype(np.uint8)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), _nibbles(q)], axis=1)
    return blocks, ((q.astype(np.float32) - 8) * d.astype(np.float32)[:, None]).reshape(x.shape)


def q4_1(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = x.reshape(-1, 32)
    lo, hi = b.min(1), b.max(1)
    d, m = ((hi - lo) / 15).astype(np.float16), lo.astype(np.float16)
    q = np.round((b - m.astype(np.float32)[:, None]) / d.astype(np.float32)[:, None]).clip(0, 15).astype(np.uint8)
    dm = np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2)], axis=1)
    blocks = np.concatenate([dm, _nibbles(q)], axis=1)
    values = q.astype(np.float32) * d.astype(np.float32)[:, None] + m.astype(np.float32)[:, None]
    return blocks, values.reshape(x.shape)


QUANTIZERS = {"Q8_0": q8_0, "Q4_0": q4_0, "Q4_1": q4_1}


def write_gguf(path: Path, weights: dict, metadata: dict, quant: dict[str, str] | None = None, permute=True) -> dict:
    """Write `weights` (Hugging Face names, float32) as llama.cpp would; `quant` maps Hugging Face names to a ggml
    block type. Returns the Hugging Face weights the file decodes to (quantized values where quantized)."""
    from mlx_lm.gguf import permute_weights, translate_weight_names

    quant = quant or {}
    decoded, tensors, patches = {}, {}, {}
    for name, w in weights.items():
        rows_as_stored = w
        if name in quant:
            blocks, values = QUANTIZERS[quant[name]](w)
            decoded[name] = values
            rows_as_stored = blocks.reshape(w.shape[0], -1).view(np.int8)  # the bytes of each row's blocks
        else:
            decoded[name] = w
        if permute and "q_proj" in name:
            rows_as_stored = np.array(permute_weights(mx.array(rows_as_stored), HEADS, HEADS))
        elif permute and "k_proj" in name:
            rows_as_stored = np.array(permute_weights(mx.array(rows_as_stored), HEADS, KV_HEADS))
        gname = translate_weight_names(name)
        tensors[gname] = mx.array(rows_as_stored)
        if name in quant:
            patches[gname] = (quant[name], w.shape[-1])
    meta = {
        "general.architecture": "llama",
        "llama.embedding_length": mx.array(D, dtype=mx.uint32),
        "llama.block_count": mx.array(LAYERS, dtype=mx.uint32),
        "llama.feed_forward_length": mx.array(FFN, dtype=mx.uint32),
        "llama.attention.head_count": mx.array(HEADS, dtype=mx.uint32),
        "llama.attention.head_count_kv": mx.array(KV_HEADS, dtype=mx.uint32),
        "llama.rope.dimension_count": mx.array(D // HEADS, dtype=mx.uint32),
        "llama.rope.freq_base": mx.array(10000.0, dtype=mx.float32),
        "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5, dtype=mx.float32),
        "llama.context_length": mx.array(256, dtype=mx.uint32),
        **metadata,
    }
    mx.save_gguf(str(path), tensors, meta)
    for gname, (qtype, cols) in patches.items():
        _patch_type(path, gname, qtype, cols)
    return decoded


def _patch_type(path: Path, name: str, qtype: str, cols: int) -> None:
    """Turn the I8 tensor `name` (the raw bytes of ggml blocks) into a `qtype` tensor of `cols` columns."""
    data = bytearray(path.read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.find(key) + len(key)
    ndim, bytes_per_row = struct.unpack_from("<IQ", data, at)
    assert ndim == 2 and struct.unpack_from("<I", data, at + 4 + 8 * ndim)[0] == gguf.GGML_TYPE_IDS["I8"]
    struct.pack_into("<Q", data, at + 4, cols)
    struct.pack_into("<I", data, at + 4 + 8 * ndim, gguf.GGML_TYPE_IDS[qtype])
    path.write_bytes(bytes(data))


def mlx_lm_reference(weights: dict[str, np.ndarray], config: dict):
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    return model


def load_mlx_lm(folder: Path):
    from mlx_lm import load

    return load(str(folder))


# ---- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_f32_gguf_matches_the_hugging_face_model(tmp_path, capsys, tie):
    tk = train_bpe(digits=True)
    vocab = tk.get_vocab_size()
    weights = hf_weights(vocab, tie)
    write_gguf(tmp_path / "m.gguf", weights, bpe_metadata(tk, "smollm"))
    code, out, err = run(capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "conv"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["config"]["tie_word_embeddings"] is tie and report["config"]["num_key_value_heads"] == KV_HEADS
    model, tokenizer = load_mlx_lm(tmp_path / "conv")
    ref = mlx_lm_reference(weights, hf_config(vocab, tie))
    tokens = mx.array([tk.encode(TEXTS[0]).ids])
    assert mx.allclose(model(tokens), ref(tokens), rtol=1e-4, atol=1e-4)
    # the tokenizer: mlx-lm's encodes as the trained one, chat template and specials kept
    for text in TEXTS:
        assert tokenizer.encode(text) == tk.encode(text).ids
    assert tokenizer.eos_token_id == 2 and tokenizer.chat_template.startswith("{% for m in messages %}")
    assert tokenizer.encode("<|im_start|>")[0] == 1


def test_skipping_the_unpermute_gives_other_logits(tmp_path, capsys, monkeypatch):
    tk = train_bpe(digits=False)
    vocab = tk.get_vocab_size()
    weights = hf_weights(vocab, tie=True)
    write_gguf(tmp_path / "m.gguf", weights, bpe_metadata(tk, "gpt-2"))
    monkeypatch.setattr(gguf, "unpermute_rows", lambda w, n: w)
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "raw"))[0] == 0
    model, _ = load_mlx_lm(tmp_path / "raw")
    ref = mlx_lm_reference(weights, hf_config(vocab, True))
    tokens = mx.array([tk.encode(TEXTS[1]).ids])
    assert not mx.allclose(model(tokens), ref(tokens), rtol=1e-2, atol=1e-2)


def test_unpermute_inverts_llama_cpp_permutation_on_packed_rows():
    from mlx_lm.gguf import permute_weights

    w = mx.random.normal((KV_HEADS * 16, 64))
    q, scales, biases = mx.quantize(w, group_size=32, bits=4)
    for part in (w, q, scales, biases):
        assert mx.array_equal(gguf.unpermute_rows(permute_weights(part, HEADS, KV_HEADS), KV_HEADS), part)
    # unpermuting the packed rows, scales and biases is unpermuting the dequantized weight
    back = [gguf.unpermute_rows(permute_weights(p, HEADS, KV_HEADS), KV_HEADS) for p in (q, scales, biases)]
    assert mx.array_equal(
        mx.dequantize(*back, group_size=32, bits=4), mx.dequantize(q, scales, biases, group_size=32, bits=4)
    )


def test_quantized_gguf_kept_and_dequantized(tmp_path, capsys):
    tk = train_bpe(digits=False)
    vocab = tk.get_vocab_size()
    weights = hf_weights(vocab, tie=True)
    # SmolLM2-like: an 8-bit embedding, the blocks in Q4_1 and Q4_0; norms stay F32
    quant = {"model.embed_tokens.weight": "Q8_0"}
    for i in range(LAYERS):
        for j, proj in enumerate(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")):
            quant[f"model.layers.{i}.{proj}.weight"] = "Q4_1" if j % 2 == 0 else "Q4_0"
        quant[f"model.layers.{i}.mlp.up_proj.weight"] = "Q8_0"
    decoded = write_gguf(tmp_path / "q.gguf", weights, bpe_metadata(tk, "gpt-2"), quant)
    ref = mlx_lm_reference(decoded, hf_config(vocab, True))
    tokens = mx.array([tk.encode(TEXTS[0]).ids])
    expected = ref(tokens)

    assert run(capsys, "convert", "from-gguf", str(tmp_path / "q.gguf"), str(tmp_path / "kept"))[0] == 0
    config = json.loads((tmp_path / "kept" / "config.json").read_text())
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    # the most common parameters folder-wide (4-bit, group 32), mlx-lm's per-layer entries for the others
    assert {k: config["quantization"][k] for k in ("group_size", "bits", "mode")} == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
    }
    assert "model.layers.0.self_attn.q_proj" not in config["quantization"]
    assert config["quantization"]["model.layers.1.mlp.up_proj"]["bits"] == 8
    model, _ = load_mlx_lm(tmp_path / "kept")
    assert isinstance(model.model.layers[0].self_attn.k_proj, nn.QuantizedLinear)
    assert isinstance(model.model.layers[0].self_attn.o_proj, nn.Linear)  # stored F32
    # float16 scales make the activations float16 (as mlx-lm runs any GGUF-derived quantized model): 1% of the range
    assert mx.abs(model(tokens).astype(mx.float32) - expected).max().item() < 0.01 * mx.abs(expected).max().item()

    code, _, err = run(
        capsys, "convert", "from-gguf", str(tmp_path / "q.gguf"), str(tmp_path / "f32"), "--dtype", "float32"
    )
    assert code == 0, err
    model, _ = load_mlx_lm(tmp_path / "f32")
    # dequantized weights are exactly what the ggml blocks decode to, rows back in Hugging Face order
    for name, values in decoded.items():
        module = model
        for part in name.split(".")[:-1]:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        assert np.array_equal(np.array(module.weight), values), name
    assert mx.allclose(model(tokens), expected, rtol=1e-4, atol=1e-4)


def test_sentencepiece_gguf_tokenizer(tmp_path, capsys, spm):
    import sentencepiece as sp_lib

    original = sp_lib.SentencePieceProcessor(model_file=str(spm))
    weights = hf_weights(original.vocab_size(), tie=False)
    write_gguf(tmp_path / "s.gguf", weights, spm_metadata(spm))
    code, _, err = run(capsys, "convert", "from-gguf", str(tmp_path / "s.gguf"), str(tmp_path / "conv"))
    assert code == 0, err
    rebuilt = sp_lib.SentencePieceProcessor(model_file=str(tmp_path / "conv" / "tokenizer.model"))
    _, tokenizer = load_mlx_lm(tmp_path / "conv")
    bos = original.bos_id()
    for text in TEXTS:
        assert rebuilt.encode(text) == original.encode(text)
        assert tokenizer.encode(text) == [bos] + original.encode(text)  # llama's add_bos_token
        assert tokenizer.decode(tokenizer.encode(text)[1:]) == original.decode(original.encode(text))
    # this project reads the folder as mlx-lm does: tokenizer.json (with its BOS), not the bare tokenizer.model
    from mlxsuite.data.tokenizer import load_tokenizer

    ours = load_tokenizer(tmp_path / "conv")
    assert [ours.encode(text) for text in TEXTS] == [tokenizer.encode(text) for text in TEXTS]


def test_header_scan_and_refusals(tmp_path, capsys):
    tk = train_bpe(digits=False)
    vocab = tk.get_vocab_size()
    meta = bpe_metadata(tk, "gpt-2")
    write_gguf(tmp_path / "m.gguf", hf_weights(vocab, tie=True), meta)
    header = gguf.read_header(tmp_path / "m.gguf")
    assert header.architecture == "llama" and header.tensors["blk.1.attn_k.weight"].shape == (KV_HEADS * 16, D)
    assert gguf.hf_name("blk.1.ffn_down.weight") == "model.layers.1.mlp.down_proj.weight"
    assert gguf.hf_name("output_norm.weight") == "model.norm.weight" and gguf.hf_name("rope_freqs.weight") is None

    def refused(path: Path, *words):
        out = tmp_path / "out"
        code, stdout, err = run(capsys, "convert", "from-gguf", str(path), str(out))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err
        assert not out.exists() and not list(tmp_path.glob(".out.*"))

    write_gguf(tmp_path / "a.gguf", hf_weights(vocab, tie=True), {**meta, "general.architecture": "gemma2"})
    refused(tmp_path / "a.gguf", "architecture", "gemma2")
    data = bytearray((tmp_path / "m.gguf").read_bytes())  # an F32 tensor marked Q6_K
    key = struct.pack("<Q", len("output_norm.weight")) + b"output_norm.weight"
    at = data.find(key) + len(key)
    struct.pack_into("<I", data, at + 4 + 8, gguf.GGML_TYPE_IDS["Q6_K"])
    (tmp_path / "k.gguf").write_bytes(bytes(data))
    refused(tmp_path / "k.gguf", "Q6_K", "output_norm.weight")
    write_gguf(tmp_path / "p.gguf", hf_weights(vocab, tie=True), {**meta, "tokenizer.ggml.pre": "deepseek-coder"})
    refused(tmp_path / "p.gguf", "pre-tokenizer", "deepseek-coder")
    extra = {**hf_weights(vocab, tie=True), "model.layers.0.self_attn.rotary_emb.weight": np.ones(8, np.float32)}
    write_gguf(tmp_path / "x.gguf", extra, meta)
    refused(tmp_path / "x.gguf", "blk.0.self_attn.rotary_emb.weight")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    refused(tmp_path / "junk.gguf", "not a readable GGUF")
    refused(tmp_path / "missing.gguf", "not found")
    with pytest.raises(UserError, match="head"):
        gguf.unpermute_rows(mx.zeros((6, 4)), 4)


def test_gguf_model_folder_converts_once(tmp_path, monkeypatch):
    from mlxsuite.convert.from_gguf import gguf_model_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tk = train_bpe(digits=False)
    write_gguf(tmp_path / "m.gguf", hf_weights(tk.get_vocab_size(), tie=True), bpe_metadata(tk, "gpt-2"))
    folder = gguf_model_folder(tmp_path / "m.gguf")
    assert folder.parent == tmp_path / "cache" / "mlxsuite" / "gguf" and (folder / "tokenizer.json").is_file()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert gguf_model_folder(tmp_path / "m.gguf") == folder and (folder / "config.json").stat().st_mtime_ns == stamp
    assert gguf_model_folder(tmp_path / "m.gguf", dtype="float16") != folder


def test_a_gguf_file_is_a_model_reference(tmp_path, capsys, monkeypatch):
    """Every command that takes a model takes a .gguf file (converted once into the cache): the loader gives the
    same logits as mlx-lm on the converted weights, and `generate` runs on the file directly."""
    from mlxsuite import store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tk = train_bpe(digits=True)
    weights = hf_weights(tk.get_vocab_size(), tie=True)
    write_gguf(tmp_path / "m.gguf", weights, bpe_metadata(tk, "smollm"))
    loaded = store.load(str(tmp_path / "m.gguf"), "lm")
    tokens = mx.array([tk.encode(TEXTS[0]).ids])
    ref = mlx_lm_reference(weights, hf_config(tk.get_vocab_size(), True))
    assert mx.allclose(loaded.model(tokens), ref(tokens), rtol=1e-4, atol=1e-4)
    assert loaded.folder.is_relative_to(tmp_path / "cache")
    code, out, err = run(
        capsys, "generate", str(tmp_path / "m.gguf"), "-p", TEXTS[0][:20], "-m", "3", "--json", "--ignore-chat-template"
    )
    assert code == 0, err
    # the greedy continuation, by mlx-lm's model on the same weights
    ids = loaded.tokenizer.encode(TEXTS[0][:20])
    for _ in range(3):
        ids.append(int(mx.argmax(ref(mx.array([ids]))[0, -1])))
    whole, prompt = loaded.tokenizer.decode(ids), loaded.tokenizer.decode(ids[:-3])
    assert whole.startswith(prompt) and len(whole) > len(prompt)
    assert json.loads(out)["completion"] == whole[len(prompt) :]
