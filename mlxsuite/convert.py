"""Weight conversion: Hugging Face → this project, this project → mlx-lm, layer pruning, quantization.

Every conversion is the same pipeline, built so that a failure never leaves a half model and memory stays bounded:

1. **Scan.** Read only the safetensors headers (names, dtypes, shapes) of the source; pickle checkpoints are refused.
2. **Check.** Compare them with the tensors the target `lm.Model` expects (built lazily, nothing allocated) and
   report every missing, unexpected and mis-shaped tensor by name, all at once, before anything is written.
3. **Write.** Stream the tensors shard by shard into a temporary folder (`atomic.folder`): each tensor is loaded
   lazily (`mx.load` reads one tensor when it is evaluated), transformed (cast, renamed, quantized), and each output
   shard is saved and freed before the next is read. Peak memory is about one output shard. The folder is renamed
   into place only when complete.

Layer names are the Hugging Face / mlx-lm Llama names, so Llama, Mistral, Qwen2 and Qwen3 checkpoints map one to
one onto `mlxsuite.models.lm` (Qwen2: q/k/v biases via `qkv_bias`; Qwen3: `qk_norm`). The library never prints:
progress goes to a `progress(done, total, tensor_name)` callback.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import atomic, store
from .errors import UserError
from .hf_tokenizer import TOKENIZER_FILES, copy_tokenizer_files, spm_to_tokenizer_json
from .models import lm
from .tokenizer import TOKENIZER_FILE, UNIGRAM_FILE

Progress = Callable[[int, int, str], None]

HF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype codes → numpy-style names (for messages) and whether they are floating point
_ST_FLOAT = {"F64", "F32", "F16", "BF16"}
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1,
             "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
# HF defaults where config.json may omit a key (transformers' config classes)
_HF_DEFAULTS = {
    "llama": dict(rope_theta=10000.0, max_position_embeddings=2048, rms_norm_eps=1e-6),
    "mistral": dict(rope_theta=10000.0, max_position_embeddings=4096 * 32, rms_norm_eps=1e-6),
    "qwen2": dict(rope_theta=10000.0, max_position_embeddings=32768, rms_norm_eps=1e-6),
    "qwen3": dict(rope_theta=10000.0, max_position_embeddings=32768, rms_norm_eps=1e-6),
}
_SIDE_FILES = (TOKENIZER_FILE, UNIGRAM_FILE, "generation_config.json") + TOKENIZER_FILES
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


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


# ---- layer pruning (KV Prediction, KVP-LP) -------------------------------------------------------------------------


def pruned_layers(n_layers: int, keep: float) -> list[int]:
    """The layers an LP-`keep` model retains (KV Prediction paper, Table 4; `layer_pruned_gpt_configs`):

    - 0.75: drop every layer with index ≡ 3 (mod 4): 0,1,2,4,5,6,8,… (21 of 28, 27 of 36)
    - 0.50: the even layers 0,2,4,… (14 of 28, 18 of 36)
    - 0.25: every fourth layer 0,4,8,… (7 of 28, 9 of 36)
    """
    rule = _keep_rule(keep)
    if n_layers < 1:
        raise UserError(f"cannot prune a model with {n_layers} layers")
    return [i for i in range(n_layers) if rule(i)]


_KEEP_RULES = {0.75: lambda i: i % 4 != 3, 0.5: lambda i: i % 2 == 0, 0.25: lambda i: i % 4 == 0}


def _keep_rule(keep: float):
    for k, rule in _KEEP_RULES.items():
        if abs(keep - k) < 1e-9:
            return rule
    raise UserError(f"--keep must be 0.75, 0.5 or 0.25 (the KV Prediction paper's LP models), got {keep}")


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
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            out[name] = TensorInfo(path, str(meta["dtype"]), tuple(int(s) for s in meta["shape"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: malformed header entry for tensor {name}") from None
    return out


def _weight_files(folder: Path) -> list[Path]:
    """The weight shards of a checkpoint folder: those its index names, else `model*.safetensors`.
    Pickle checkpoints are refused: only safetensors are ever read."""
    folder = Path(folder)
    if folder.is_file() or not folder.exists():
        if folder.suffix in store.PICKLE_SUFFIXES:
            raise UserError(store.refuse_pickle_message(folder))
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
    pickles = sorted(p for p in folder.iterdir() if p.suffix in store.PICKLE_SUFFIXES)
    if pickles:
        raise UserError(store.refuse_pickle_message(pickles[0]))
    raise UserError(f"{folder} has no weights (model*.safetensors)")


def scan(folder: Path) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint folder, from the shard headers; a name in two shards is an error."""
    tensors: dict[str, TensorInfo] = {}
    for f in _weight_files(folder):
        for name, info in read_header(f).items():
            if name in tensors:
                raise UserError(f"tensor {name} is in both {tensors[name].file.name} and {f.name}")
            tensors[name] = info
    return tensors


