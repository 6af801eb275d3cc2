"""GGUF files (llama.cpp) as Hugging Face / mlx-lm checkpoints: header, config, tensor names, tensor data.

A GGUF file is a plain tensor container (no code): a header of typed key/values (the architecture, the shapes, the
tokenizer) and a table of tensors, then the data. `read_header` parses the header alone (metadata arrays included:
the tokenizer), so an unsupported architecture or tensor type is named before any weight is read; `tensor_data`
then maps one tensor's bytes, which `gguf_blocks` decodes. Architectures: llama (Llama 1–3 with Llama 3's
`rope_freqs`, Mistral-style, SmolLM2), qwen2, qwen3.

llama.cpp's converter reorders the rows of the llama architecture's q and k projections for its RoPE (`permute` in
convert_hf_to_gguf.py; qwen2/qwen3 are not permuted); `unpermute_rows` restores the Hugging Face order. Rows are
independent, so it applies alike to float weights and to the codes, scales and biases of a quantized one. The
tokenizer lives in `convert.gguf_tokenizer`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gguf as ggml
import mlx.core as mx
import numpy as np

from mlxsuite.convert import gguf_blocks as blocks
from mlxsuite.platform.errors import UserError

ARCHITECTURES = ("llama", "qwen2", "qwen3")  # Mistral-style and SmolLM2 files are written as "llama" by llama.cpp
GGML_TYPES = {t.value: t.name for t in ggml.GGMLQuantizationType}  # ggml tensor type ids (ggml.h)
GGML_TYPE_IDS = {v: k for k, v in GGML_TYPES.items()}
SUPPORTED_TYPES = tuple(blocks.BLOCKS)

# GGUF metadata value types → struct format (8 string, 9 array)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
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
    metadata: dict  # scalars, strings and arrays as Python values
    tensors: dict[str, GGUFTensor]
    size: int  # of the file, in bytes

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")


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
                size = struct.calcsize(_SCALAR[etype]) * n
                raw = self.f.read(size)
                if len(raw) != size:
                    raise ValueError("unexpected end of file")
                return np.frombuffer(raw, dtype=_SCALAR[etype].replace("?", "b1")).tolist()
            if etype == 8:
                return [self.string() for _ in range(n)]
            raise ValueError(f"unsupported metadata array of type {etype}")
        raise ValueError(f"unknown metadata value type {vtype}")


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's header: metadata and the tensor table. No tensor data is read."""
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
            size = f.seek(0, 2)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, struct.error, MemoryError) as e:
        raise UserError(f"{path} is not a readable GGUF file: {e}") from None
    tensors = {}
    for name, ttype, shape, offset in infos:
        tname = GGML_TYPES.get(ttype, f"type {ttype}")
        tensors[name] = GGUFTensor(name, tname, shape, start + offset)
    return GGUFHeader(path, version, metadata, tensors, size)


def check_supported(header: GGUFHeader) -> None:
    """UserError naming the architecture, the tensor types this reader does not convert, or a tensor whose data
    does not fit its type's blocks or the file."""
    arch = header.architecture
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{header.path.name}: unsupported GGUF architecture {arch!r}; from-gguf reads {', '.join(ARCHITECTURES)} "
            "(llama includes Mistral-style and SmolLM2 files)"
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
    for t in header.tensors.values():
        per_block = blocks.BLOCKS[t.type][0]
        if not t.shape or t.shape[-1] % per_block:
            raise UserError(
                f"{header.path.name}: {t.name} has rows of {t.shape[-1:]} values, not whole {t.type} blocks"
            )
        if t.offset + tensor_nbytes(t) > header.size:
            raise UserError(f"{header.path.name} is truncated: {t.name}'s data ends past the end of the file")


def tensor_nbytes(t: GGUFTensor) -> int:
    per_block, nbytes = blocks.BLOCKS[t.type]
    return int(np.prod(t.shape, dtype=np.int64)) // per_block * nbytes


def tensor_data(header: GGUFHeader, t: GGUFTensor) -> np.ndarray:
    """The raw bytes of one tensor, mapped from the file (nothing else is read)."""
    return np.memmap(header.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(tensor_nbytes(t),))


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


