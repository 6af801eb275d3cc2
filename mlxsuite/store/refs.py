"""Model references, resolved in one place: a store name, a folder (ours, mlx-lm's, a Hugging Face snapshot), a
Hugging Face repo id or cache folder (`store.hub`), or a `.gguf` file (converted once into the cache by
`convert.from_gguf`). Above both the converter (which reads folders) and the loader (`mlxsuite.store`), which take
the folder this gives them.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlxsuite.convert.checkpoint import CONFIG_FILE, PICKLE_SUFFIXES, read_config, refuse_pickle_message
from mlxsuite.convert.from_gguf import gguf_model_folder
from mlxsuite.platform.errors import UserError
from mlxsuite.store.hub import resolve_repo

KVP_TYPE = "kv_prediction"  # the model_type of a KV Prediction pair's folder


def models_dir() -> Path:
    """MLXSUITE_MODELS, else the `models/` folder of the checkout this package runs from, else ./models."""
    env = os.environ.get("MLXSUITE_MODELS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "models"
    if (checkout / "README.md").exists():
        return checkout
    return Path.cwd() / "models"


def output_path(name_or_path: str) -> Path:
    """Where a command writes a model: a bare name goes into the store, anything with a slash is a path."""
    if os.sep in name_or_path or name_or_path.startswith("."):
        return Path(name_or_path)
    return models_dir() / name_or_path


def resolve(ref: str) -> Path:
    """A model folder from a reference: a folder path (ours, mlx-lm's, a Hugging Face snapshot), a name in the
    store, a `.gguf` file (converted once into the cache, `convert.from_gguf.gguf_model_folder`), or a Hugging Face repo
    id or cache folder (`hub.resolve_repo`: the cache first, a download only when allowed). Refuses pickles."""
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return gguf_model_folder(path)
    for folder in (path, models_dir() / ref):
        if folder.is_dir():
            check_weights(folder)
            return folder
    if Path(ref).suffix in PICKLE_SUFFIXES:
        raise UserError(refuse_pickle_message(Path(ref)))
    snapshot = resolve_repo(ref)
    if snapshot is not None:
        check_weights(snapshot)
        return snapshot
    raise UserError(
        f"model not found: {ref} (not a folder, a .gguf file, a Hugging Face repo id, or a name in the "
        f"store {models_dir()})"
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


def source_folder(ref: str | Path) -> Path:
    """A local checkpoint folder to convert from: a folder, a Hugging Face cache folder, or a repo id
    (`org/name[@rev]`, from the cache, else downloaded when allowed; see `store.hub`)."""
    return resolve_repo(str(ref)) or Path(ref).expanduser()
