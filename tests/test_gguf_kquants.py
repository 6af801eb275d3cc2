"""Every common GGML type through `convert from-gguf`, and `convert to-gguf` back.

The blocks are made by a small numpy quantizer written here from ggml's block layouts (ggml-common.h): each type's
parameters (super-block d/dmin, sub-block scales and mins, codes) are chosen from the weights and packed byte by
byte. `gguf.quants.dequantize` (llama.cpp's own numpy code) is the independent reference: it must decode our blocks
to the values the formulas give, and the converted model must hold those values: exactly (group-32 types kept, any
type dequantized) or within the error convert reports (group-16 types kept as 8-bit group 32). Fixtures are written
with the `gguf` package's GGUFWriter, the q/k rows permuted as llama.cpp's converter does.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf as ggml
import mlx.core as mx
import numpy as np
import pytest
from conftest import run_cli as run
from test_gguf import TEXTS, train_bpe

import mlxsuite  # noqa: F401  (loads the fast BLAS before mlx.core)
from mlxsuite import store
from mlxsuite.convert.checkpoint import quantized_layers

D, FFN, HEADS, KV_HEADS = 256, 512, 4, 2
RNG = np.random.default_rng(0)


# ---- a numpy quantizer from ggml's block layouts ---------------------------------------------------------------------


def _f16(x) -> np.ndarray:
    return np.asarray(x, np.float16).reshape(-1, 1).view(np.uint8)


def _sub_affine(w: np.ndarray, sub: int, levels: int, sc_max: int):
    """Per sub-block scale/min (min ≤ 0) quantized to integers against a super-block d and dmin."""
    g = w.reshape(len(w), -1, sub)
    lo = np.minimum(g.min(-1), 0)
    scale = (g.max(-1) - lo) / levels
    d = np.maximum(scale.max(-1, keepdims=True) / sc_max, 1e-8).astype(np.float16).astype(np.float32)
    dmin = np.maximum(-lo.min(-1, keepdims=True) / sc_max, 1e-8).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / d), 1, sc_max)
    m = np.clip(np.round(-lo / dmin), 0, sc_max)
    q = np.clip(np.round((g + (dmin * m)[..., None]) / (d * sc)[..., None]), 0, levels).astype(np.uint8)
    value = (d * sc)[..., None] * q - (dmin * m)[..., None]
    return d, dmin, sc.astype(np.uint8), m.astype(np.uint8), q.reshape(len(w), -1), value.reshape(len(w), -1)


def _sub_symmetric(w: np.ndarray, sub: int, half: int, sc_lim: int):
    """Per sub-block signed scale against a super-block d; codes q − half."""
    g = w.reshape(len(w), -1, sub)
    scale = np.abs(g).max(-1) / (half - 1)
    d = np.maximum(scale.max(-1, keepdims=True) / sc_lim, 1e-8).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / d), 1, sc_lim)
    q = np.clip(np.round(g / (d * sc)[..., None]) + half, 0, 2 * half - 1).astype(np.uint8)
    value = (d * sc)[..., None] * (q.astype(np.float32) - half)
    return d, sc.astype(np.int8), q.reshape(len(w), -1), value.reshape(len(w), -1)


def quantize_k(w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw blocks (n, bytes), the values they stand for (n, 256)) for rows of 256 weights."""
    n = len(w)
    if kind in ("Q4_K", "Q5_K"):
        d, dmin, sc, m, q, value = _sub_affine(w, 32, 15 if kind == "Q4_K" else 31, 63)
        s = np.zeros((n, 12), np.uint8)  # get_scale_min_k4 backwards
        s[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
        s[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
        s[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
        chunks = q.reshape(n, 4, 2, 32)  # 64 values per 32 bytes: low nibbles first
        qs = ((chunks[:, :, 0] & 0xF) | ((chunks[:, :, 1] & 0xF) << 4)).reshape(n, 128)
        parts = [_f16(d), _f16(dmin), s]
        if kind == "Q5_K":
            bit = (chunks >> 4).reshape(n, 8, 32)  # qh[l] bit j: fifth bit of value 32·j + l
            parts.append((bit << np.arange(8, dtype=np.uint8)[:, None]).sum(1, dtype=np.uint8))
        return np.concatenate(parts + [qs], 1), value
    if kind == "Q2_K":
        d, dmin, sc, m, q, value = _sub_affine(w, 16, 3, 15)
        e = q.reshape(n, 2, 4, 32)  # value 128·h + 32·j + l: bits 2j of qs[32h + l]
        qs = (e << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(2, dtype=np.uint8).reshape(n, 64)
        return np.concatenate([sc | (m << 4), qs, _f16(d), _f16(dmin)], 1), value
    if kind == "Q6_K":
        d, sc, q, value = _sub_symmetric(w, 16, 32, 127)
        e = q.reshape(n, 2, 2, 2, 32)  # (half, nibble, ql part, l)
        ql = (e[:, :, 0] & 0xF) | ((e[:, :, 1] & 0xF) << 4)
        qh = sum((e[:, :, a, b] >> 4) << (2 * (2 * a + b)) for a in (0, 1) for b in (0, 1)).astype(np.uint8)
        return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), _f16(d)], 1), value
    # Q3_K: 16 six-bit scales stored as sc + 32, codes 0..7 with the third bit in hmask
    d, sc, q, value = _sub_symmetric(w, 16, 4, 31)
    u = (sc.astype(np.int16) + 32).astype(np.uint32)
    low = u & 0xF
    aux = [low[:, 4 * i : 4 * i + 4] for i in range(4)]
    words = [(a[:, 0] | a[:, 1] << 8 | a[:, 2] << 16 | a[:, 3] << 24) for a in aux]
    hi = u >> 4
    tmp = sum(
        (hi[:, 4 * i : 4 * i + 4] << (2 * i)).dot(np.uint32(1) << np.arange(0, 32, 8, dtype=np.uint32))
        for i in range(4)
    )
    w0, w1 = words[0] | (words[2] << 4), words[1] | (words[3] << 4)
    s = np.stack([w0, w1, tmp], 1).astype("<u4").view(np.uint8)
    e = q.reshape(n, 2, 4, 32)
    qs = ((e & 3) << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(2, dtype=np.uint8).reshape(n, 64)
    hmask = ((e >> 2) << np.arange(8, dtype=np.uint8).reshape(2, 4, 1)).sum((1, 2), dtype=np.uint8)
    return np.concatenate([hmask, qs, s, _f16(d)], 1), value


def quantize(w: np.ndarray, kind: str) -> np.ndarray:
    """Raw bytes (rows, bytes per row) of a float32 matrix in `kind`."""
    if kind in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        return ggml.quants.quantize(w, ggml.GGMLQuantizationType[kind])
    if kind.startswith("IQ4"):  # non-linear tables: random blocks with a sane block scale
        per_block, nbytes = ggml.GGML_QUANT_SIZES[ggml.GGMLQuantizationType[kind]]
        raw = RNG.integers(0, 256, (w.size // per_block, nbytes), dtype=np.uint8)
        raw[:, :2] = _f16(RNG.uniform(-2e-3, 2e-3, len(raw)))
        return raw.reshape(len(w), -1)
    raw, _ = quantize_k(w.reshape(-1, 256), kind)
    return raw.reshape(len(w), -1)


K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


@pytest.mark.parametrize("kind", K_TYPES)
def test_our_k_quant_blocks_decode_as_llama_cpp_says(kind):
    """The quantizer's blocks, decoded by the `gguf` package, give the values our formulas meant (so the fixtures
    below are real ggml blocks), and they are close to the weights."""
    w = RNG.normal(0, 0.05, (8, 512)).astype(np.float32)
    raw, value = quantize_k(w.reshape(-1, 256), kind)
    ref = ggml.quants.dequantize(raw.reshape(8, -1), ggml.GGMLQuantizationType[kind])
    np.testing.assert_allclose(ref, value.reshape(8, 512), rtol=1e-6, atol=1e-7)
    assert np.abs(ref - w).max() < np.abs(w).max() / 2


# ---- fixtures: a tiny GGUF of any type mix -----------------------------------------------------------------------


def _permute(w: np.ndarray, heads: int) -> np.ndarray:  # convert_hf_to_gguf.py
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_weights(vocab: int, arch: str) -> dict[str, np.ndarray]:
    """GGUF-named float weights of a 1-block model (q/k not yet permuted)."""

    def w(*shape):
        return RNG.normal(0, 0.08, shape).astype(np.float32)

    hd = D // HEADS
    out = {"token_embd.weight": w(vocab, D), "output_norm.weight": 1 + w(D), "blk.0.attn_norm.weight": 1 + w(D),
           "blk.0.ffn_norm.weight": 1 + w(D), "blk.0.attn_q.weight": w(D, D),
           "blk.0.attn_k.weight": w(KV_HEADS * hd, D), "blk.0.attn_v.weight": w(KV_HEADS * hd, D),
           "blk.0.attn_output.weight": w(D, D), "blk.0.ffn_gate.weight": w(FFN, D), "blk.0.ffn_up.weight": w(FFN, D),
           "blk.0.ffn_down.weight": w(D, FFN)}  # fmt: skip
    if arch == "qwen3":
        out.update({"blk.0.attn_q_norm.weight": 1 + w(hd), "blk.0.attn_k_norm.weight": 1 + w(hd)})
    if arch == "qwen2":
        out.update({f"blk.0.attn_{x}.bias": w(n) for x, n in (("q", D), ("k", KV_HEADS * hd), ("v", KV_HEADS * hd))})
    return out


def write_fixture(path: Path, tk, types: dict[str, str], arch: str = "llama") -> dict[str, np.ndarray]:
    """A GGUF file with each matrix in its type; returns the values llama.cpp decodes, in Hugging Face row order."""
    vocab = tk.get_vocab_size()
    model = json.loads(tk.to_str())["model"]
    w = ggml.GGUFWriter(path, arch)
    w.add_context_length(512), w.add_embedding_length(D), w.add_block_count(1), w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS), w.add_head_count_kv(KV_HEADS), w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("gpt-2")
    w.add_token_list(sorted(model["vocab"], key=model["vocab"].get))
    w.add_token_types([3 if t.startswith("<|") else 1 for t in sorted(model["vocab"], key=model["vocab"].get)])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    w.add_bos_token_id(1), w.add_eos_token_id(2), w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    reference = {}
    for name, value in tiny_weights(vocab, arch).items():
        heads = {"attn_q": HEADS, "attn_k": KV_HEADS}.get(name.split(".")[-2]) if arch == "llama" else None
        value = _permute(value, heads) if heads and value.ndim == 2 else value
        kind = types.get(name, "F32") if value.ndim == 2 else "F32"
        raw = quantize(value, kind)
        ref = ggml.quants.dequantize(raw, ggml.GGMLQuantizationType[kind]).astype(np.float32)
        reference[name] = _unpermute(ref, heads) if heads and value.ndim == 2 else ref
        w.add_tensor(name, raw, raw_dtype=ggml.GGMLQuantizationType[kind]) if kind != "F32" else w.add_tensor(name, raw)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return reference


MIX = {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_K", "blk.0.attn_k.weight": "Q5_0",
       "blk.0.attn_v.weight": "Q6_K", "blk.0.attn_output.weight": "Q5_K", "blk.0.ffn_gate.weight": "Q3_K",
       "blk.0.ffn_up.weight": "Q2_K", "blk.0.ffn_down.weight": "Q4_1"}  # fmt: skip
MIX2 = {"token_embd.weight": "Q4_0", "blk.0.attn_q.weight": "Q5_1", "blk.0.attn_k.weight": "BF16",
        "blk.0.attn_v.weight": "F16", "blk.0.attn_output.weight": "Q8_0"}  # fmt: skip
HF = {"token_embd": "model.embed_tokens", "blk.0.attn_q": "model.layers.0.self_attn.q_proj",
      "blk.0.attn_k": "model.layers.0.self_attn.k_proj", "blk.0.attn_v": "model.layers.0.self_attn.v_proj",
      "blk.0.attn_output": "model.layers.0.self_attn.o_proj", "blk.0.ffn_gate": "model.layers.0.mlp.gate_proj",
      "blk.0.ffn_up": "model.layers.0.mlp.up_proj", "blk.0.ffn_down": "model.layers.0.mlp.down_proj"}  # fmt: skip


def folder_weights(folder: Path) -> dict[str, np.ndarray]:
    """Every matrix of a converted folder as float32 (quantized layers dequantized with their own parameters)."""
    tensors = mx.load(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    layers = quantized_layers(config, {k: v.shape for k, v in tensors.items()})
    out = {}
    for name, v in tensors.items():
        module = name[: -len(".weight")]
        if name.endswith(".weight") and module in layers:
            p = layers[module]
            scales, biases = tensors[f"{module}.scales"].astype(mx.float32), tensors[f"{module}.biases"]
            v = mx.dequantize(v, scales, biases.astype(mx.float32), group_size=p["group_size"], bits=p["bits"])
        if not name.endswith((".scales", ".biases")):
            out[name] = np.array(v.astype(mx.float32))
    return out


MIX3 = {"blk.0.ffn_up.weight": "IQ4_XS", "blk.0.ffn_gate.weight": "IQ4_NL"}


@pytest.mark.parametrize("mix", [MIX, MIX2, MIX3], ids=["kquants", "legacy", "iq4"])
def test_every_type_kept_and_dequantized(tmp_path, capsys, mix):
    tk = train_bpe(digits=False)
    reference = write_fixture(tmp_path / "m.gguf", tk, mix)
    code, out, err = run(capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "kept"), "--json")
    assert code == 0, err
    notes = json.loads(out)["notes"]
    kept = folder_weights(tmp_path / "kept")
    code, _, err = run(
        capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "f32"), "--dtype", "float32"
    )
    assert code == 0, err
    exact = folder_weights(tmp_path / "f32")
    config = json.loads((tmp_path / "kept" / "config.json").read_text())
    requantized = config["mlxsuite"]["converted_from"].get("requantized", {})
    for name, kind in mix.items():
        hf = HF[name[: -len(".weight")]] + ".weight"
        ref = reference[name]
        np.testing.assert_array_equal(exact[hf], ref, err_msg=f"{kind} dequantized")
        if kind in ("Q2_K", "Q3_K", "Q6_K"):  # 8-bit group 32: within the reported error
            bound = requantized[kind]["max_relative_error"] * np.abs(ref).max()
            assert 0 < np.abs(kept[hf] - ref).max() <= bound * 1.0001, kind
            assert requantized[kind]["max_relative_error"] < 0.01
        else:
            np.testing.assert_allclose(kept[hf], ref, rtol=1e-6, atol=1e-7, err_msg=f"{kind} kept")
    assert sorted(requantized) == sorted(k for k in set(mix.values()) if k in ("Q2_K", "Q3_K", "Q6_K"))
    assert all(any(k in n for n in notes) for k in requantized)
    from mlx_lm import load as mlx_lm_load  # the folder opens in mlx-lm as it is

    tokens = mx.array([tk.encode(TEXTS[0]).ids])
    ours = store.load(str(tmp_path / "kept"), "lm").model(tokens)
    model, _ = mlx_lm_load(str(tmp_path / "kept"))
    assert mx.allclose(model(tokens), ours, rtol=1e-4, atol=1e-4)


def test_round_trip_through_to_gguf(tmp_path, capsys):
    """ours (kept-quantized mix) → to-gguf → from-gguf: equal logits; Q4_1/Q8_0 layers keep their bytes (Q4_0/Q5_0
    become Q4_1/Q5_1 exactly, the 8-bit layer requantized from Q6_K becomes F32)."""
    tk = train_bpe(digits=False)
    mix = {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_0", "blk.0.attn_k.weight": "Q5_0",
           "blk.0.attn_v.weight": "Q6_K", "blk.0.attn_output.weight": "Q5_1", "blk.0.ffn_gate.weight": "F16",
           "blk.0.ffn_up.weight": "Q4_1", "blk.0.ffn_down.weight": "Q8_0"}  # fmt: skip
    write_fixture(tmp_path / "m.gguf", tk, mix)
    tokens = mx.array([tk.encode(TEXTS[1]).ids])
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "a"))[0] == 0
    for outtype in ([], ["--outtype", "f32"]):
        out = tmp_path / f"b{len(outtype)}.gguf"
        code, stdout, err = run(capsys, "convert", "to-gguf", str(tmp_path / "a"), str(out), *outtype, "--json")
        assert code == 0, err
        assert run(capsys, "convert", "from-gguf", str(out), str(tmp_path / f"c{len(outtype)}"))[0] == 0
        a, c = (store.load(str(tmp_path / x), "lm", dequantize=True) for x in ("a", f"c{len(outtype)}"))
        assert mx.allclose(a.model(tokens), c.model(tokens), rtol=1e-5, atol=1e-5)
        assert all("0.00e+00 RMS" in n for n in json.loads(stdout)["notes"] if "codes" in n)
    src, back = ggml.GGUFReader(tmp_path / "m.gguf"), ggml.GGUFReader(tmp_path / "b0.gguf")
    ours = {t.name: t for t in back.tensors}
    for t in src.tensors:
        if t.tensor_type.name in ("Q4_1", "Q8_0"):
            assert ours[t.name].tensor_type == t.tensor_type and np.array_equal(ours[t.name].data, t.data), t.name
    meta = {k: f for k, f in back.fields.items()}
    assert bytes(meta["tokenizer.chat_template"].parts[-1]).decode().startswith("{% for m")


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_architectures_round_trip(tmp_path, capsys, arch):
    tk = train_bpe(digits=False)
    reference = write_fixture(tmp_path / "m.gguf", tk, {"blk.0.ffn_up.weight": "Q4_K"}, arch=arch)
    assert (
        run(capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "a"), "--dtype", "float32")[0] == 0
    )
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_type"] == arch
    weights = folder_weights(tmp_path / "a")
    extra = {"qwen3": {"q_norm.weight": "attn_q_norm.weight", "k_norm.weight": "attn_k_norm.weight"},
             "qwen2": {f"{x}_proj.bias": f"attn_{x}.bias" for x in "qkv"}}[arch]  # fmt: skip
    for hf, name in {"q_proj.weight": "attn_q.weight", "k_proj.weight": "attn_k.weight", **extra}.items():
        np.testing.assert_array_equal(weights[f"model.layers.0.self_attn.{hf}"], reference[f"blk.0.{name}"])
    assert run(capsys, "convert", "to-gguf", str(tmp_path / "a"), str(tmp_path / "b.gguf"))[0] == 0
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "b.gguf"), str(tmp_path / "c"))[0] == 0
    tokens = mx.array([tk.encode(TEXTS[2]).ids])
    a, c = (store.load(str(tmp_path / x), "lm", dequantize=True) for x in ("a", "c"))
    assert mx.allclose(a.model(tokens), c.model(tokens), rtol=1e-5, atol=1e-5)