# ---- checking tensors against a model ----------------------------------------------------------------------------


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _shape(s) -> str:
    return "x".join(str(d) for d in s) or "scalar"


def _names(names: list[str], limit: int = 25) -> str:
    text = ", ".join(names[:limit])
    return text + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def expected_shapes(args: lm.ModelArgs, quantized: Optional[set[str]] = None, quant: Optional[dict] = None):
    """name → shape of every parameter of `lm.Model(args)`; layers in `quantized` (module paths) are quantized with
    `quant` ({"group_size", "bits"}). Built lazily: no weights are materialized."""
    try:
        model = lm.Model(args)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"config does not describe a supported model: {e}") from None
    if quantized:
        nn.quantize(
            model, group_size=quant["group_size"], bits=quant["bits"], class_predicate=lambda p, m: p in quantized
        )
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def check_tensors(found: dict[str, tuple], expected: dict[str, tuple], where: str) -> None:
    """Raise one UserError naming every missing, unexpected and mis-shaped tensor."""
    missing = sorted(expected.keys() - found.keys(), key=_natural)
    unexpected = sorted(found.keys() - expected.keys(), key=_natural)
    wrong = [
        f"{k} is {_shape(found[k])}, expected {_shape(expected[k])}"
        for k in sorted(expected.keys() & found.keys(), key=_natural)
        if tuple(found[k]) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} with the wrong shape: {_names(wrong, 10)}")
    if parts:
        raise UserError(f"the weights in {where} do not match its config.json: " + "; ".join(parts))


def _quantizable(args: lm.ModelArgs, group_size: int, notes: list[str]) -> set[str]:
    """Module paths `nn.quantize` would quantize (as mlx-lm's convert): every Linear and Embedding whose input
    dimension is a multiple of the group size. The others stay in float; `notes` says how many."""
    layers = {p: m for p, m in lm.Model(args).named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    chosen = {p for p, m in layers.items() if m.weight.shape[-1] % group_size == 0}
    if not chosen:
        dims = sorted({m.weight.shape[-1] for m in layers.values()})
        raise UserError(f"no layer can be quantized with group size {group_size}: input dimensions are {dims}")
    if len(chosen) < len(layers):
        notes.append(
            f"{len(layers) - len(chosen)} of {len(layers)} layers stay in float: input dimension not a multiple "
            f"of the group size {group_size}"
        )
    return chosen


def _check_quant_args(bits: int, group_size: int) -> None:
    if bits not in (2, 3, 4, 5, 6, 8):
        raise UserError(f"bits must be 4 or 8 (or 2, 3, 5, 6), got {bits}")
    if group_size not in (32, 64, 128):
        raise UserError(f"group size must be 32, 64 or 128, got {group_size}")


# ---- writing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    out: str  # output name (before the transform, which may split it into weight/scales/biases)
    src: str  # source tensor name
    info: TensorInfo


Transform = Callable[[str, mx.array], dict[str, mx.array]]


def _identity(name: str, w: mx.array) -> dict[str, mx.array]:
    return {name: w}


def _cast_and_quantize(dtype=None, quantized: Optional[set[str]] = None, quant: Optional[dict] = None) -> Transform:
    def transform(name: str, w: mx.array) -> dict[str, mx.array]:
        if dtype is not None and mx.issubdtype(w.dtype, mx.floating):
            w = w.astype(dtype)
        path = name[: -len(".weight")] if name.endswith(".weight") else None
        if quantized and path in quantized:
            q, scales, biases = mx.quantize(w, group_size=quant["group_size"], bits=quant["bits"])
            return {f"{path}.weight": q, f"{path}.scales": scales, f"{path}.biases": biases}
        return {name: w}

    return transform


def _write_weights(
    folder: Path, shards: list[list[_Item]], transform: Transform, progress: Optional[Progress]
) -> tuple[int, int, int]:
    """Write the tensors as `model.safetensors` (or `model-0000i-of-0000n.safetensors` plus an index), one output
    shard at a time: each tensor is read lazily, transformed and evaluated; the shard is saved, then freed."""
    shards = [s for s in shards if s]
    total = sum(len(s) for s in shards)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    nbytes = done = 0
    for shard, fname in zip(shards, names):
        sources: dict[Path, dict] = {}
        out: dict[str, mx.array] = {}
        for item in shard:
            if item.info.file not in sources:
                sources[item.info.file] = mx.load(str(item.info.file))  # lazy: nothing read yet
            w = sources[item.info.file].pop(item.src)  # drop our reference so the source buffer can be freed
            arrays = transform(item.out, w)
            del w
            mx.eval(list(arrays.values()))
            out.update(arrays)
            mx.clear_cache()  # return the source buffer of a cast or quantized tensor now, not at the end of the shard
            done += 1
            if progress is not None:
                progress(done, total, item.out)
        mx.save_safetensors(str(folder / fname), out, metadata={"format": "mlx"})
        nbytes += sum(v.nbytes for v in out.values())
        weight_map.update({k: fname for k in out})
        del out, sources
        mx.clear_cache()
    index = {"metadata": {"total_size": nbytes}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=4) + "\n")
    return len(weight_map), nbytes, n


