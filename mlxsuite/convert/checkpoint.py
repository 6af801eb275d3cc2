"""Model checkpoints on disk: safetensors headers, the tensor check, and the bounded-memory folder write.

Every conversion (`convert.hf`, `convert.from_gguf`, `convert.derive`) is the same pipeline, built so that a
failure never leaves a half model and memory stays bounded:

1. **Scan.** Read only the safetensors headers (names, dtypes, shapes) of the source; pickle checkpoints are refused.
2. **Check.** Compare them with the tensors the target `lm.Model` expects (built lazily, nothing allocated) and
   report every missing, unexpected and mis-shaped tensor by name, all at once, before anything is written.
3. **Write.** Stream the tensors shard by shard into a temporary folder (`atomic.folder`): each output tensor is
   produced from lazily loaded sources (`mx.load` reads one safetensors tensor when it is evaluated), transformed
   (cast, renamed, quantized, dequantized) and evaluated, and each output shard is saved and freed before the next
   is read. Peak memory is about one output shard. The folder is renamed into place only when complete.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxsuite.data.hf_tokenizer import TOKENIZER_FILES
from mlxsuite.data.tokenizer import TOKENIZER_FILE, UNIGRAM_FILE
from mlxsuite.models import lm
from mlxsuite.platform import ProgressCallback, atomic
from mlxsuite.platform.errors import UserError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# safetensors dtype codes → numpy-style names (for messages) and whether they are floating point
ST_FLOAT = {"F64", "F32", "F16", "BF16"}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1,
             "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
SIDE_FILES = (TOKENIZER_FILE, UNIGRAM_FILE, "generation_config.json") + TOKENIZER_FILES


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its safetensors header describes it (nothing is read)."""

    file: Path
    dtype: str  # safetensors code: F32, BF16, U32, ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _ST_BYTES.get(self.dtype, 4)
        for s in self.shape:
            n *= s
        return n


@dataclass
class Result:
    """What a conversion wrote."""

    path: Path
    n_tensors: int
    nbytes: int
    shards: int
    config: dict
    notes: list[str] = field(default_factory=list)


# ---- a checkpoint folder: config, pickles refused -------------------------------------------------------------------


def read_config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json") from None
    except ValueError as e:
        raise UserError(f"{folder}/config.json is not valid JSON: {e}") from None


def refuse_pickle_message(path: Path) -> str:
    return (
        f"refusing to load {path}: pickle checkpoints can run arbitrary code when loaded; convert it to safetensors "
        "first (in a trusted environment: torch.load(..., weights_only=True) then safetensors.torch.save_file)"
    )


