"""What `convert to-gguf` writes, tensor by tensor and for the tokenizer, in llama.cpp's formats.

- MLX affine layers whose blocks a ggml type holds keep their codes: 4-bit group 32 → Q4_1 (d = scale, m = bias),
  5-bit group 32 → Q5_1, 8-bit group 32 with bias = −128·scale (what a Q8_0 import gives) → Q8_0. Only the scales
  and biases round to float16 (ggml's block header); `encode_affine` returns the weight change that causes.
- Float tensors (and quantized layers that no ggml type holds, dequantized) go through the `gguf` package's own
  quantizers (`gguf.quants.quantize`: F16, BF16, Q8_0, Q4_0, Q4_1 as llama.cpp's reference code).
- The tokenizer: a byte-level BPE `tokenizer.json` becomes llama.cpp's `gpt2` vocabulary (tokens, token types,
  merges, `tokenizer.ggml.pre` recognised from its pre-tokenizer), a SentencePiece BPE `tokenizer.model` (models
  trained here) its `llama` vocabulary (pieces, scores, types); special ids, add-BOS and the chat template come from
  the `gguf` package's `SpecialVocab` (llama.cpp's own reader of tokenizer_config.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import gguf as ggml
import numpy as np

from mlxsuite.convert import gguf_blocks as blocks
from mlxsuite.convert.gguf_tokenizer import CONTROL, NORMAL, SPLIT_REGEX, UNUSED, USER_DEFINED
from mlxsuite.platform.errors import UserError

OUTTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
KEPT = {(4, 32): "Q4_1", (5, 32): "Q5_1", (8, 32): "Q8_0"}  # (bits, group) → the ggml type holding those codes


def unpack_codes(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """MLX's packed uint32 rows → the unsigned codes (rows, cols): the inverse of `gguf_blocks.pack_codes`."""
    stream = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), axis=-1, bitorder="little")
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (stream.reshape(len(packed), cols, bits).astype(np.uint16) @ weights).astype(np.uint8)


def kept_type(bits: int, group: int, scales: np.ndarray, biases: np.ndarray) -> Optional[str]:
    """The ggml type that holds this MLX affine layer's codes, or None."""
    kind = KEPT.get((bits, group))
    if kind == "Q8_0" and not np.array_equal(biases.astype(np.float32), -128 * scales.astype(np.float32)):
        return None
    return kind