def _shards_by_source(items: list[_Item]) -> list[list[_Item]]:
    """One output shard per source shard (so memory stays at about one shard), tensors in natural name order."""
    groups: dict[Path, list[_Item]] = {}
    for item in sorted(items, key=lambda i: _natural(i.out)):
        groups.setdefault(item.info.file, []).append(item)
    return [groups[f] for f in sorted(groups)]


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _copy_side_files(src: Path, dst: Path, names=_SIDE_FILES) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out} exists: choose another name or pass --force")


# ---- our model folders ---------------------------------------------------------------------------------------------


def _open_model_folder(name_or_path: str):
    """A model folder of this project: (folder, config, args, quantization, tensors), checked against its config."""
    folder = store.resolve(name_or_path)
    config = store.read_config(folder)
    try:
        args = lm.ModelArgs.from_dict(config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{folder}/config.json does not describe a model: {e}") from None
    tensors = scan(folder)
    quant = config.get("quantization")
    quantized = None
    if quant:
        quantized = {k[: -len(".scales")] for k in tensors if k.endswith(".scales")}
    found = {k: v.shape for k, v in tensors.items()}
    if args.tie_word_embeddings:
        found.pop("lm_head.weight", None)
    check_tensors(found, expected_shapes(args, quantized, quant), str(folder))
    tensors = {k: v for k, v in tensors.items() if k in found}
    return folder, config, args, quant, tensors


# ---- Hugging Face → this project -----------------------------------------------------------------------------------


def hf_config_to_args(config: dict, has_lm_head: Optional[bool] = None) -> tuple[lm.ModelArgs, list[str]]:
    """ModelArgs for a Hugging Face config.json of the Llama family, plus notes on what the conversion ignores."""
    mt = config.get("model_type")
    if mt not in HF_MODEL_TYPES:
        found = f"model_type {mt!r}" if mt else "no model_type"
        supported = ", ".join(HF_MODEL_TYPES)
        raise UserError(f"unsupported checkpoint: config.json has {found}; from-hf converts {supported}")
    if config.get("quantization_config") or config.get("quantization"):
        raise UserError("the checkpoint is already quantized: convert its float (unquantized) version")
    act = config.get("hidden_act", config.get("hidden_activation", "silu"))
    if act not in ("silu", "swish"):
        raise UserError(f"unsupported activation hidden_act={act!r}: only SwiGLU (silu) decoders are supported")
    layer_types = config.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise UserError("sliding-window attention layers (layer_types) are not supported")
    required = ["hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size"]
    lacking = [k for k in required if not isinstance(config.get(k), int)]
    if lacking:
        raise UserError(f"config.json lacks {', '.join(lacking)}")
    notes = []
    defaults = _HF_DEFAULTS[mt]
    # transformers >= 5 nests rope_theta and the scaling under rope_parameters
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta", defaults["rope_theta"]))
    scaling = config.get("rope_scaling")
    if scaling is None and params.get("rope_type", params.get("type", "default")) != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    if config.get("sliding_window") and (mt == "mistral" or config.get("use_sliding_window")):
        notes.append(
            f"sliding_window={config['sliding_window']} is ignored (full attention, as in mlx-lm): "
            "outputs differ from transformers only past the window"
        )
    tie = config.get("tie_word_embeddings")
    if tie is None:  # not stated: tied exactly when the checkpoint has no output head
        tie = False if has_lm_head is None else not has_lm_head
    heads = config["num_attention_heads"]
    kw = dict(
        model_type=mt,
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_hidden_layers"],
        intermediate_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        vocab_size=config["vocab_size"],
        head_dim=config.get("head_dim") if mt != "qwen2" else None,  # qwen2 (and mlx-lm's qwen2) use d / heads
        rms_norm_eps=config.get("rms_norm_eps", defaults["rms_norm_eps"]),
        rope_theta=float(theta),
        rope_traditional=False,
        rope_scaling=scaling,
        max_position_embeddings=config.get("max_position_embeddings") or defaults["max_position_embeddings"],
        tie_word_embeddings=bool(tie),
        attention_bias=bool(config.get("attention_bias", False)) if mt != "qwen2" else False,
        qkv_bias=mt == "qwen2",
        mlp_bias=bool(config.get("mlp_bias", False)) if mt == "llama" else False,
        qk_norm=mt == "qwen3",
    )
    try:
        args = lm.ModelArgs(**kw)
        lm.Model(args)  # rejects rope scalings mlx-lm cannot build, before anything is read
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"config.json does not describe a supported model: {e}") from None
    return args, notes