# ---- reading safetensors headers ----------------------------------------------------------------------------------


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a safetensors file's JSON header (the data is not read)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file too short")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    out, end = {}, 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            out[name] = TensorInfo(path, str(meta["dtype"]), tuple(int(s) for s in meta["shape"]))
            end = max(end, int(meta["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise UserError(f"{path}: malformed header entry for tensor {name}") from None
    size = path.stat().st_size
    if size < 8 + n + end:  # the data a converter reads lazily, long after its output folder is made
        raise UserError(f"{path} is truncated or corrupt: its header describes {8 + n + end:,} bytes, it has {size:,}")
    return out


def weight_files(folder: Path) -> list[Path]:
    """The weight shards of a checkpoint folder: those its index names, else `model*.safetensors`.
    Pickle checkpoints are refused: only safetensors are ever read."""
    folder = Path(folder)
    if folder.is_file() or not folder.exists():
        if folder.suffix in PICKLE_SUFFIXES:
            raise UserError(refuse_pickle_message(folder))
        if folder.is_file():
            raise UserError(f"{folder} is a file: give the checkpoint folder (config.json + *.safetensors)")
        raise UserError(f"checkpoint folder not found: {folder}")
    index = folder / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index} is not a valid safetensors index: {e}") from None
        bad = [n for n in names if not n.endswith(".safetensors")]
        if bad:
            raise UserError(f"{index} names non-safetensors files ({', '.join(bad)}): only safetensors are read")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise UserError(f"{index} names shards that are not in {folder}: {', '.join(missing)}")
        return [folder / n for n in names]
    files = sorted(folder.glob("model*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(refuse_pickle_message(pickles[0]))
    raise UserError(f"{folder} has no weights (model*.safetensors)")


def scan(folder: Path) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint folder, from the shard headers; a name in two shards is an error."""
    tensors: dict[str, TensorInfo] = {}
    for f in weight_files(folder):
        for name, info in read_header(f).items():
            if name in tensors:
                raise UserError(f"tensor {name} is in both {tensors[name].file.name} and {f.name}")
            tensors[name] = info
    return tensors


# ---- checking tensors against a model ----------------------------------------------------------------------------


def natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def shape_text(s) -> str:
    return "x".join(str(d) for d in s) or "scalar"


def name_list(names: list[str], limit: int = 25) -> str:
    text = ", ".join(names[:limit])
    return text + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def expected_shapes(args: lm.ModelArgs, quantized: Optional[dict[str, dict]] = None) -> dict[str, tuple]:
    """name → shape of every parameter of `lm.Model(args)`, the layers in `quantized` (module path → its
    {"group_size", "bits", "mode"}) quantized. Built lazily: no weights are materialized."""
    try:
        model = lm.Model(args)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"config does not describe a supported model: {e}") from None
    if quantized:
        nn.quantize(model, class_predicate=lambda p, m: quantized.get(p, False))
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def quantized_layers(config: dict, tensors: dict[str, tuple]) -> dict[str, dict]:
    """module path → quantization parameters of every quantized layer of an mlx-lm style folder: its entry in
    config.json's "quantization" (mlx-lm's per-layer form), else the folder-wide values."""
    quant = config.get("quantization") or {}
    default = {"group_size": quant.get("group_size"), "bits": quant.get("bits"), "mode": quant.get("mode", "affine")}
    layers = {}
    for name in tensors:
        if name.endswith(".scales"):
            path = name[: -len(".scales")]
            entry = quant.get(path)
            layers[path] = {**default, **entry} if isinstance(entry, dict) else default
    return layers


def check_tensors(found: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
    """Raise one UserError naming every missing, unexpected and mis-shaped tensor."""
    missing = sorted(expected.keys() - found.keys(), key=natural)
    unexpected = sorted(found.keys() - expected.keys(), key=natural)
    wrong = [
        f"{k} is {shape_text(found[k])}, expected {shape_text(expected[k])}"
        for k in sorted(expected.keys() & found.keys(), key=natural)
        if tuple(found[k]) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {name_list(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {name_list(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} with the wrong shape: {name_list(wrong, 10)}")
    if parts:
        raise UserError(f"the weights in {where} do not match its config.json: " + "; ".join(parts))


# ---- writing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    out: str  # output name (before `produce`, which may split it into weight/scales/biases)
    src: str  # source tensor name
    info: Optional[TensorInfo] = None  # where a safetensors source lives (None for other sources)


Produce = Callable[[Item], dict[str, mx.array]]


class SafetensorsSource:
    """Source tensors loaded lazily (`mx.load` reads a safetensors tensor when it is evaluated), each handed out
    once so that its buffer can be freed as soon as its output is written."""

    def __init__(self, tensors: dict[str, TensorInfo]):
        self.tensors = tensors
        self.files: dict[Path, dict] = {}

    def take(self, name: str) -> mx.array:
        file = self.tensors[name].file
        if file not in self.files:
            self.files[file] = mx.load(str(file))  # lazy: nothing read yet
        return self.files[file].pop(name)


def write_shards(
    folder: Path, shards: list[list[Item]], produce: Produce, progress: Optional[ProgressCallback]
) -> tuple[int, int, int]:
    """Write the tensors as `model.safetensors` (or `model-0000i-of-0000n.safetensors` plus an index), one output
    shard at a time: `produce` makes each item's output arrays (reading its sources lazily), they are evaluated at
    once, and the shard is saved, then freed."""
    shards = [s for s in shards if s]
    total = sum(len(s) for s in shards)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    nbytes = done = 0
    for shard, fname in zip(shards, names):
        out: dict[str, mx.array] = {}
        for item in shard:
            arrays = produce(item)
            mx.eval(list(arrays.values()))
            out.update(arrays)
            del arrays
            mx.clear_cache()  # return the source buffer of a cast or quantized tensor now, not at the end of the shard
            done += 1
            if progress is not None:
                progress(done, total, item.out)
        mx.save_safetensors(str(folder / fname), out, metadata={"format": "mlx"})
        nbytes += sum(v.nbytes for v in out.values())
        weight_map.update({k: fname for k in out})
        del out
        mx.clear_cache()
    index = {"metadata": {"total_size": nbytes}, "weight_map": dict(sorted(weight_map.items()))}
    atomic.write_text(folder / INDEX_FILE, json.dumps(index, indent=4) + "\n")
    return len(weight_map), nbytes, n


def shards_by_source(items: list[Item]) -> list[list[Item]]:
    """One output shard per source shard (so memory stays at about one shard), tensors in natural name order."""
    groups: dict[Path, list[Item]] = {}
    for item in sorted(items, key=lambda i: natural(i.out)):
        groups.setdefault(item.info.file, []).append(item)
    return [groups[f] for f in sorted(groups)]


def shards_by_size(items: list[Item], nbytes: dict[str, int], limit: int = 2 << 30) -> list[list[Item]]:
    """Output shards of about `limit` bytes (`nbytes`: output size per item), tensors in natural name order."""
    shards: list[list[Item]] = [[]]
    size = 0
    for item in sorted(items, key=lambda i: natural(i.out)):
        if shards[-1] and size + nbytes[item.out] > limit:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes[item.out]
    return shards


def write_json(path: Path, obj: dict) -> None:
    atomic.write_json(path, obj)


def copy_side_files(src: Path, dst: Path, names=SIDE_FILES) -> None:
    for name in names:
        if (src / name).is_file():
            atomic.copy_file(src / name, dst / name)


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out} exists: choose another name or pass `force`")
