"""Weight quantization as `mlx_lm.convert` does it: the same modes, defaults, mixed-bit recipes and config entries.

`quant_spec` checks the options (`-q/--q-bits/--q-group-size/--q-mode/--quant-predicate`); `plan` decides, layer by
layer, what `mlx_lm.utils.quantize_model` would (every Linear and Embedding whose input dimension is a multiple of the
group size; a recipe through mlx-lm's own `mixed_quant_predicate_builder`) and returns the "quantization" block
mlx-lm writes to config.json, so `mlx_lm.load` rebuilds the same layers. `quantize`/`dequantize` transform one
weight; the conversions apply them tensor by tensor while streaming (see `convert.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

from mlxsuite.models import lm
from mlxsuite.platform.errors import UserError

# mode → (default group size, default bits), as mlx_lm.utils.quantize_model; the float modes allow only these
MODES = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}
AFFINE_BITS = (2, 3, 4, 5, 6, 8)
AFFINE_GROUP_SIZES = (32, 64, 128)
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")  # mlx_lm.convert.QUANT_RECIPES


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int
    mode: str = "affine"
    recipe: Optional[str] = None

    def params(self) -> dict:
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}


def quant_spec(
    bits: Optional[int] = None, group_size: Optional[int] = None, mode: str = "affine", recipe: Optional[str] = None
) -> QuantSpec:
    """Checked quantization options, with mlx-lm's defaults for the mode (affine: 4 bits, group 64)."""
    if mode not in MODES:
        raise UserError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}")
    default_group, default_bits = MODES[mode]
    if recipe is not None:
        if recipe not in RECIPES:
            raise UserError(f"`recipe` must be one of {', '.join(RECIPES)}, got {recipe!r}")
        if mode != "affine":
            raise UserError(f"`recipe` {recipe} quantizes in affine mode only, not `mode` {mode}")
        if bits is not None:
            raise UserError(f"`bits` does not apply with `recipe` {recipe}: the recipe sets the bits")
    group_size, bits = group_size or default_group, bits or default_bits
    if mode == "affine":
        if bits not in AFFINE_BITS:
            raise UserError(f"`bits` must be one of {', '.join(map(str, AFFINE_BITS))}, got {bits}")
        if group_size not in AFFINE_GROUP_SIZES:
            raise UserError(f"`group_size` must be 32, 64 or 128, got {group_size}")
    elif (group_size, bits) != (default_group, default_bits):
        raise UserError(
            f"`mode` {mode} is {default_bits}-bit with group size {default_group} only, got {bits} bits, "
            f"group size {group_size}"
        )
    return QuantSpec(bits, group_size, mode, recipe)


def plan(args: lm.ModelArgs, spec: QuantSpec, notes: list[str]) -> tuple[dict[str, dict], dict]:
    """(module path → its quantization parameters, the config.json "quantization" block) as mlx-lm's
    `quantize_model` would produce them for this model; `notes` says how many layers stay in float."""
    model = lm.Model(args)  # lazy: no weights are materialized
    predicate = None
    if spec.recipe:
        from mlx_lm.convert import mixed_quant_predicate_builder

        try:
            predicate = mixed_quant_predicate_builder(spec.recipe, model, spec.group_size)
        except ValueError as e:
            raise UserError(f"`recipe` {spec.recipe}: {e}") from None
    block = spec.params()
    layers: dict[str, dict] = {}
    kept = []
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized"):
            continue
        if module.weight.shape[-1] % spec.group_size:
            kept.append(module.weight.shape[-1])
            continue
        params = predicate(path, module) if predicate else True
        if isinstance(params, dict):
            block[path] = params
            layers[path] = params
        elif params:
            layers[path] = spec.params()
    if not layers:
        raise UserError(
            f"no layer can be quantized with group size {spec.group_size}: input dimensions are {sorted(set(kept))}"
        )
    if kept:
        notes.append(
            f"{len(kept)} of {len(kept) + len(layers)} layers stay in float: input dimension not a multiple of the "
            f"group size {spec.group_size}"
        )
    return layers, block


def quantize(path: str, w: mx.array, params: dict) -> dict[str, mx.array]:
    """`path.weight`, `path.scales` (and `path.biases` in affine mode) for a float weight."""
    parts = mx.quantize(w, group_size=params["group_size"], bits=params["bits"], mode=params.get("mode", "affine"))
    return dict(zip((f"{path}.weight", f"{path}.scales", f"{path}.biases"), parts))


def dequantize(w: mx.array, scales: mx.array, biases: Optional[mx.array], params: dict, dtype=None) -> mx.array:
    """The float weight; with a `dtype`, affine values are computed in float32 (as llama.cpp decodes its blocks:
    exact for Q8_0/Q4_0) and then cast, rather than rounded to the scales' float16 first."""
    if dtype is not None and biases is not None:
        scales, biases = scales.astype(mx.float32), biases.astype(mx.float32)
    out = mx.dequantize(
        w, scales, biases, group_size=params["group_size"], bits=params["bits"], mode=params.get("mode", "affine")
    )
    return out.astype(dtype) if dtype is not None else out