def test_llama3_rope_freqs_round_trip(tmp_path, capsys):
    tk = train_bpe(digits=False)
    write_fixture(tmp_path / "m.gguf", tk, {})
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "a"))[0] == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)  # fmt: skip
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling}))
    assert run(capsys, "convert", "to-gguf", str(tmp_path / "a"), str(tmp_path / "b.gguf"))[0] == 0
    assert "rope_freqs.weight" in {t.name for t in ggml.GGUFReader(tmp_path / "b.gguf").tensors}
    code, _, err = run(capsys, "convert", "from-gguf", str(tmp_path / "b.gguf"), str(tmp_path / "c"))
    assert code == 2 and "rope_freqs" in err  # 64 is not a Llama 3.x original context: named, not guessed
    scaling["original_max_position_embeddings"] = 8192
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling}))
    assert run(capsys, "convert", "to-gguf", str(tmp_path / "a"), str(tmp_path / "b.gguf"), "--force")[0] == 0
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "b.gguf"), str(tmp_path / "c"))[0] == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["rope_scaling"] == scaling
    tokens = mx.array([list(range(3, 200))])  # positions past the high-frequency wavelength
    a, c = (store.load(str(tmp_path / x), "lm", dequantize=True) for x in ("a", "c"))
    assert mx.allclose(a.model(tokens), c.model(tokens), rtol=1e-5, atol=1e-5)