def encode_affine(codes: np.ndarray, scales: np.ndarray, biases: np.ndarray, kind: str) -> tuple[np.ndarray, dict]:
    """Blocks of `kind` (Q4_1, Q5_1, Q8_0) for codes (rows, cols) with per-32 scales/biases (float32), and the
    weight change from rounding them to float16: {"max": largest |Δw| / largest |w|, "sq": Σ Δw², "ref": Σ w²}."""
    rows, cols = codes.shape
    d = scales.astype(np.float16).reshape(-1, 1)
    m = biases.astype(np.float16).reshape(-1, 1)
    q = codes.reshape(-1, 32)
    if kind == "Q8_0":
        body = [(q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)]
        m = (-128 * d.astype(np.float32)).astype(np.float32)
    else:
        low = q & 0xF
        packed = (low[:, :16] | (low[:, 16:] << 4)).astype(np.uint8)
        body = [m.view(np.uint8), packed]
        if kind == "Q5_1":
            qh = ((q >> 4).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
            body = [m.view(np.uint8), qh.astype("<u4").reshape(-1, 1).view(np.uint8), packed]
    raw = np.concatenate([d.view(np.uint8), *body], axis=1).reshape(rows, -1)
    exact = q * scales.reshape(-1, 1).astype(np.float32) + biases.reshape(-1, 1).astype(np.float32)
    stored = q * d.astype(np.float32) + m.astype(np.float32)
    diff = np.abs(stored - exact)
    err = {"max": float(diff.max() / max(np.abs(exact).max(), 1e-30)), "sq": float((diff**2).sum()),
           "ref": float((exact**2).sum())}  # fmt: skip
    return raw, err


def encode_float(w: np.ndarray, kind: str) -> np.ndarray:
    """A float32 tensor in `kind` (F32, F16, BF16, Q8_0, Q4_0, Q4_1) with llama.cpp's reference quantizers."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    return w if kind == "F32" else ggml.quants.quantize(w, ggml.GGMLQuantizationType[kind])


def fits(kind: str, cols: int) -> bool:
    return cols % blocks.BLOCKS[kind][0] == 0


# ---- tokenizer ------------------------------------------------------------------------------------------------------


def pre_tokenizer_name(pre: Optional[dict]) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer (the ones `gguf_tokenizer` rebuilds)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if level is not None and level.get("use_regex", True):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    if level is not None and kinds == ["Split", "ByteLevel"]:
        regex = steps[0].get("pattern", {}).get("Regex")
        for name, family in (("llama-bpe", "llama3"), ("qwen2", "qwen2")):
            if regex == SPLIT_REGEX[family]:
                return name
    raise UserError(
        f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) has no llama.cpp name here"
    )


def bpe_vocabulary(folder: Path, vocab_size: int) -> dict:
    """tokenizer.ggml.* for a byte-level BPE tokenizer.json (tokens padded to the model's vocabulary as llama.cpp's
    converter does: [PAD i], unused)."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    model = spec.get("model") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or (spec.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise UserError(f"{folder}/tokenizer.json is not a byte-level BPE tokenizer (GGUF 'gpt2')")
    vocab = dict(model["vocab"])
    kinds = {}
    for added in spec.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
        kinds[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    if max(vocab.values()) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} for a model of {vocab_size} tokens")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for text, tid in vocab.items():
        tokens[tid], types[tid] = text, kinds.get(tid, NORMAL)
    return {"model": "gpt2", "pre": pre_tokenizer_name(spec.get("pre_tokenizer")), "tokens": tokens, "types": types}


def spm_vocabulary(folder: Path, vocab_size: int) -> dict:
    """tokenizer.ggml.* for a SentencePiece BPE `tokenizer.model` (llama.cpp's `llama` vocabulary: pieces, scores,
    SentencePiece's piece types, which llama.cpp numbers the same way)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    except Exception as e:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise UserError(f"{folder}/tokenizer.model is not a SentencePiece model: {e}") from None
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise UserError(f"{folder}/tokenizer.model is not a SentencePiece BPE model (llama.cpp's 'llama' vocabulary)")
    if len(proto.pieces) > vocab_size:
        raise UserError(f"the tokenizer has {len(proto.pieces)} pieces for a model of {vocab_size} tokens")
    pad = range(len(proto.pieces), vocab_size)
    spec = proto.trainer_spec
    ids = {"bos": spec.bos_id, "eos": spec.eos_id, "unk": spec.unk_id, "pad": spec.pad_id}
    return {
        "model": "llama",
        "pre": "default",
        "tokens": [p.piece for p in proto.pieces] + [f"[PAD{i}]" for i in pad],
        "scores": [p.score for p in proto.pieces] + [-1000.0] * len(pad),
        "types": [p.type for p in proto.pieces] + [UNUSED] * len(pad),
        "ids": {k: v for k, v in ids.items() if v >= 0},
        "add_space_prefix": proto.normalizer_spec.add_dummy_prefix,
    }


def add_tokenizer(writer: ggml.GGUFWriter, folder: Path, vocab_size: int) -> None:
    """The folder's tokenizer into the GGUF metadata: a byte-level BPE tokenizer.json as `gpt2`, else a
    SentencePiece tokenizer.model (models trained here) as `llama`; UserError when there is neither."""
    byte_level = (folder / "tokenizer.json").is_file() and (
        json.loads((folder / "tokenizer.json").read_text()).get("decoder") or {}
    ).get("type") == "ByteLevel"
    if not byte_level and (folder / "tokenizer.model").is_file():
        vocab = spm_vocabulary(folder, vocab_size)
        special = ggml.SpecialVocab(folder, load_merges=False, n_vocab=vocab_size)
        special.special_token_ids = {**vocab["ids"], **special.special_token_ids}
        special.add_special_token.setdefault("bos", False)
        writer.add_token_scores(vocab["scores"])
        writer.add_add_space_prefix(vocab["add_space_prefix"])
    elif (folder / "tokenizer.json").is_file():
        vocab = bpe_vocabulary(folder, vocab_size)
        special = ggml.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
        if not special.merges:
            raise UserError(f"{folder}/tokenizer.json has no merges")
    else:
        raise UserError(f"{folder} has no tokenizer (tokenizer.json or tokenizer.model) to write into the GGUF")
    writer.add_tokenizer_model(vocab["model"])
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    special.add_to_gguf(writer, quiet=True)
