"""`convert from-gguf`: a llama-family GGUF file → a model folder that `mlx_lm.load` and this project open.

Everything is checked from the GGUF header before a weight is read (architecture, tensor types, names and shapes
against the model its metadata describes, the tokenizer), then the tensors are read through MLX, renamed to the
Hugging Face names, the q/k rows put back in Hugging Face order, and written shard by shard into a temporary folder
(`convert.checkpoint`). Q8_0/Q4_0/Q4_1 tensors stay MLX affine-quantized layers (bits and group size per tensor,
written as mlx-lm's per-layer "quantization" entries) unless `dtype` asks for floats. MLX reads a GGUF file whole:
peak memory is the file plus about one output shard (the source tensors are freed as they are written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx

from mlxsuite.convert import gguf_reader as gguf
from mlxsuite.convert import quantization
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


def from_gguf(
    path: str | Path,
    out: str | Path,
    dtype: Optional[str] = None,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Result:
    """Convert a GGUF file (llama architecture: Llama, Mistral-style, SmolLM2; F32/F16/Q8_0/Q4_0/Q4_1) into a model
    folder at `out` (a path). Quantized tensors are kept quantized, or dequantized to `dtype` when it is given
    (float tensors are then cast to it too)."""
    path, out = Path(path).expanduser(), Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    header = gguf.read_header(path)
    gguf.check_supported(header)
    check_tokenizer(header.metadata)
    config = gguf.gguf_config(header.metadata, header.tensors)
    args, notes = hf_config_to_args(config, has_lm_head="output.weight" in header.tensors)
    names = {n: gguf.hf_name(n) for n in header.tensors}
    unknown = [n for n, hf in names.items() if hf is None]
    if unknown:
        raise UserError(f"{path.name} has tensors a llama model does not: {name_list(unknown)}")
    check_tensors({names[n]: t.shape for n, t in header.tensors.items()}, expected_shapes(args), path.name)
    refuse_existing(out, force)

    weights, metadata = gguf.load_tensors(path)
    quantized: dict[str, dict] = {}  # Hugging Face module path → its quantization, from the shapes MLX gives
    for name, t in header.tensors.items():
        if t.type in gguf.QUANTIZED_TYPES:
            stem = name[: -len(".weight")]
            params = gguf.quant_params(t.shape, weights[name].shape, weights[f"{stem}.scales"].shape)
            quantized[names[name][: -len(".weight")]] = params
    cast = DTYPES[dtype] if dtype else None
    keep = dtype is None

    def produce(item: Item) -> dict[str, mx.array]:
        heads = gguf.permute_heads(item.out, config)
        module = item.out[: -len(".weight")]
        if module in quantized:
            stem = item.src[: -len(".weight")]
            parts = [weights.pop(f"{stem}.{s}") for s in ("weight", "scales", "biases")]
            if heads:
                parts = [gguf.unpermute_rows(p, heads) for p in parts]
            if keep:
                return dict(zip((f"{module}.weight", f"{module}.scales", f"{module}.biases"), parts))
            return {item.out: quantization.dequantize(*parts, quantized[module], dtype=cast)}
        w = weights.pop(item.src)
        if heads:
            w = gguf.unpermute_rows(w, heads)
        return {item.out: w.astype(cast) if cast is not None and mx.issubdtype(w.dtype, mx.floating) else w}

    def out_bytes(name: str, t: gguf.GGUFTensor) -> int:
        stem = name[: -len(".weight")]
        if t.type in gguf.QUANTIZED_TYPES and keep:
            return sum(weights[f"{stem}.{s}"].nbytes for s in ("weight", "scales", "biases"))
        size = (cast or weights[name].dtype).size if t.type not in gguf.QUANTIZED_TYPES else cast.size
        n = 1
        for d in t.shape:
            n *= d
        return n * size

    out_config = dict(config)
    if quantized and keep:
        # the most common parameters folder-wide, mlx-lm's per-layer entries for the others (SmolLM2's embedding)
        params = [tuple(sorted(p.items())) for p in quantized.values()]
        block = dict(max(set(params), key=params.count))
        block.update({k: v for k, v in sorted(quantized.items()) if v != block})
        out_config["quantization"] = block
        out_config["quantization_config"] = dict(block)
    if dtype:
        out_config["torch_dtype"] = dtype
    types = sorted({t.type for t in header.tensors.values()})
    out_config["mlxsuite"] = {
        "format": 1,
        "converted_from": {"gguf": str(path.resolve()), "tensor_types": types, "dtype": dtype or "as stored"},
    }
    items = [Item(hf, n) for n, hf in names.items()]
    sizes = {names[n]: out_bytes(n, t) for n, t in header.tensors.items()}
    with atomic.folder(out, force=force) as tmp:
        write_tokenizer(metadata, tmp)
        if (tmp / "tokenizer.model").is_file():
            _check_spm_tokenizer(tmp)
        n, nbytes, shards = write_shards(tmp, shards_by_size(items, sizes), produce, progress)
        write_json(tmp / "config.json", out_config)
    return Result(out, n, nbytes, shards, out_config, notes)


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