def test_unsupported_type_is_one_line(tmp_path, capsys):
    tk = train_bpe(digits=False)
    write_fixture(tmp_path / "m.gguf", tk, {"blk.0.ffn_up.weight": "Q4_K"})
    data = bytearray((tmp_path / "m.gguf").read_bytes())
    key = b"blk.0.ffn_up.weight"
    at = data.find(key) + len(key)
    data[at + 4 + 16 : at + 4 + 20] = int(ggml.GGMLQuantizationType.IQ2_XXS).to_bytes(4, "little")
    (tmp_path / "x.gguf").write_bytes(bytes(data))
    code, _, err = run(capsys, "convert", "from-gguf", str(tmp_path / "x.gguf"), str(tmp_path / "out"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "IQ2_XXS (blk.0.ffn_up.weight)" in err, err
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, "convert", "to-gguf", str(tmp_path / "nothing"), str(tmp_path / "o.gguf"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_a_model_trained_here_goes_to_gguf(tmp_path, capsys, qk_norm):
    """A model of this project (SentencePiece tokenizer.model) → to-gguf → from-gguf: equal logits, and the GGUF's
    `llama` vocabulary encodes code as our SentencePiece model does."""
    from conftest import stdlib_text

    from mlxsuite.data.tokenizer import train_tokenizer
    from mlxsuite.models import lm

    text = stdlib_text(40_000)
    tok = train_tokenizer([text], 400, tmp_path / "tokenizer.model")
    args = lm.ModelArgs(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=400, qk_norm=qk_norm)  # fmt: skip
    model = lm.Model(args)
    mx.eval(model.parameters())
    store.save(tmp_path / "ours", model, tok)
    code, _, err = run(capsys, "convert", "to-gguf", str(tmp_path / "ours"), str(tmp_path / "o.gguf"))
    assert code == 0, err
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "o.gguf"), str(tmp_path / "back"))[0] == 0
    sample = text[-2000:]
    ids = tok.encode(sample)
    back = store.load(str(tmp_path / "back"), "lm")
    assert back.tokenizer.encode(sample) == ids
    tokens = mx.array([ids[:64]])
    assert mx.allclose(model(tokens), back.model(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "qargs", [["--q-bits", "3", "--q-group-size", "64"], ["--q-mode", "mxfp4"]], ids=["3bit", "mxfp4"]
)
def test_quantized_layers_no_ggml_type_holds_go_as_floats(tmp_path, capsys, qargs):
    tk = train_bpe(digits=False)
    write_fixture(tmp_path / "m.gguf", tk, {})
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "f"))[0] == 0
    assert run(capsys, "convert", "quantize", str(tmp_path / "f"), str(tmp_path / "q"), *qargs)[0] == 0
    code, out, err = run(capsys, "convert", "to-gguf", str(tmp_path / "q"), str(tmp_path / "q.gguf"), "--json")
    assert code == 0, err
    assert set(json.loads(out)["config"]["tensor_types"]) == {"F32"}
    assert run(capsys, "convert", "from-gguf", str(tmp_path / "q.gguf"), str(tmp_path / "back"))[0] == 0
    tokens = mx.array([tk.encode(TEXTS[0]).ids])
    a, c = (store.load(str(tmp_path / x), "lm", dequantize=True) for x in ("q", "back"))
    assert mx.allclose(a.model(tokens), c.model(tokens), rtol=1e-5, atol=1e-5)
