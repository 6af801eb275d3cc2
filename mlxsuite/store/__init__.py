"""The local model store, model references, and the one loader and writer of every kind of model here.

A model folder holds `config.json`, weights (`model*.safetensors`) and a tokenizer (`tokenizer.model`, ours, or
`tokenizer.json`). What it holds is told by the config's `model_type`, as in mlx-lm:

- a family of `models.lm.FAMILIES` (llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, openelm): a language
  model: ours, mlx-lm's, or a Hugging Face snapshot; float, quantized at any bit width or mixed-bit. Loaded by
  mlx-lm's own loader (`mlx_lm.utils.load_model`: sanitize, per-layer quantization) with this project's classes;
- any other model_type mlx-lm runs: a language model through mlx-lm's own class (`models.mlx_lm_class`), for
  profiling, generation and evaluation only (`require_own_forward` refuses it elsewhere);
- `moma`: a MoMa run (`models.moma`), the same way;
- `kv_prediction`: a KV Prediction pair: the base by reference (path, name and sha256 of its weights), the trained
  auxiliary as a model folder in `aux/`, the predictor in `predictor.safetensors`.

References are resolved by `store.refs`. Everything is written through `platform.atomic` (temporary sibling, then
rename). Only safetensors are read; pickle checkpoints are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import dequantize_model
from mlx_lm.utils import load_model as mlx_lm_load_model

from mlxsuite.convert.checkpoint import (
    CONFIG_FILE,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    read_config,
    refuse_pickle_message,
)
from mlxsuite.data.tokenizer import UNIGRAM_FILE, load_tokenizer
from mlxsuite.models import family, get_classes, lm, moma
from mlxsuite.models import kv_prediction as kvm
from mlxsuite.models.mlx_lm_class import SEAMS_MISSING, MlxLmClass
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.store.refs import (
    KVP_TYPE,
    check_weights,
    incomplete_message,
    models_dir,
    output_path,
    resolve,
    source_folder,
)

AUX_DIR = "aux"
PREDICTOR_FILE = "predictor.safetensors"
KINDS = {"lm": "a language model", "moma": "a MoMa run", KVP_TYPE: "a KV Prediction pair"}


def kind_of(config: dict, folder: Path) -> str:
    if config.get("model_type") == KVP_TYPE:
        return KVP_TYPE
    try:
        return "moma" if family(config) is moma else "lm"  # mlx-lm's own classes: "lm"
    except ValueError as e:
        raise UserError(f"{folder}: {e}") from None


def finished(folder: Path) -> Optional[dict]:
    """The final metrics a finished run recorded in its model folder's config.json, else None."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not any(folder.glob("*.safetensors")):
        return None
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("mlxsuite", {}).get("final")
    except ValueError:
        return None


def weights_hash(folder: Path) -> str:
    """sha256 over the folder's model*.safetensors files (in name order)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("model*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


# ---- loading ------------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    model: Any  # models.lm.Model, models.moma.Model or models.kv_prediction.KVPredictionModel
    tokenizer: Any  # Tokenizer, HFTokenizer or None
    folder: Path
    config: dict
    kind: str  # "lm", "moma" or "kv_prediction"
    notes: list[str] = field(default_factory=list)


def load(ref: str, kind: Optional[str] = None, dtype=None, dequantize: bool = False) -> Loaded:
    """Load any model folder (by reference) in eval mode. `kind` refuses other kinds in one line. `dequantize`
    (for inference) applies the one rule: on the CPU quantized layers become float32 ones (MLX's CPU quantized
    matmul does not use the BLAS and runs ~40× slower; said in `notes`), on a GPU they stay quantized; False keeps
    the weights as stored. A pair's base and auxiliary follow the same rule. `dtype` casts the float weights."""
    folder = resolve(ref)
    config = read_config(folder)
    found = kind_of(config, folder)
    if kind is not None and found != kind:
        raise UserError(f"{folder} is {KINDS[found]}, not {KINDS[kind]}" + _hint(found))
    if found == KVP_TYPE:
        return _load_pair(folder, config, dtype, dequantize)
    model = _load_weights(folder)
    notes = []
    if not isinstance(model, lm.CausalLM):
        model = MlxLmClass(model, config)
        notes.append(
            f"{folder.name}: model_type {model.model_type!r} has no family here: it runs through mlx-lm's own class "
            "(no fused CPU kernels, no KV Prediction, no training)"
        )
    if dequantize and mx.default_device().type == mx.DeviceType.cpu and _is_quantized(model):
        model.set_dtype(mx.float32)  # scales first: half-precision scales would round the weights to float16
        model = dequantize_model(model)
        model.set_dtype(dtype or mx.float32)  # GGUF and mlx-lm scales are half precision: the BLAS wants float32
        notes.append(
            f"{folder.name}: quantized weights dequantized for the CPU (MLX's CPU quantized matmul is ~40× "
            "slower than float32 through the BLAS)"
        )
    if dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    model.eval()
    return Loaded(model, load_tokenizer(folder), folder, config, found, notes)


