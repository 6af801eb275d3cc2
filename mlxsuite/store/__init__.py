"""The local model store, model references, and the one loader and writer of every kind of model here.

A model folder holds `config.json`, weights (`model*.safetensors`) and a tokenizer (`tokenizer.model`, ours, or
`tokenizer.json`). What it holds is told by the config's `model_type`, as in mlx-lm:

- `llama`, `mistral`, `qwen2`, `qwen3`: a language model (`models.lm`): ours, mlx-lm's, or a Hugging Face
  snapshot; float, quantized at any bit width or mixed-bit. Loaded by mlx-lm's own loader
  (`mlx_lm.utils.load_model`: sanitize, per-layer quantization) with this project's model classes;
- `moma`: a MoMa run (`models.moma`), the same way;
- `kv_prediction`: a KV Prediction pair: the base by reference (path, name and sha256 of its weights), the trained
  auxiliary as a model folder in `aux/`, the predictor in `predictor.safetensors`.

Everything is written through `mlxsuite.atomic` (temporary sibling, then rename). Only safetensors are read;
pickle checkpoints are refused.
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
from mlx.utils import tree_flatten

from mlxsuite.data.tokenizer import UNIGRAM_FILE, load_tokenizer
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KVP_TYPE = "kv_prediction"
AUX_DIR = "aux"
PREDICTOR_FILE = "predictor.safetensors"
KINDS = {"lm": "a language model", "moma": "a MoMa run", KVP_TYPE: "a KV Prediction pair"}


def models_dir() -> Path:
    """MLXSUITE_MODELS, else the `models/` folder of the checkout this package runs from, else ./models."""
    env = os.environ.get("MLXSUITE_MODELS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "models"
    if (checkout / "README.md").exists():
        return checkout
    return Path.cwd() / "models"


def output_path(name_or_path: str) -> Path:
    """Where a command writes a model: a bare name goes into the store, anything with a slash is a path."""
    if os.sep in name_or_path or name_or_path.startswith("."):
        return Path(name_or_path)
    return models_dir() / name_or_path


# ---- references -------------------------------------------------------------------------------------------------


def resolve(ref: str) -> Path:
    """A model folder from a reference: a folder path (ours, mlx-lm's, a Hugging Face snapshot), a name in the
    store, a `.gguf` file (converted once into the cache, `convert_gguf.gguf_model_folder`), or a Hugging Face repo
    id or cache folder (`hub.resolve_repo`: the cache first, a download only when allowed). Refuses pickles."""
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        from mlxsuite.convert.from_gguf import gguf_model_folder

        return gguf_model_folder(path)
    for path in (path, models_dir() / ref):
        if path.is_dir():
            check_weights(path)
            return path
    if Path(ref).suffix in PICKLE_SUFFIXES:
        raise UserError(refuse_pickle_message(Path(ref)))
    from mlxsuite.store.hub import resolve_repo

    snapshot = resolve_repo(ref)
    if snapshot is not None:
        check_weights(snapshot)
        return snapshot
    raise UserError(
        f"model not found: {ref} (not a folder, a .gguf file, a Hugging Face repo id, or a name in the "
        f"store {models_dir()})"
    )


def refuse_pickle_message(path: Path) -> str:
    return (
        f"refusing to load {path}: pickle checkpoints can run arbitrary code when loaded; convert it to safetensors "
        "first (in a trusted environment: torch.load(..., weights_only=True) then safetensors.torch.save_file)"
    )


def check_weights(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise UserError(refuse_pickle_message(pickles[0]))
    if (folder / CONFIG_FILE).is_file() and read_config(folder).get("model_type") == KVP_TYPE:
        raise UserError(f"{folder} has no trained predictor yet (training unfinished? resume it)")
    if (folder / "run").is_dir():
        raise UserError(incomplete_message(folder))
    raise UserError(f"{folder} has no weights (*.safetensors)")


def incomplete_message(folder: Path) -> str:
    """What to say of a model folder whose training run was interrupted before its weights were written."""
    return f"{folder} is incomplete: its training was interrupted before it finished (resume it, or start over)"


def read_config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json") from None
    except ValueError as e:
        raise UserError(f"{folder}/config.json is not valid JSON: {e}") from None


def kind_of(config: dict, folder: Path) -> str:
    from mlxsuite.models import family, lm

    if config.get("model_type") == KVP_TYPE:
        return KVP_TYPE
    try:
        return "lm" if family(config) is lm else "moma"
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


def load(ref: str, kind: Optional[str] = None, dtype=None, dequantize: Optional[bool] = False) -> Loaded:
    """Load any model folder (by reference) in eval mode. `kind` refuses other kinds in one line. `dequantize`
    turns quantized layers back into float ones (None: on the CPU only, where MLX's quantized matmul does not use
    the BLAS and runs ~40× slower than float32; said in `notes`); `dtype` casts the floating-point weights."""
    folder = resolve(ref)
    config = read_config(folder)
    found = kind_of(config, folder)
    if kind is not None and found != kind:
        raise UserError(f"{folder} is {KINDS[found]}, not {KINDS[kind]}" + _hint(found))
    if found == KVP_TYPE:
        return _load_pair(folder, config, dtype, dequantize)
    model = _load_weights(folder)
    notes = []
    if dequantize is None:
        dequantize = mx.default_device().type == mx.DeviceType.cpu
    if dequantize and _is_quantized(model):
        from mlx_lm.utils import dequantize_model

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


def load_model(ref: str, dtype=None, dequantize: Optional[bool] = False):
    """(language model, tokenizer, folder): the common case of `load`."""
    loaded = load(ref, "lm", dtype, dequantize)
    return loaded.model, loaded.tokenizer, loaded.folder


def _hint(kind: str) -> str:
    return {
        "moma": ": use the `mlxsuite moma` commands",
        KVP_TYPE: ": pass its base model (with --kvp for KV Prediction)",
    }.get(kind, "")


def _load_weights(folder: Path):
    """mlx-lm's loader (sanitize, per-layer quantization, strict names and shapes) with this project's classes."""
    from mlx_lm.utils import load_model as mlx_lm_load_model

    from mlxsuite.models import get_classes

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
    import mlx.nn as nn

    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def _load_pair(folder: Path, config: dict, dtype, dequantize) -> Loaded:
    """A KV Prediction pair; refuses a base whose weights changed since the pair was trained."""
    from mlxsuite.models import kv_prediction as kvm

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