def _source_dtype(config: dict) -> Optional[str]:
    d = config.get("torch_dtype", config.get("dtype"))
    return d if d in DTYPES else None


def from_hf(
    hf_dir: str | Path,
    out: str | Path,
    dtype: Optional[str] = None,
    quantize_bits: Optional[int] = None,
    group_size: int = 64,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Result:
    """Convert a local Hugging Face checkpoint (Llama, Mistral, Qwen2, Qwen3; safetensors only) into a model folder
    of this project at `out` (a path). `dtype` defaults to the checkpoint's torch_dtype; `quantize_bits` quantizes
    Linear and Embedding layers (affine, `group_size`) as mlx-lm's convert does. The tokenizer comes along."""
    hf_dir, out = Path(hf_dir).expanduser(), Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    if quantize_bits is not None:
        _check_quant_args(quantize_bits, group_size)
    tensors = scan(hf_dir)  # refuses pickle checkpoints, missing folders
    config = store.read_config(hf_dir)
    args, notes = hf_config_to_args(config, has_lm_head="lm_head.weight" in tensors)
    _refuse_existing(out, force)

    # what mlx-lm's sanitize drops: precomputed rotary frequencies, the head of a tied model
    dropped = [k for k in tensors if "rotary_emb.inv_freq" in k]
    if args.tie_word_embeddings and "lm_head.weight" in tensors:
        dropped.append("lm_head.weight")
    tensors = {k: v for k, v in tensors.items() if k not in dropped}
    check_tensors({k: v.shape for k, v in tensors.items()}, expected_shapes(args), str(hf_dir))
    not_float = sorted((k for k, v in tensors.items() if v.dtype not in _ST_FLOAT), key=_natural)
    if not_float:
        raise UserError(f"only float checkpoints can be converted; not float: {_names(not_float, 5)}")

    target = dtype or _source_dtype(config)
    quant = quantized = None
    if quantize_bits is not None:
        quant = {"group_size": group_size, "bits": quantize_bits}
        quantized = _quantizable(args, group_size, notes)
    transform = _cast_and_quantize(DTYPES[target] if target else None, quantized, quant)

    out_config = args.to_dict()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config.get(key) is not None:
            out_config[key] = config[key]
    if quant:
        out_config["quantization"] = dict(quant)
        out_config["quantization_config"] = dict(quant)
    out_config["mlxsuite"] = {
        "format": 1,
        "converted_from": {
            "path": str(hf_dir.resolve()),
            "model_type": config.get("model_type"),
            "architectures": config.get("architectures"),
            "dtype": target or "as stored",
        },
    }
    items = [_Item(k, k, v) for k, v in tensors.items()]
    with atomic.folder(out, force=force) as tmp:
        n, nbytes, shards = _write_weights(tmp, _shards_by_source(items), transform, progress)
        _write_json(tmp / "config.json", out_config)
        copied = copy_tokenizer_files(hf_dir, tmp)
        if "tokenizer.json" not in copied:
            if (hf_dir / TOKENIZER_FILE).is_file():  # a SentencePiece-only checkpoint: our Tokenizer reads it
                shutil.copy(hf_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
                notes.append("no tokenizer.json: copied the SentencePiece tokenizer.model (no BOS is added)")
            else:
                notes.append("the checkpoint has no tokenizer (tokenizer.json): the model has none")
        if (hf_dir / "generation_config.json").is_file():
            shutil.copy(hf_dir / "generation_config.json", tmp / "generation_config.json")
    return Result(out, n, nbytes, shards, out_config, notes)


# ---- this project → mlx-lm ----------------------------------------------------------------------------------------

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# Sample text for checking a converted tokenizer against SentencePiece: whitespace runs, digits, newlines (byte
# fallback), accents, CJK, emoji, NFKC-folded characters.
TOKENIZER_CHECK_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,   runs of spaces\tand a tab",
    "line one\nline two\n\n    indented code(x) -> y  # 1234567890",
    "naïve café, Straße, 東京, 🙂, ﬁ ligature, ① ½",
    "",
]


def mlx_lm_model_type(args: lm.ModelArgs) -> str:
    """The mlx-lm architecture whose forward pass equals `lm.Model(args)`'s; UserError if there is none.

    q/k/v biases without an o_proj bias (qwen2-style) go to `llama` with `attention_bias` and a zero o_proj bias
    rather than to `qwen2`: transformers >= 5 forces its Qwen2Tokenizer (byte-level BPE) on any model_type "qwen2"
    folder, which would re-tokenize a SentencePiece vocabulary wrongly inside mlx-lm."""
    if args.qk_norm:
        if args.attention_bias or args.qkv_bias or args.mlp_bias or args.rope_traditional:
            raise UserError("no mlx-lm architecture has q/k-norm with biases or traditional RoPE (qwen3 has neither)")
        return "qwen3"
    return "llama"


def to_mlx_lm(
    model: str, out: str | Path, force: bool = False, progress: Optional[Progress] = None
) -> Result:
    """Write a model of this project as a folder that `mlx_lm.load` opens as it is: mlx-lm's config (model_type
    llama, or qwen3 with q/k-norm), the same weights (names already match), and a `tokenizer.json` converted from the
    SentencePiece model, checked to encode exactly as SentencePiece does."""
    from .tokenizer import load_tokenizer

    out = Path(out)
    folder, config, args, quant, tensors = _open_model_folder(model)
    mt = mlx_lm_model_type(args)
    _refuse_existing(out, force)
    tok = load_tokenizer(folder)
    if tok is None:
        raise UserError(f"{folder} has no tokenizer: mlx-lm needs one")

    out_config = args.to_dict()
    out_config.update(model_type=mt, architectures=[_ARCHITECTURES[mt]], hidden_act="silu")
    dtypes = {v.dtype for k, v in tensors.items() if v.dtype in _ST_FLOAT and not k.endswith((".scales", ".biases"))}
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    if len(dtypes) == 1 and next(iter(dtypes)) in names:
        out_config["torch_dtype"] = names[next(iter(dtypes))]
    transform = _identity
    if args.qkv_bias and not args.attention_bias:  # llama's attention_bias also biases o_proj: add a zero one
        out_config.update(attention_bias=True, qkv_bias=False)
        bias_dtype = getattr(mx, out_config.get("torch_dtype", "float32"))

        def transform(name: str, w: mx.array) -> dict[str, mx.array]:
            if name.endswith("self_attn.o_proj.weight"):
                return {name: w, name[: -len("weight")] + "bias": mx.zeros((w.shape[0],), dtype=bias_dtype)}
            return {name: w}

    for key, tid in (("bos_token_id", tok.bos_id), ("eos_token_id", tok.eos_id), ("pad_token_id", -1)):
        if config.get(key) is not None:  # kept from a Hugging Face source (eos may list several ids)
            out_config[key] = config[key]
        elif tid >= 0:
            out_config[key] = tid
    if quant:
        out_config["quantization"] = quant
        out_config["quantization_config"] = quant
    out_config["mlxsuite"] = {"format": 1, "exported_from": str(folder.resolve())}

    items = [_Item(k, k, v) for k, v in tensors.items()]
    with atomic.folder(out, force=force) as tmp:
        if (folder / TOKENIZER_FILE).is_file():
            spm_to_tokenizer_json(folder / TOKENIZER_FILE, tmp)
            _check_tokenizer(tok, tmp)
        else:
            copy_tokenizer_files(folder, tmp)
        n, nbytes, shards = _write_weights(tmp, _shards_by_source(items), transform, progress)
        _write_json(tmp / "config.json", out_config)
        _copy_side_files(folder, tmp, ("generation_config.json",))
    return Result(out, n, nbytes, shards, out_config)


def _check_tokenizer(sp_tokenizer, folder: Path) -> None:
    from .hf_tokenizer import HFTokenizer

    hf = HFTokenizer(folder)
    for text in TOKENIZER_CHECK_TEXT:
        if hf.encode(text) != sp_tokenizer.encode(text):
            raise UserError(f"the converted tokenizer.json does not encode {text!r} as SentencePiece does")


# ---- pruning and quantization of our models ---------------------------------------------------------------------


def prune(
    model: str, out: str | Path, keep: float, force: bool = False, progress: Optional[Progress] = None
) -> Result:
    """An LP-`keep` copy of a model (KV Prediction): the layers `pruned_layers` selects, renumbered 0..n-1, with the
    base's weights; embeddings, final norm, head and tokenizer unchanged."""
    out = Path(out)
    _keep_rule(keep)
    folder, config, args, quant, tensors = _open_model_folder(model)
    kept = pruned_layers(args.num_hidden_layers, keep)
    _refuse_existing(out, force)
    new_index = {old: new for new, old in enumerate(kept)}
    items = []
    for name, info in tensors.items():
        m = _LAYER.match(name)
        if m is None:
            items.append(_Item(name, name, info))
        elif int(m.group(1)) in new_index:
            items.append(_Item(f"model.layers.{new_index[int(m.group(1))]}.{m.group(2)}", name, info))
    out_config = dict(config)
    out_config["num_hidden_layers"] = len(kept)
    block = dict(config.get("mlxsuite") or {})
    block.setdefault("format", 1)
    block["pruned"] = {
        "from": str(folder.resolve()), "keep": keep, "layers": kept, "base_layers": args.num_hidden_layers
    }
    out_config["mlxsuite"] = block
    with atomic.folder(out, force=force) as tmp:
        n, nbytes, shards = _write_weights(tmp, _shards_by_source(items), _identity, progress)
        _write_json(tmp / "config.json", out_config)
        _copy_side_files(folder, tmp)
    return Result(out, n, nbytes, shards, out_config)


def quantize(
    model: str,
    out: str | Path,
    bits: int = 4,
    group_size: int = 64,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> Result:
    """Affine-quantize every Linear and Embedding whose input dimension is a multiple of `group_size` (mlx-lm's
    rule); `store.load_model` and mlx-lm re-create the quantized layers from config.json's "quantization"."""
    out = Path(out)
    _check_quant_args(bits, group_size)
    folder, config, args, quant, tensors = _open_model_folder(model)
    if quant:
        raise UserError(f"{folder} is already quantized ({quant.get('bits')}-bit)")
    _refuse_existing(out, force)
    q = {"group_size": group_size, "bits": bits}
    notes: list[str] = []
    transform = _cast_and_quantize(None, _quantizable(args, group_size, notes), q)
    out_config = dict(config)
    out_config["quantization"] = dict(q)
    out_config["quantization_config"] = dict(q)
    items = [_Item(k, k, v) for k, v in tensors.items()]
    with atomic.folder(out, force=force) as tmp:
        n, nbytes, shards = _write_weights(tmp, _shards_by_source(items), transform, progress)
        _write_json(tmp / "config.json", out_config)
        _copy_side_files(folder, tmp)
    return Result(out, n, nbytes, shards, out_config, notes)
