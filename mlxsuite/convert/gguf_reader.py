"""Llama-family GGUF files (llama.cpp) as Hugging Face / mlx-lm checkpoints: config, tensor names, weights.

A GGUF file is a plain tensor container (no code): a header of typed key/values (the architecture, the shapes, the
tokenizer) and a table of tensors, then the data. `read_header` parses the header alone, so an unsupported
architecture or tensor type is named before any weight is read; `mx.load(path, return_metadata=True)` then reads the
tensors, the quantized ones (Q4_0, Q4_1, Q8_0) arriving as MLX affine-quantized triples (`weight` packed into uint32,
`scales`, `biases`; group size 32). MLX reads the whole file at once: peak memory is about the file plus one tensor.

llama.cpp's converter reorders the rows of the q and k projections for its RoPE (`permute` in convert_hf_to_gguf.py);
`unpermute_rows` restores the Hugging Face order. Rows are independent, so it applies alike to float weights and to
the packed rows, scales and biases of a quantized one. The tokenizer lives in `convert.gguf_tokenizer`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx

from mlxsuite.platform.errors import UserError

ARCHITECTURES = ("llama",)  # Mistral-style and SmolLM2 files are written as "llama" by llama.cpp
# ggml tensor type ids (ggml.h)
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
GGML_TYPE_IDS = {v: k for k, v in GGML_TYPES.items()}
# What MLX reads exactly: floats as they are, Q4_0/Q4_1/Q8_0 as affine quantization (MLX turns other block types
# into float16 through gguflib, untested here, so they are refused).
SUPPORTED_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")
QUANTIZED_TYPES = ("Q8_0", "Q4_0", "Q4_1")

# GGUF metadata value types → struct format (8 string, 9 array)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}  # fmt: skip
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)$")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as the GGUF header describes it: logical shape in MLX order (rows first), ggml type name."""

    name: str
    type: str
    shape: tuple[int, ...]
    offset: int  # of its data, from the start of the file


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict  # scalars and strings as Python values; arrays as ArrayInfo (their data is skipped)
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array the header scan skipped over: its element type and length."""

    type: int
    length: int


class _Reader:
    def __init__(self, f):
        self.f = f

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise ValueError("unexpected end of file")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise ValueError(f"string of {n} bytes")
        raw = self.f.read(n)
        if len(raw) != n:
            raise ValueError("unexpected end of file")
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALAR:
                self.f.seek(struct.calcsize(_SCALAR[etype]) * n, 1)
            elif etype == 8:
                for _ in range(n):
                    self.f.seek(self.unpack("<Q"), 1)
            else:
                raise ValueError(f"unsupported metadata array of type {etype}")
            return ArrayInfo(etype, n)
        raise ValueError(f"unknown metadata value type {vtype}")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's header: metadata (arrays skipped) and the tensor table. No tensor data is read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            r = _Reader(f)
            if f.read(4) != b"GGUF":
                raise ValueError("not a GGUF file (no GGUF magic)")
            version = r.unpack("<I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} (2 and 3 are read)")
            n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
            metadata = {}
            for _ in range(n_kv):
                key = r.string()
                metadata[key] = r.value(r.unpack("<I"))
            infos = []
            for _ in range(n_tensors):
                name = r.string()
                ndim = r.unpack("<I")
                dims = [r.unpack("<Q") for _ in range(ndim)]
                ttype, offset = r.unpack("<I"), r.unpack("<Q")
                infos.append((name, ttype, tuple(reversed(dims)), offset))
            alignment = metadata.get("general.alignment", 32)
            start = -(-f.tell() // alignment) * alignment
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, struct.error, MemoryError) as e:
        raise UserError(f"{path} is not a readable GGUF file: {e}") from None
    tensors = {}
    for name, ttype, shape, offset in infos:
        tname = GGML_TYPES.get(ttype, f"type {ttype}")
        tensors[name] = GGUFTensor(name, tname, shape, start + offset)
    return GGUFHeader(path, version, metadata, tensors)


def check_supported(header: GGUFHeader) -> None:
    """UserError naming the architecture or the tensor types this reader does not convert."""
    arch = header.architecture
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{header.path.name}: unsupported GGUF architecture {arch!r}; from-gguf reads {', '.join(ARCHITECTURES)} "
            "(including Mistral-style and SmolLM2 files)"
        )
    bad: dict[str, list[str]] = {}
    for t in header.tensors.values():
        if t.type not in SUPPORTED_TYPES:
            bad.setdefault(t.type, []).append(t.name)
    if bad:
        parts = [f"{k} ({v[0]}" + (f" and {len(v) - 1} more)" if len(v) > 1 else ")") for k, v in bad.items()]
        raise UserError(
            f"{header.path.name}: unsupported GGUF tensor type {', '.join(parts)}; "
            f"supported: {', '.join(SUPPORTED_TYPES)}"
        )


def hf_name(gguf_name: str) -> Optional[str]:
    """The Hugging Face name of a llama GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`);
    None for a name this mapping does not know. The suffix (.weight, .bias, .scales, .biases) is kept."""
    stem, dot, suffix = gguf_name.rpartition(".")
    if not dot:
        return None
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    m = _BLOCK.match(stem)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{suffix}"
    return None


def unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation: per head, the rows stored as (head_dim/2, 2) go back to (2, head_dim/2).
    Works on a float weight and on the packed rows, scales and biases of a quantized one (rows are independent)."""
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise UserError(f"cannot undo the q/k permutation: {rows} rows for {n_heads} heads")
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_heads(hf: str, config: dict) -> Optional[int]:
    """The head count whose rows llama.cpp permuted in this (Hugging Face-named) tensor, or None."""
    if ".self_attn.q_proj." in hf:
        return config["num_attention_heads"]
    if ".self_attn.k_proj." in hf:
        return config["num_key_value_heads"]
    return None


def quant_params(logical_shape: tuple[int, ...], weight_shape: tuple[int, ...], scales_shape: tuple[int, ...]) -> dict:
    """bits and group size of an affine-quantized tensor from its shapes (a file can mix them: SmolLM2's token
    embedding is 8-bit, the rest 4-bit): bits = 32 · packed columns / columns, group = columns / scale columns."""
    cols = logical_shape[-1]
    return {"group_size": cols // scales_shape[-1], "bits": 32 * weight_shape[-1] // cols, "mode": "affine"}


def _value(v):
    return v.item() if isinstance(v, mx.array) and v.ndim == 0 else v


def _float32(x) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(f"{float(x):.7g}")


def gguf_config(metadata: dict, tensors: dict[str, GGUFTensor]) -> dict:
    """An mlx-lm / Hugging Face `config.json` (model_type llama) for a llama GGUF's metadata and tensor table."""
    meta = {k: _value(v) for k, v in metadata.items()}
    arch = meta.get("general.architecture")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    if get("expert_count", 0):
        raise UserError(f"mixture-of-experts GGUF files ({get('expert_count')} experts) are not supported")
    if "rope_freqs.weight" in tensors:
        raise UserError("the GGUF file carries rope_freqs (Llama 3.1-style RoPE scaling): not supported")
    required = {
        "embedding_length": "hidden size", "block_count": "layers", "attention.head_count": "heads",
        "feed_forward_length": "FFN size",
    }  # fmt: skip
    lacking = [f"{arch}.{k} ({what})" for k, what in required.items() if not isinstance(get(k), int)]
    if lacking:
        raise UserError(f"the GGUF metadata lacks {', '.join(lacking)}")
    hidden, heads = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length") or hidden // heads
    rope_dim = get("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise UserError(
            f"partial rotary embeddings (rope dimension {rope_dim} of head size {head_dim}) are not supported"
        )
    embed = tensors.get("token_embd.weight")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size") or (embed.shape[0] if embed else getattr(tokens, "length", None))
    scaling = None
    kind = get("rope.scaling.type", "none")
    if kind == "linear":
        scaling = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif kind != "none":
        raise UserError(f"RoPE scaling {kind!r} in the GGUF metadata is not supported (linear is)")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv") or heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": _float32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _float32(get("rope.freq_base", 10000.0)),
        "rope_scaling": scaling,
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }
    for key in ("bos", "eos", "padding"):
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(tid, int):
            config[f"{'pad' if key == 'padding' else key}_token_id"] = tid
    return config


def load_tensors(path: str | Path) -> tuple[dict[str, mx.array], dict]:
    """All tensors (quantized ones as weight/scales/biases) and the metadata, through MLX's GGUF reader."""
    try:
        return mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"MLX cannot read {path}: {e}") from None
