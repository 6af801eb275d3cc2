"""The local model store and the model folder format.

A model folder holds `config.json` (ModelArgs as HF/mlx-lm keys, plus an "mlxsuite" block), `model.safetensors`,
the tokenizer (`tokenizer.model`) and its unigram table (`unigram.safetensors`). Folders are written to a temporary
sibling and renamed when complete, so an interrupted write never leaves a half model. Only safetensors are read.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .errors import UserError
from .models import lm
from .tokenizer import Tokenizer, load_tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS_FILE = "model.safetensors"


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


def resolve(name_or_path: str) -> Path:
    """A model folder by path or by name in the store; refuses folders that hold only pickle checkpoints."""
    candidates = [Path(name_or_path).expanduser(), models_dir() / name_or_path]
    for path in candidates:
        if path.is_dir():
            check_weights(path)
            return path
    if Path(name_or_path).suffix in PICKLE_SUFFIXES:
        raise UserError(refuse_pickle_message(Path(name_or_path)))
    raise UserError(f"model not found: {name_or_path} (not a folder, and not in the store {models_dir()})")


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
    raise UserError(f"{folder} has no weights (*.safetensors)")


@contextmanager
def atomic_dir(path: Path, force: bool = False):
    """Yield a temporary folder next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists: choose another name or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    tmp = Path(path).with_name(Path(path).name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_model_files(folder: Path, model: lm.Model, tokenizer: Tokenizer | None, extra: dict | None = None) -> None:
    """Write config, weights and tokenizer into an existing (temporary) folder."""
    config = model.args.to_dict()
    config["mlxsuite"] = {"format": 1, **(extra or {})}
    write_json(folder / "config.json", config)
    mx.save_safetensors(str(folder / WEIGHTS_FILE), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})
    if tokenizer is not None:
        tokenizer.save(folder)


def save_model(path: Path, model: lm.Model, tokenizer: Tokenizer | None, extra: dict | None = None, force=True):
    with atomic_dir(path, force=force) as tmp:
        write_model_files(tmp, model, tokenizer, extra)
        for name in ("unigram.safetensors",):
            if tokenizer is not None and (tokenizer.path.parent / name).exists():
                shutil.copy(tokenizer.path.parent / name, tmp / name)
    return path


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json") from None
    except ValueError as e:
        raise UserError(f"{folder}/config.json is not valid JSON: {e}") from None


def load_model(name_or_path: str, dtype=None) -> tuple[lm.Model, Tokenizer | None, Path]:
    """Load a model folder (by path or store name): model in eval mode, its tokenizer (if any), the folder."""
    folder = resolve(name_or_path)
    config = read_config(folder)
    try:
        args = lm.ModelArgs.from_dict(config)
        model = lm.Model(args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{folder}/config.json does not describe a model: {e}") from None
    weights = {}
    for f in sorted(folder.glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    weights = model.sanitize(weights)
    quant = config.get("quantization")
    if quant:
        import mlx.nn as nn

        nn.quantize(
            model,
            group_size=quant["group_size"],
            bits=quant["bits"],
            class_predicate=lambda p, m: f"{p}.scales" in weights,
        )
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"weights in {folder} do not match its config: {e}") from None
    if dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    model.eval()
    return model, load_tokenizer(folder), folder
