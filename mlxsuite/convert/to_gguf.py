"""`convert to-gguf`: a model this project loads (trained here, converted, mlx-lm's) → a GGUF file for llama.cpp.

The architecture follows the model's traits: q/k-norm → qwen3, q/k/v biases → qwen2, neither → llama (whose q/k rows
get llama.cpp's permutation for its interleaved RoPE, unless the model already uses the traditional RoPE). Names are
`gguf_reader`'s map read backwards, Llama 3 RoPE scaling becomes llama.cpp's `rope_freqs` tensor, the tokenizer and
chat template go into the metadata (`gguf_writer`). Everything is checked and encoded before the file is written, in
one atomic write (`mlxsuite.platform.atomic`), through the `gguf` package's `GGUFWriter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import gguf as ggml
import mlx.core as mx
import numpy as np

from mlxsuite.convert import gguf_reader, gguf_writer
from mlxsuite.convert.checkpoint import Result, SafetensorsSource, natural, refuse_existing
from mlxsuite.convert.derive import open_model_folder
from mlxsuite.platform import ProgressCallback, atomic
from mlxsuite.platform.errors import UserError


def architecture(args) -> str:
    """The GGUF architecture whose forward equals `lm.Model(args)`'s; UserError if there is none."""
    if args.model_type not in ("llama", "mistral", "qwen2", "qwen3"):
        raise UserError(f"to-gguf writes the llama, qwen2 and qwen3 architectures, not model_type {args.model_type!r}")
    if args.mlp_bias or args.attention_bias:
        raise UserError("a model with MLP or o_proj biases has no GGUF architecture here (llama, qwen2, qwen3)")
    if args.qk_norm and not args.qkv_bias and not args.rope_traditional:
        return "qwen3"
    if args.qkv_bias and not args.qk_norm and not args.rope_traditional:
        return "qwen2"
    if not args.qkv_bias and not args.qk_norm:
        return "llama"
    raise UserError(
        "this combination of q/k-norm, q/k/v biases and RoPE has no GGUF architecture (llama, qwen2, qwen3)"
    )


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`); `gguf_reader.unpermute_rows` inverts it."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _metadata(writer: ggml.GGUFWriter, args, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(args.max_position_embeddings)
    writer.add_embedding_length(args.hidden_size)
    writer.add_block_count(args.num_hidden_layers)
    writer.add_feed_forward_length(args.intermediate_size)
    writer.add_head_count(args.num_attention_heads)
    writer.add_head_count_kv(args.num_key_value_heads)
    writer.add_key_length(args.head_dim)
    writer.add_value_length(args.head_dim)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.rms_norm_eps)
    writer.add_vocab_size(args.vocab_size)


def _rope(args) -> Optional[np.ndarray]:
    """llama.cpp's rope_freqs for Llama 3 scaling; None without scaling or linear; UserError for other kinds."""
    scaling = args.rope_scaling
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind in ("default", "linear"):
        return None
    if kind == "llama3":
        return gguf_reader.llama3_rope_factors(args.head_dim, args.rope_theta, scaling)
    raise UserError(f"RoPE scaling {kind!r} is not written to GGUF here (linear and Llama 3's are)")


def to_gguf(
    model: str,
    out: str | Path,
    outtype: Optional[str] = None,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Result:
    """Write `model` as a GGUF file at `out`. `outtype` (f32, f16, bf16, q8_0, q4_0, q4_1) sets the type of every
    matrix (quantized layers are dequantized first, except 4-bit group-32 layers with q4_1); without it floats stay
    as stored and MLX affine layers keep their codes where a ggml type holds them (4/5/8-bit group 32), else F32."""
    if outtype is not None and outtype not in gguf_writer.OUTTYPES:
        raise UserError(f"outtype must be one of {', '.join(gguf_writer.OUTTYPES)}, got {outtype}")
    out = Path(out)
    source = open_model_folder(model)
    folder, args, quantized, tensors = source.folder, source.args, source.quantized, source.tensors
    arch = architecture(args)
    rope_freqs = _rope(args)
    refuse_existing(out, force)
    writer = ggml.GGUFWriter(path=None, arch=arch)
    _metadata(writer, args, folder.name)
    if (args.rope_scaling or {}).get("type", (args.rope_scaling or {}).get("rope_type")) == "linear":
        writer.add_rope_scaling_type(ggml.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(args.rope_scaling["factor"]))
    gguf_writer.add_tokenizer(writer, folder, args.vocab_size)
    encoded, notes = _encode_tensors(tensors, quantized, args, arch, outtype, progress)
    if rope_freqs is not None:
        encoded.insert(0, ("rope_freqs.weight", rope_freqs, "F32"))
    counts: dict[str, int] = {}
    for name, data, kind in encoded:
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "F32":
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=ggml.GGMLQuantizationType[kind])
    matrices = [kind for name, data, kind in encoded if name.endswith(".weight") and np.ndim(data) == 2]
    main = max(set(matrices), key=matrices.count) if matrices else "F32"
    writer.add_file_type(ggml.LlamaFileType.ALL_F32 if main == "F32" else ggml.LlamaFileType[f"MOSTLY_{main}"])
    if main not in ("F32", "F16", "BF16"):
        writer.add_quantization_version(ggml.GGML_QUANT_VERSION)

    def write(tmp: Path) -> None:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic.write_file(out, write)
    summary = {"architecture": arch, "tensor_types": dict(sorted(counts.items())), "source": str(folder.resolve())}
    return Result(out, len(encoded), out.stat().st_size, 1, summary, notes)


def _permuted_heads(hf: str, args) -> Optional[int]:
    """The head count of llama.cpp's row permutation for this tensor (llama with HF-order RoPE), or None."""
    if args.rope_traditional:  # already llama.cpp's interleaved RoPE: the rows stay as they are
        return None
    if ".self_attn.q_proj." in hf:
        return args.num_attention_heads
    if ".self_attn.k_proj." in hf:
        return args.num_key_value_heads
    return None


def _kept_codes(arrays: list[np.ndarray], params: dict, wanted: Optional[str]):
    """(blocks, ggml type, rounding error) when a ggml type holds this MLX affine layer's codes, else None."""
    if params.get("mode", "affine") != "affine" or len(arrays) != 3:
        return None
    w, scales, biases = arrays
    kind = gguf_writer.kept_type(params["bits"], params["group_size"], scales, biases)
    if kind is None or wanted not in (None, kind):
        return None
    codes = gguf_writer.unpack_codes(w, params["bits"], w.shape[-1] * 32 // params["bits"])
    raw, err = gguf_writer.encode_affine(codes, scales, biases, kind)
    return raw, kind, err


def _encode_tensors(tensors, quantized: dict, args, arch: str, outtype: Optional[str], progress) -> tuple[list, list]:
    """[(GGUF name, data, ggml type)] for every tensor of the model, plus notes on what rounding the scales cost."""
    source = SafetensorsSource(tensors)
    wanted = gguf_writer.OUTTYPES.get(outtype) if outtype else None
    encoded, notes, kept_err, fallback = [], [], {}, []
    names = sorted((n for n in tensors if not n.endswith((".scales", ".biases"))), key=natural)
    for i, hf in enumerate(names):
        name = gguf_reader.gguf_name(hf)
        if name is None:
            raise UserError(f"{hf} has no GGUF name for the {arch} architecture")
        module = hf[: -len(".weight")]
        heads = _permuted_heads(hf, args) if arch == "llama" else None
        parts = [f"{module}.{s}" for s in ("scales", "biases") if module in quantized and f"{module}.{s}" in tensors]
        arrays = [source.take(n) for n in [hf, *parts]]
        arrays = [np.array(a.astype(mx.float32) if a.dtype in (mx.bfloat16, mx.float16) else a) for a in arrays]
        if heads:
            arrays = [permute_rows(a, heads) for a in arrays]
        if module in quantized:
            kept = _kept_codes(arrays, quantized[module], wanted)
            if kept is not None:
                raw, kind, err = kept
                kept_err.setdefault(kind, []).append(err)
                encoded.append((name, raw, kind))
                if progress:
                    progress(i + 1, len(names), hf)
                continue
            params = quantized[module]
            w, scales, biases = (None if a is None else mx.array(a) for a in (arrays + [None])[:3])
            mode = params.get("mode", "affine")
            w = mx.dequantize(w, scales, biases, group_size=params["group_size"], bits=params["bits"], mode=mode)
            arrays = [np.array(w.astype(mx.float32))]
        w = arrays[0]
        kind = "F32" if w.ndim == 1 else (wanted or {"F16": "F16", "BF16": "BF16"}.get(tensors[hf].dtype, "F32"))
        if not gguf_writer.fits(kind, w.shape[-1]):
            fallback.append(name)
            kind = "F16"
        encoded.append((name, gguf_writer.encode_float(w, kind), kind))
        if progress:
            progress(i + 1, len(names), hf)
    for kind, errs in kept_err.items():
        rms = (sum(e["sq"] for e in errs) / max(sum(e["ref"] for e in errs), 1e-30)) ** 0.5
        notes.append(
            f"{len(errs)} MLX affine layers written as {kind} with their codes: scales and biases rounded to float16 "
            f"change the weights by {rms:.2e} RMS (relative), at most {max(e['max'] for e in errs):.2e} of a "
            "tensor's largest weight"
        )
    if fallback:
        notes.append(
            f"{len(fallback)} tensors written as F16: rows not a multiple of the block size ({fallback[0]}, …)"
        )
    return encoded, notes