def require_own_forward(model, folder: Path, what: str) -> None:
    """Refuse, in one line, a model that runs through mlx-lm's own class where `what` needs this project's forward."""
    if isinstance(model, MlxLmClass):
        raise UserError(
            f"{folder}: model_type {model.model_type!r} runs here only through mlx-lm's own class; {what} needs "
            f"{SEAMS_MISSING}, which the families {', '.join(lm.FAMILIES)} have"
        )


def load_model(ref: str, dtype=None, dequantize: bool = False):
    """(language model, tokenizer, folder): the common case of `load`."""
    loaded = load(ref, "lm", dtype, dequantize)
    return loaded.model, loaded.tokenizer, loaded.folder


def _hint(kind: str) -> str:
    return {
        "moma": ": use the `mlxsuite moma` commands",
        KVP_TYPE: ": pass its base model (with `kvp` for KV Prediction)",
    }.get(kind, "")


def _load_weights(folder: Path):
    """mlx-lm's loader (sanitize, per-layer quantization, strict names and shapes) with this project's classes."""
    try:
        model, _ = mlx_lm_load_model(folder, lazy=True, get_model_classes=get_classes)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"weights in {folder} do not match its config: {_first_line(e)}") from None
    except (RuntimeError, OSError) as e:  # a truncated or corrupt safetensors file
        raise UserError(f"cannot read the weights in {folder}: {_first_line(e)}") from None
    try:
        mx.eval(model.parameters())
    except (RuntimeError, OSError) as e:
        raise UserError(f"cannot read the weights in {folder}: {_first_line(e)}") from None
    return model


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _is_quantized(model) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def _load_pair(folder: Path, config: dict, dtype, dequantize) -> Loaded:
    """A KV Prediction pair; refuses a base whose weights changed since the pair was trained."""
    ref = config["base"]
    base = load(ref["path"] if Path(ref["path"]).is_dir() else ref["name"], "lm", dtype, dequantize)
    if weights_hash(base.folder) != ref["sha256"]:
        raise UserError(f"the base model {base.folder} changed since {folder} was trained (weights hash differs)")
    aux = load(str(folder / AUX_DIR), "lm", dtype, dequantize)
    predictor = kvm.KVPredictor(kvm.PredictorArgs.from_dict(config["predictor"]))
    try:
        predictor.load_weights(str(folder / PREDICTOR_FILE), strict=True)
    except (ValueError, RuntimeError, OSError) as e:
        raise UserError(f"cannot read the predictor in {folder}: {_first_line(e)}") from None
    pair = kvm.KVPredictionModel(base.model, aux.model, predictor)
    if dtype is not None:
        pair.set_dtype(dtype)
    pair.freeze()
    pair.eval()
    mx.eval(pair.parameters())
    return Loaded(pair, base.tokenizer, folder, config, KVP_TYPE, base.notes + aux.notes)


# ---- writing ------------------------------------------------------------------------------------------------------


def write_weights(folder: Path, model) -> Path:
    """The model's parameters as `model.safetensors` in `folder`, atomically."""
    weights = dict(tree_flatten(model.parameters()))
    return atomic.write_safetensors(Path(folder) / WEIGHTS_FILE, weights, {"format": "mlx"})


def model_config(model, extra: Optional[dict] = None) -> dict:
    """config.json of a model: its ModelArgs as Hugging Face / mlx-lm keys, plus this project's "mlxsuite" block."""
    return {**model.args.to_dict(), "mlxsuite": {"format": 1, **(extra or {})}}


def save(path: Path, model, tokenizer=None, extra: Optional[dict] = None, force: bool = True) -> Path:
    """A complete model folder (config, weights, tokenizer and its unigram table), written atomically."""
    with atomic.folder(path, force=force) as tmp:
        save_into(tmp, model, tokenizer, extra)
    return Path(path)


def save_into(folder: Path, model, tokenizer=None, extra: Optional[dict] = None) -> None:
    """A model's files into an existing folder (which may hold its run), each file atomically, config last."""
    if tokenizer is not None:
        tokenizer.save(folder)
        unigram = tokenizer.path.parent / UNIGRAM_FILE
        if unigram.exists() and unigram.parent != Path(folder):
            atomic.write_file(Path(folder) / UNIGRAM_FILE, lambda tmp: shutil.copy(unigram, tmp))
    write_weights(folder, model)
    atomic.write_json(Path(folder) / CONFIG_FILE, model_config(model, extra))


def save_pair(folder: Path, pair, tokenizer, config: dict) -> None:
    """A KV Prediction pair into `folder` (which may hold its run): aux/, the predictor, then config.json last."""
    folder = Path(folder)
    save(folder / AUX_DIR, pair.auxiliary, tokenizer, extra={"kvp_aux": config.get("aux", {})})
    weights = dict(tree_flatten(pair.predictor.parameters()))
    atomic.write_safetensors(folder / PREDICTOR_FILE, weights, {"format": "mlx"})
    atomic.write_json(
        folder / CONFIG_FILE, {**config, "model_type": KVP_TYPE, "predictor": pair.predictor.args.to_dict()}
    )