def gguf_name(hf: str) -> Optional[str]:
    """The GGUF name of a Hugging Face tensor name (the inverse of `hf_name`), or None."""
    stem, dot, suffix = hf.rpartition(".")
    for gguf_stem, hf_stem in _GLOBAL_NAMES.items():
        if stem == hf_stem:
            return f"{gguf_stem}.{suffix}"
    m = re.match(r"^model\.layers\.(\d+)\.(.+)$", stem)
    if m:
        for short, long in _BLOCK_NAMES.items():
            if m.group(2) == long:
                return f"blk.{m.group(1)}.{short}.{suffix}"
    return None


def unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation: per head, the rows stored as (head_dim/2, 2) go back to (2, head_dim/2).
    Works on a float weight and on the packed rows, scales and biases of a quantized one (rows are independent)."""
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise UserError(f"cannot undo the q/k permutation: {rows} rows for {n_heads} heads")
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_heads(hf: str, config: dict) -> Optional[int]:
    """The head count whose rows llama.cpp permuted in this (Hugging Face-named) tensor, or None (only the llama
    architecture is permuted)."""
    if config["model_type"] not in ("llama", "mistral"):
        return None
    if ".self_attn.q_proj." in hf:
        return config["num_attention_heads"]
    if ".self_attn.k_proj." in hf:
        return config["num_key_value_heads"]
    return None


def _float32(x) -> float:
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(f"{float(x):.7g}")


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict) -> np.ndarray:
    """Llama 3's per-frequency RoPE divisors (what llama.cpp stores as `rope_freqs`), from the Hugging Face
    rope_scaling parameters, as convert_hf_to_gguf.py computes them."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = (old / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid)).astype(np.float32)


def llama3_scaling(rope_freqs: np.ndarray, head_dim: int, theta: float) -> dict:
    """The Hugging Face rope_scaling whose factors are this `rope_freqs` tensor (Llama 3.1/3.2's parameters tried,
    the match checked), or a UserError."""
    factor = float(np.round(rope_freqs.max(), 4))
    for old in (8192, 4096, 16384, 2048, 32768):
        scaling = dict(
            rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=old,
        )  # fmt: skip
        if np.allclose(llama3_rope_factors(head_dim, theta, scaling), rope_freqs, rtol=1e-5):
            return scaling
    raise UserError("the GGUF rope_freqs tensor is not a Llama 3 RoPE scaling this reader recognises")


def _rope_scaling(kind: str, factor, rope_freqs: Optional[np.ndarray], head_dim: int, theta: float) -> Optional[dict]:
    if rope_freqs is not None:
        return llama3_scaling(rope_freqs, head_dim, theta)
    if kind == "linear":
        return {"type": "linear", "factor": float(factor)}
    if kind != "none":
        raise UserError(f"RoPE scaling {kind!r} in the GGUF metadata is not supported (linear and Llama 3's are)")
    return None


_HF_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def gguf_config(metadata: dict, tensors: dict[str, GGUFTensor], rope_freqs: Optional[np.ndarray] = None) -> dict:
    """An mlx-lm / Hugging Face `config.json` (model_type llama, qwen2 or qwen3) for a GGUF file's metadata and
    tensor table (`rope_freqs`: that tensor's values, when the file has it)."""
    arch = metadata.get("general.architecture")

    def get(key, default=None):
        return metadata.get(f"{arch}.{key}", default)

    if get("expert_count", 0):
        raise UserError(f"mixture-of-experts GGUF files ({get('expert_count')} experts) are not supported")
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
    if arch == "qwen2" and head_dim != hidden // heads:
        raise UserError(f"a qwen2 GGUF with head size {head_dim} (not hidden / heads) is not supported")
    embed = tensors.get("token_embd.weight")
    vocab = get("vocab_size") or (embed.shape[0] if embed else len(metadata.get("tokenizer.ggml.tokens", [])))
    theta = _float32(get("rope.freq_base", 10000.0))
    scaling = _rope_scaling(get("rope.scaling.type", "none"), get("rope.scaling.factor"), rope_freqs, head_dim, theta)
    config = {
        "model_type": arch,
        "architectures": [_HF_CLASSES[arch]],
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv") or heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": _float32(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position_embeddings": get("context_length", 2048),
        "tie_word_embeddings": "output.weight" not in tensors,
        "hidden_act": "silu",
        "attention_bias": False,
    }
    if arch == "llama":
        config["mlp_bias"] = False
    for key in ("bos", "eos", "padding"):
        tid = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(tid, int):
            config[f"{'pad' if key == 'padding' else key}_token_id"] = tid
    return config
