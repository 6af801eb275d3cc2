"""Model families, and the one lookup from a config's `model_type` to its classes (in the manner of mlx-lm's
`_get_classes`, which `mlxsuite.store` hands this to): the families of the one forward (`lm.FAMILIES`), MoMa, and
any other architecture mlx-lm runs, through mlx-lm's own class (`mlx_lm_class`)."""

from __future__ import annotations

from types import ModuleType
from mlxsuite.models import lm, mlx_lm_class, moma


def family(config: dict) -> ModuleType:
    """The module (with `Model` and `ModelArgs`) of the model a config.json describes: `lm`, `moma`, or mlx-lm's
    own module of that model_type; ValueError if none."""
    model_type = config.get("model_type")
    if model_type in lm.FAMILIES:
        return lm
    if model_type == moma.ModelArgs.model_type:
        return moma
    module = mlx_lm_class.module_for(config)
    if module is not None:
        return module
    raise ValueError(
        f"model_type {model_type!r} is not supported (families: {', '.join(lm.FAMILIES)}, moma; nor does mlx-lm "
        "have it)"
    )


def supported(model_type) -> bool:
    return model_type is not None and (model_type == "moma" or _known(model_type))


def _known(model_type: str) -> bool:
    try:
        family({"model_type": model_type})
    except ValueError:
        return False
    return True


def get_classes(config: dict):
    module = family(config)
    return module.Model, module.ModelArgs
