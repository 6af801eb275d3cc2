"""`convert from-gguf`: a GGUF file (llama, qwen2, qwen3) → a model folder that `mlx_lm.load` and this project open.

Everything is checked from the GGUF header before a weight is read (architecture, tensor types and block sizes,
names and shapes against the model its metadata describes, the tokenizer), then each tensor's bytes are mapped from
the file, decoded (`gguf_blocks`), renamed to the Hugging Face names, the llama q/k rows put back in Hugging Face
order, and written shard by shard into a temporary folder (`convert.checkpoint`). Without `dtype`,
quantized tensors stay MLX affine-quantized layers (bits and group size per tensor, written as mlx-lm's per-layer
"quantization" entries): group-32 types exactly (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K), group-16 types
(Q2_K, Q3_K, Q6_K) as 8-bit group 32 with the error measured and returned as a note. With `dtype` every tensor is
decoded exactly in float32 and cast. Peak memory is about one output shard plus one decoded tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from mlxsuite.convert import gguf_blocks as blocks
from mlxsuite.convert import gguf_reader as gguf
from mlxsuite.convert.checkpoint import (
    Item,
    Result,
    check_tensors,
    expected_shapes,
    name_list,
    refuse_existing,
    shards_by_size,
    write_json,
    write_shards,
)
from mlxsuite.convert.gguf_tokenizer import check_tokenizer, write_tokenizer
from mlxsuite.convert.hf import DTYPES, TOKENIZER_CHECK_TEXT, hf_config_to_args
from mlxsuite.platform import ProgressCallback, atomic, cache_dir
from mlxsuite.platform.errors import UserError

KEPT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5, "Q2_K": 8, "Q3_K": 8,
             "Q6_K": 8, "IQ4_NL": 8, "IQ4_XS": 8}  # fmt: skip
_FLOAT_AS_STORED = {"F32": mx.float32, "F16": mx.float16, "BF16": mx.bfloat16}


def from_gguf(
    path: str | Path,
    out: str | Path,
    dtype: Optional[str] = None,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Result:
    """Convert a GGUF file (llama: Llama, Mistral-style, SmolLM2; qwen2; qwen3; any mix of F32/F16/BF16, Q4_0/Q4_1/
    Q5_0/Q5_1/Q8_0 and Q2_K…Q6_K) into a model folder at `out` (a path). Quantized tensors are kept quantized, or
    dequantized to `dtype` when it is given (float tensors are then cast to it too)."""
    path, out = Path(path).expanduser(), Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    header = gguf.read_header(path)
    gguf.check_supported(header)
    check_tokenizer(header.metadata)
    rope = header.tensors.pop("rope_freqs.weight", None)
    rope_freqs = blocks.decode(gguf.tensor_data(header, rope), rope.type, rope.shape) if rope else None
    config = gguf.gguf_config(header.metadata, header.tensors, rope_freqs)
    args, notes = hf_config_to_args(config, has_lm_head="output.weight" in header.tensors)
    names = {n: gguf.hf_name(n) for n in header.tensors}
    unknown = [n for n, hf in names.items() if hf is None]
    if unknown:
        raise UserError(f"{path.name} has tensors a {config['model_type']} model does not: {name_list(unknown)}")
    check_tensors({names[n]: t.shape for n, t in header.tensors.items()}, expected_shapes(args), path.name)
    refuse_existing(out, force)

    keep = dtype is None
    kept = {
        names[n][: -len(".weight")]: t
        for n, t in header.tensors.items()
        if keep and t.type in blocks.QUANTIZED_TYPES and len(t.shape) == 2 and n.endswith(".weight")
    }
    quantized = {m: {"group_size": 32, "bits": KEPT_BITS[t.type], "mode": "affine"} for m, t in kept.items()}
    errors: dict[str, list[tuple]] = {}  # group-16 type → per tensor (max relative error, Σ error², Σ weight²)
    produce = _producer(header, config, kept, DTYPES[dtype] if dtype else None, errors)

    def out_bytes(name: str, t: gguf.GGUFTensor) -> int:
        n = int(np.prod(t.shape))
        module = names[name][: -len(".weight")]
        if module in kept:
            return n * quantized[module]["bits"] // 8 + n // 32 * 8
        return n * (DTYPES[dtype].size if dtype else _FLOAT_AS_STORED.get(t.type, mx.float32).size)

    out_config = _output_config(config, quantized, dtype)
    source = out_config["mlxsuite"]["converted_from"]
    source.update(gguf=str(path.resolve()), tensor_types=sorted({t.type for t in header.tensors.values()}))
    items = [Item(hf, n) for n, hf in names.items()]
    sizes = {names[n]: out_bytes(n, t) for n, t in header.tensors.items()}
    with atomic.folder(out, force=force) as tmp:
        write_tokenizer(header.metadata, tmp)
        if (tmp / "tokenizer.model").is_file():
            _check_spm_tokenizer(tmp)
        n, nbytes, shards = write_shards(tmp, shards_by_size(items, sizes), produce, progress)
        if errors:
            source["requantized"] = _error_summary(errors)
            notes.extend(_error_notes(source["requantized"]))
        write_json(tmp / "config.json", out_config)
    return Result(out, n, nbytes, shards, out_config, notes)


def _output_config(config: dict, quantized: dict[str, dict], dtype: Optional[str]) -> dict:
    out_config = dict(config)
    if quantized:
        # the most common parameters folder-wide, mlx-lm's per-layer entries for the others
        params = [tuple(sorted(p.items())) for p in quantized.values()]
        block = dict(max(set(params), key=params.count))
        block.update({k: v for k, v in sorted(quantized.items()) if v != block})
        out_config["quantization"] = block
        out_config["quantization_config"] = dict(block)
    if dtype:
        out_config["torch_dtype"] = dtype
    out_config["mlxsuite"] = {"format": 1, "converted_from": {"dtype": dtype or "as stored"}}
    return out_config


def _producer(header: gguf.GGUFHeader, config: dict, kept: dict, cast, errors: dict):
    """The `produce` of `write_shards`: one GGUF tensor → its output arrays (see the module docstring)."""

    def produce(item: Item) -> dict[str, mx.array]:
        t = header.tensors[item.src]
        heads = gguf.permute_heads(item.out, config)
        module = item.out[: -len(".weight")]
        decoded = blocks.decode(gguf.tensor_data(header, t), t.type, t.shape)
        if module in kept and t.type not in blocks.GROUP16_TYPES:
            parts = [
                blocks.pack_codes(decoded.codes, decoded.bits),
                blocks.compact(decoded.scales),
                blocks.compact(decoded.biases),
            ]
            if heads:
                parts = [gguf.unpermute_rows(p, heads) for p in parts]
            return {f"{module}.{s}": mx.array(p) for s, p in zip(("weight", "scales", "biases"), parts)}
        w = decoded.dequantize() if isinstance(decoded, blocks.Affine) else decoded
        if heads:
            w = gguf.unpermute_rows(w, heads)
        if module in kept:  # a group-16 type: 8-bit group 32, the nearest MLX affine form
            exact = mx.array(w)
            q, scales, biases = mx.quantize(exact, group_size=32, bits=8)
            diff = mx.abs(mx.dequantize(q, scales, biases, group_size=32, bits=8) - exact)
            largest = max(mx.max(mx.abs(exact)).item(), 1e-30)
            errors.setdefault(t.type, []).append(
                (mx.max(diff).item() / largest, mx.sum(diff * diff).item(), mx.sum(exact * exact).item())
            )
            return {f"{module}.weight": q, f"{module}.scales": scales, f"{module}.biases": biases}
        stored = _FLOAT_AS_STORED.get(t.type, mx.float32)
        return {item.out: mx.array(w).astype(cast if cast is not None else stored)}

    return produce


def _error_summary(errors: dict) -> dict:
    """Per group-16 type: tensors, the largest error relative to its tensor's largest |weight|, and the RMS error
    relative to the RMS weight (over all its tensors)."""
    summary = {}
    for kind, rows in sorted(errors.items()):
        summary[kind] = {
            "as": "8-bit group 32",
            "tensors": len(rows),
            "max_relative_error": max(r[0] for r in rows),
            "rms_relative_error": (sum(r[1] for r in rows) / max(sum(r[2] for r in rows), 1e-30)) ** 0.5,
        }
    return summary


def _error_notes(summary: dict) -> list[str]:
    return [
        f"{kind} ({s['tensors']} tensors; MLX has no group 16) kept as 8-bit group 32: error vs the exact values "
        f"{s['rms_relative_error']:.3%} RMS, at most {s['max_relative_error']:.3%} of a tensor's largest weight "
        "(convert with a dtype for exact values)"
        for kind, s in summary.items()
    ]


def _check_spm_tokenizer(folder: Path) -> None:
    """The tokenizer.json built from a SentencePiece GGUF vocabulary must encode as SentencePiece does (BOS aside)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in TOKENIZER_CHECK_TEXT:
        if tk.encode(text, add_special_tokens=False).ids != sp.encode(text):
            raise UserError(
                f"the tokenizer.json built from the GGUF vocabulary does not encode {text!r} as SentencePiece does"
            )


