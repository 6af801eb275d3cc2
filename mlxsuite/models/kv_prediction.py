"""KV Prediction (Horton et al., Apple 2024, arXiv:2410.08391): an auxiliary model's KV cache, mapped by a learned
per-layer linear predictor, stands in for the base model's prompt cache, so the base only runs one token at prefill.

Reference: PyTorch `apple/corenet`, `corenet/modeling/models/language_modeling/kv_prediction.py`. Where paper and
code differ this file follows the code:

- the auxiliary runs on the prompt minus its last token; the base computes the last token's own KV (the paper's
  t_A(N) + t_P(N) + t_B(1) implies the aux sees all N tokens);
- the predictor is `nn.Linear` with bias and default init (not identity; `set_identity` is for tests only);
- auxiliary keys are tapped raw (the k_proj output, before k-norm and RoPE); predicted keys get the *base's* frozen
  k-norm, then the base's RoPE at their absolute positions. mlx-lm caches hold post-RoPE keys, so both are applied
  before the predicted keys are written into the base's `KVCache`.

Shapes: keys/values are (B, n_kv_heads, T, head_dim) as in mlx-lm. Only KV heads are predicted (GQA); the base's
attention repeats them over query heads as usual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from mlxsuite.models import kernels as fast_kernels
from mlxsuite.models.lm import Model


@dataclass
class PredictorArgs:
    """Everything the predictor's shapes depend on. Lists are per layer (OpenELM's KV widths vary by layer)."""

    layer_map: list[int]  # j_i: the auxiliary layer that predicts base layer i (len = n_base)
    aux_kv_dims: list[int]  # per auxiliary layer: n_kv_heads · head_dim
    base_kv_heads: list[int]  # per base layer: KV heads (not query heads)
    base_head_dims: list[int]  # per base layer

    def __post_init__(self):
        n_aux = len(self.aux_kv_dims)
        if not all(0 <= j < n_aux for j in self.layer_map):
            raise ValueError(f"layer map {self.layer_map} has entries outside [0, {n_aux})")
        if not (len(self.layer_map) == len(self.base_kv_heads) == len(self.base_head_dims)):
            raise ValueError("layer_map, base_kv_heads and base_head_dims must have one entry per base layer")

    @classmethod
    def for_models(cls, base: Model, aux: Model, layer_map: list[int]) -> PredictorArgs:
        aux_attn = [layer.self_attn for layer in aux.layers]
        base_attn = [layer.self_attn for layer in base.layers]
        return cls(
            layer_map=list(layer_map),
            aux_kv_dims=[a.n_kv_heads * a.head_dim for a in aux_attn],
            base_kv_heads=[b.n_kv_heads for b in base_attn],
            base_head_dims=[b.head_dim for b in base_attn],
        )

    @classmethod
    def from_dict(cls, d: dict) -> PredictorArgs:
        return cls(**{k: list(d[k]) for k in ("layer_map", "aux_kv_dims", "base_kv_heads", "base_head_dims")})

    def to_dict(self) -> dict:
        return asdict(self)


# ---- layer mapping ------------------------------------------------------------------------------------------


def contiguous_layer_map(n_base: int, n_aux: int) -> list[int]:
    """KVP-C and KVP-LP-0.50/0.25 (`auxkv_num_layers_to_basekv_num_layers` in the released configs): contiguous,
    monotone runs; with q, r = divmod(n_base, n_aux) the first r aux layers take q+1 base layers, the rest q.
    28←16 gives [0,0,1,1,…,11,11,12,13,14,15]. An aux deeper than the base maps i→i."""
    if n_base < 1 or n_aux < 1:
        raise ValueError("both models need at least one layer")
    q, r = divmod(n_base, n_aux)
    out: list[int] = []
    for j in range(n_aux):
        out += [j] * (q + 1 if j < r else q)
    return out[:n_base]


def retained_layer_map(retained: list[int], n_base: int) -> list[int]:
    """KVP-LP-0.75: base layer i reads the aux copy of the nearest retained base layer at or before i
    (`[0,1,2,2,3,4,5,5,…]` for 28 layers). Same as `contiguous_layer_map` for 0.50 and for 0.25 when 4 | n_base."""
    if not retained or retained[0] != 0 or sorted(set(retained)) != list(retained):
        raise ValueError(f"retained layers must be increasing and start at 0, got {retained}")
    out, j = [], 0
    for i in range(n_base):
        while j + 1 < len(retained) and retained[j + 1] <= i:
            j += 1
        out.append(j)
    return out


def lp_layer_map(keep: float, retained: list[int], n_base: int) -> list[int]:
    """The mapping the paper uses for an LP-`keep` auxiliary: nearest-retained for 0.75, contiguous runs for 0.50
    and 0.25 (they coincide with nearest-retained on the paper's 28/36-layer bases; on e.g. a 6-layer base LP-0.25
    keeps layers 0,4 and the contiguous rule gives [0,0,0,1,1,1], nearest-retained [0,0,0,0,1,1])."""
    if abs(keep - 0.75) < 1e-9:
        return retained_layer_map(retained, n_base)
    return contiguous_layer_map(n_base, len(retained))


# ---- the predictor ----------------------------------------------------------------------------------------------


class KVPredictor(nn.Module):
    """For every base layer i: keys and values of aux layer j_i, heads merged to (B, T, h_A·d_A), through a separate
    Linear (with bias) each for keys and values, split into the base's KV heads (B, h_B, T, d_B)."""

    def __init__(self, args: PredictorArgs):
        super().__init__()
        self.args = args
        out_dims = [h * d for h, d in zip(args.base_kv_heads, args.base_head_dims)]
        in_dims = [args.aux_kv_dims[j] for j in args.layer_map]
        self.key_transforms = [nn.Linear(i, o) for i, o in zip(in_dims, out_dims)]
        self.value_transforms = [nn.Linear(i, o) for i, o in zip(in_dims, out_dims)]

    @staticmethod
    def _map(linear: nn.Linear, x: mx.array, heads: int) -> mx.array:
        B, h, T, d = x.shape
        y = linear(x.transpose(0, 2, 1, 3).reshape(B, T, h * d))
        return y.reshape(B, T, heads, -1).transpose(0, 2, 1, 3)

    def __call__(self, aux_keys: list[mx.array], aux_values: list[mx.array]) -> tuple[list[mx.array], list[mx.array]]:
        """Raw aux KV per aux layer → predicted raw base KV per base layer (keys before k-norm and RoPE)."""
        keys, values = [], []
        for i, j in enumerate(self.args.layer_map):
            heads = self.args.base_kv_heads[i]
            keys.append(self._map(self.key_transforms[i], aux_keys[j], heads))
            values.append(self._map(self.value_transforms[i], aux_values[j], heads))
        return keys, values

    def stacked(self) -> Optional[tuple[mx.array, mx.array]]:
        """Every map's weight (transposed) and bias, keys' then values', stacked for `batched`: (2·n_base, in, out)
        and (2·n_base, 1, out); None when the layers' widths differ (then the maps run layer by layer)."""
        maps = self.key_transforms + self.value_transforms
        if len({t.weight.shape for t in maps}) != 1 or len(set(self.args.base_kv_heads)) != 1:
            return None
        return mx.stack([t.weight.T for t in maps]), mx.stack([t.bias for t in maps])[:, None]

    def batched(self, aux_keys: list[mx.array], aux_values: list[mx.array], stacked: tuple) -> tuple:
        """`__call__` as one batched GEMM over every base layer's keys and values (`stacked` from `stacked()`):
        predicted raw keys and values, each (n_base, B, h_B, T, d_B)."""
        weights, biases = stacked
        layer_map = self.args.layer_map
        # stacked with the heads already merged (B, T, h, d): one copy, and the GEMM's input is contiguous
        x = mx.stack(
            [aux_keys[j].swapaxes(1, 2) for j in layer_map] + [aux_values[j].swapaxes(1, 2) for j in layer_map]
        )
        n2, B, T, h, d = x.shape
        y = mx.addmm(biases, x.reshape(n2, B * T, h * d), weights)
        y = y.reshape(n2, B, T, self.args.base_kv_heads[0], -1).transpose(0, 1, 3, 2, 4)
        return y[: n2 // 2], y[n2 // 2 :]

    def set_identity(self) -> None:
        """Identity weights, zero biases (needs equal in/out widths): the tests' reference, and an optional warm start
        for a layer-pruned auxiliary (`kvp train --predictor-init identity`; the paper uses the default init)."""
        for t in self.key_transforms + self.value_transforms:
            out_dim, in_dim = t.weight.shape
            if out_dim != in_dim:
                raise ValueError("identity predictor needs square maps")
            t.weight = mx.eye(in_dim, dtype=t.weight.dtype)
            t.bias = mx.zeros_like(t.bias)

    def n_params(self) -> int:
        return sum(t.weight.size + t.bias.size for t in self.key_transforms + self.value_transforms)


# ---- the pair ---------------------------------------------------------------------------------------------------


class KVPredictionModel(nn.Module):
    """Base (frozen) + auxiliary + predictor. `__call__` is the training / log-likelihood path; `fill` is the
    inference plug-in of the one prefill. Both run the models' own forward passes through their seams: `tap`
    collects the auxiliary's raw KV, `kv` hands the predicted KV to the base (in `fill`, only the base's key
    finishing: `write_base_kv`)."""

    def __init__(self, base: Model, auxiliary: Model, predictor: KVPredictor):
        super().__init__()
        if predictor.args.layer_map and len(predictor.args.layer_map) != base.args.num_hidden_layers:
            raise ValueError("the layer map needs one entry per base layer")
        self.base = base
        self.auxiliary = auxiliary
        self.predictor = predictor

    def predict(self, inputs: mx.array, aux_cache=None) -> tuple[mx.array, list[tuple[mx.array, mx.array]]]:
        """The auxiliary's logits on `inputs` (continuing `aux_cache`) and the predicted raw base KV per base layer."""
        tap: list = []
        aux_logits = self.auxiliary(inputs, aux_cache, tap=tap)
        keys, values = self.predictor([k for k, _ in tap], [v for _, v in tap])
        return aux_logits, list(zip(keys, values))

    def __call__(self, inputs: mx.array):
        """Training / log-likelihood path (corenet `concat_kvs=False`): every base layer discards its own K/V and
        its queries attend causally to the predicted KV (after the base's k-norm and RoPE at positions 0..T−1).
        Returns base logits, aux logits, the predicted keys after the base's k-norm (before RoPE: what the KV
        consistency loss compares) and the predicted values, per base layer."""
        aux_logits, kv = self.predict(inputs)
        base_logits = self.base(inputs, kv=kv)
        keys = [layer.self_attn.normalize_keys(k) for layer, (k, _) in zip(self.base.layers, kv)]
        return base_logits, aux_logits, keys, [v for _, v in kv]

    def base_targets(self, inputs: mx.array) -> tuple[list[mx.array], list[mx.array]]:
        """The base's true KV (keys after k-norm, before RoPE; raw values), without gradient."""
        tap: list = []
        self.base.model(inputs, tap=tap)  # only the tapped keys/values are used: the rest is never computed
        keys = [layer.self_attn.normalize_keys(k) for layer, (k, _) in zip(self.base.layers, tap)]
        return [mx.stop_gradient(k) for k in keys], [mx.stop_gradient(v) for _, v in tap]

    def fill(self, chunk: mx.array, aux_cache: list, base_cache: list, stacked: Optional[tuple] = None) -> list:
        """The prefill plug-in: the auxiliary runs `chunk` into its own cache (its attention needs the earlier
        chunks), the predictor maps its raw KV (one batched GEMM over every base layer with `stacked`, from
        `predictor.stacked()`), and `write_base_kv` writes the predicted keys (base k-norm, base RoPE at their
        absolute positions) and values into the base's cache, as the base's forward with `kv` would. Returns the
        caches' arrays to evaluate: nothing else is computed (no aux head, no base queries, attention or MLP)."""
        tap: list = []
        self.auxiliary(chunk, aux_cache, tap=tap)
        aux_keys, aux_values = [k for k, _ in tap], [v for _, v in tap]
        if stacked is None:
            keys, values = self.predictor(aux_keys, aux_values)
        else:
            keys, values = self.predictor.batched(aux_keys, aux_values, stacked)
        write_base_kv(self.base, list(zip(keys, values)), base_cache)
        return [c.state for c in aux_cache + base_cache]


def write_base_kv(base: Model, kv: list, cache: list) -> None:
    """Predicted raw (keys, values) per base layer, finished as the layer's own keys are (k-norm, then RoPE at the
    cache's positions) and written into the base's `cache`: what the base's forward with `kv` leaves in its cache,
    without the graph of everything else it would build per layer (queries, attention, MLP: ~0.3 ms of Python per
    layer per chunk, a third of KV Prediction's overhead over the auxiliary at 2,048 tokens)."""
    keys = kv[0][0]
    kernels = fast_kernels.select(base.layers, keys.shape[2], keys.dtype, cache)
    for layer, c, (k, v) in zip(base.layers, cache, kv):
        c.update_and_fetch(layer.self_attn.finish_keys(k, c.offset, kernels.for_cache(c) if kernels else None), v)


def layer_pruned(base: Model, retained: list[int]) -> Model:
    """KVP-LP auxiliary: a copy of the base keeping `retained` layers (renumbered), each with its own shape (OpenELM's
    vary by layer) and weights, and the base's embeddings, final norm and head."""
    from mlx.utils import tree_flatten

    aux = Model(base.args.pruned(retained))
    new = {old: i for i, old in enumerate(retained)}
    weights = []
    for name, w in tree_flatten(base.parameters()):
        parts = name.split(".")
        if parts[1] == "layers":
            old = int(parts[2])
            if old not in new:
                continue
            name = ".".join(parts[:2] + [str(new[old])] + parts[3:])
        weights.append((name, mx.array(w)))
    aux.load_weights(weights, strict=True)
    mx.eval(aux.parameters())
    return aux
