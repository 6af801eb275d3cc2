"""Model families, one file each, and the one lookup from a config's `model_type` to its classes (in the manner of
mlx-lm's `_get_classes`, which `mlxsuite.store` hands this to)."""

from __future__ import annotations

from types import ModuleType
from mlxsuite.models import lm, moma


def family(config: dict) -> ModuleType:
    """The module (with `Model` and `ModelArgs`) of the model a config.json describes; ValueError if none."""
    model_type = config.get("model_type")
    if model_type in lm.FAMILIES:
        return lm
    if model_type == moma.ModelArgs.model_type:
        return moma
    raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(lm.FAMILIES)}, moma)")


def get_classes(config: dict):
    module = family(config)
    return module.Model, module.ModelArgs