GGUF_CACHE_KEEP = 4  # converted GGUF folders kept in the cache (the least recently used go first)


def gguf_model_folder(path: str | Path, dtype: Optional[str] = None) -> Path:
    """A model folder for a GGUF file, converted once into the cache (`~/.cache/mlxsuite/gguf/`, keyed by the file's
    path, size, modification time and `dtype`) and reused afterwards: how a `.gguf` reference opens as a model. The
    cache is bounded: a conversion removes the folders of an older version of the same file and keeps the
    GGUF_CACHE_KEEP most recently used."""
    import hashlib
    import os

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    stat = path.stat()
    key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}".encode()).hexdigest()[:16]
    folder = cache_dir() / "gguf" / f"{path.stem}-{dtype or 'kept'}-{key}"
    if (folder / "config.json").is_file():
        os.utime(folder)  # recently used
        return folder
    from_gguf(path, folder, dtype=dtype, force=True)
    _bound_gguf_cache(folder)
    return folder


def _bound_gguf_cache(kept: Path) -> None:
    import shutil

    prefix = kept.name.rsplit("-", 1)[0] + "-"
    others = sorted(
        (p for p in kept.parent.iterdir() if p.is_dir() and p != kept and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for i, p in enumerate(others):
        if p.name.startswith(prefix) or i >= GGUF_CACHE_KEEP - 1:
            shutil.rmtree(p, ignore_errors=True)
