"""KV Prediction (Horton et al., Apple 2024, arXiv:2410.08391): an auxiliary model's KV cache, mapped by a learned
per-layer linear predictor, stands in for the base model's prompt cache, so the base only runs one token at prefill.

Reference: PyTorch `apple/corenet`, `corenet/modeling/models/language_modeling/kv_prediction.py` (notes:
shared/papers/kv-prediction.md). Where paper and code differ this file follows the code:

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
from mlx_lm.models.base import create_attention_mask

from .lm import Model


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
    def for_models(cls, base: Model, aux: Model, layer_map: list[int]) -> "PredictorArgs":
        b, a = base.args, aux.args
        return cls(
            layer_map=list(layer_map),
            aux_kv_dims=[a.num_key_value_heads * a.head_dim] * a.num_hidden_layers,
            base_kv_heads=[b.num_key_value_heads] * b.num_hidden_layers,
            base_head_dims=[b.head_dim] * b.num_hidden_layers,
        )

    @classmethod
    def from_dict(cls, d: dict) -> "PredictorArgs":
        return cls(**{k: list(d[k]) for k in ("layer_map", "aux_kv_dims", "base_kv_heads", "base_head_dims")})

    def to_dict(self) -> dict:
        return asdict(self)


# ---- layer mapping (notes §1.5) --------------------------------------------------------------------------------


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

    def set_identity(self) -> None:
        """Identity weights, zero biases (tests only; needs equal in/out widths)."""
        for t in self.key_transforms + self.value_transforms:
            out_dim, in_dim = t.weight.shape
            if out_dim != in_dim:
                raise ValueError("identity predictor needs square maps")
            t.weight = mx.eye(in_dim, dtype=t.weight.dtype)
            t.bias = mx.zeros_like(t.bias)

    def n_params(self) -> int:
        return sum(t.weight.size + t.bias.size for t in self.key_transforms + self.value_transforms)

    def flops(self, n_tokens: int) -> int:
        """Matmul FLOPs of predicting n_tokens positions (2 per multiply-add)."""
        return 2 * n_tokens * sum(t.weight.size for t in self.key_transforms + self.value_transforms)


# ---- forward passes that expose or replace the KV ---------------------------------------------------------------


def _k_norm(attn, k: mx.array) -> mx.array:
    return attn.k_norm(k) if "k_norm" in attn else k


def forward_raw_kv(
    model: Model, inputs: mx.array, cache: Optional[list] = None
) -> tuple[mx.array, list[mx.array], list[mx.array]]:
    """A causal forward that also returns every layer's raw keys and values (k_proj/v_proj outputs: before k-norm
    and RoPE). Returns (final-normed hidden states, keys, values). The model's own computation is unchanged (it
    still applies its k-norm and RoPE internally). From position 0 without `cache`; with `cache` (a list of
    `KVCache`) the inputs continue it and their keys/values are written into it, as the model's own forward does."""
    h = model.model.embed_tokens(inputs)
    mask = create_attention_mask(h, cache[0] if cache else None)
    keys, values = [], []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        c = cache[i] if cache else None
        offset = c.offset if c is not None else 0
        x = layer.input_layernorm(h)
        k, v = attn.raw_kv(x)
        keys.append(k)
        values.append(v)
        fk, fv = attn.finish_keys(k, offset), v
        if c is not None:
            fk, fv = c.update_and_fetch(fk, fv)
        h = h + attn.attend(x, fk, fv, offset, mask, c)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.model.norm(h), keys, values


def forward_with_kv(
    base: Model, inputs: mx.array, keys: list[mx.array], values: list[mx.array]
) -> tuple[mx.array, list[mx.array]]:
    """The training / log-likelihood path (corenet `concat_kvs=False`): every base layer discards its own K/V and its
    queries (q-norm, RoPE as usual) attend causally to the given raw predicted KV, after the base's k-norm and RoPE
    at positions 0..T−1. Returns (final-normed hidden states, the predicted keys after the base's k-norm and before
    RoPE: what the KV consistency loss compares)."""
    h = base.model.embed_tokens(inputs)
    mask = create_attention_mask(h, None)
    if h.shape[1] == 1:
        mask = None
    normed = []
    for layer, k, v in zip(base.model.layers, keys, values):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        kn = _k_norm(attn, k)
        normed.append(kn)
        h = h + attn.attend(x, attn.rope(kn, offset=0), v, 0, mask)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return base.model.norm(h), normed


def fill_cache(base: Model, keys: list[mx.array], values: list[mx.array], cache: Optional[list] = None) -> list:
    """Write predicted raw KV into base `KVCache`s: base k-norm, then base RoPE at the cache's absolute positions
    (the cache stores post-RoPE keys, as mlx-lm's does); values raw. Offsets advance by T."""
    cache = cache if cache is not None else base.make_cache()
    dtype = base.model.norm.weight.dtype  # a float32 predictor feeding a bf16/fp16 base: store in the base's dtype
    for layer, c, k, v in zip(base.model.layers, cache, keys, values):
        c.update_and_fetch(layer.self_attn.finish_keys(k.astype(dtype), c.offset), v.astype(dtype))
    return cache


# ---- the pair ---------------------------------------------------------------------------------------------------


class KVPredictionModel(nn.Module):
    """Base (frozen) + auxiliary + predictor. `__call__` is the training path; `prefill` is inference."""

    def __init__(self, base: Model, auxiliary: Model, predictor: KVPredictor):
        super().__init__()
        if predictor.args.layer_map and len(predictor.args.layer_map) != base.args.num_hidden_layers:
            raise ValueError("the layer map needs one entry per base layer")
        self.base = base
        self.auxiliary = auxiliary
        self.predictor = predictor

    def __call__(self, inputs: mx.array):
        """Training / log-likelihood path: returns base logits with predicted KV at all positions, aux logits, and the
        predicted keys (base-k-normed, pre-RoPE) and values per base layer."""
        aux_h, aux_k, aux_v = forward_raw_kv(self.auxiliary, inputs)
        pk, pv = self.predictor(aux_k, aux_v)
        base_h, pk_normed = forward_with_kv(self.base, inputs, pk, pv)
        return self.base.logits(base_h), self.auxiliary.logits(aux_h), pk_normed, pv

    def base_targets(self, inputs: mx.array) -> tuple[list[mx.array], list[mx.array]]:
        """The base's true KV (keys after k-norm, before RoPE; raw values), without gradient (notes §3.1)."""
        _, k, v = forward_raw_kv(self.base, inputs)
        k = [_k_norm(layer.self_attn, x) for layer, x in zip(self.base.model.layers, k)]
        return [mx.stop_gradient(x) for x in k], [mx.stop_gradient(x) for x in v]

    def predict_cache(self, tokens: mx.array, cache: Optional[list] = None) -> list:
        """The unchunked reference: aux on `tokens` (B, L) in one pass → predictor → base KVCaches holding L
        predicted positions. Inference uses `predict_cache_chunked` (same result, tests/test_kvp.py)."""
        _, aux_k, aux_v = forward_raw_kv(self.auxiliary, tokens)
        pk, pv = self.predictor(aux_k, aux_v)
        return fill_cache(self.base, pk, pv, cache)

    def predict_cache_chunked(
        self, tokens: mx.array, cache: Optional[list] = None, prefill_step: Optional[int] = None,
        fused: Optional[bool] = None,
    ) -> list:
        """`predict_cache` the way the base's prefill runs (`generate.prefill`): the aux on chunks of
        `prefill_step` tokens into its own KV caches (its attention needs the earlier chunks), each chunk's raw aux
        KV tapped and mapped by the predictor straight into the base caches, one `mx.eval` per chunk. Takes the
        fused CPU path of `generate` when it applies to the aux (`fused=None`), the model's own layers otherwise.
        Only the caches are evaluated, so the aux's last-layer attention and MLP and its head (they only make aux
        logits, which KV Prediction's first token does not use) are never computed."""
        from ..generate import _apply_rope, _fused_backbone, _rope_table, default_prefill_step, fused_prefill_supported

        step = prefill_step or default_prefill_step()
        if step < 1:
            raise ValueError(f"prefill_step must be positive, got {step}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        cache = cache if cache is not None else self.base.make_cache()
        aux_cache = self.auxiliary.make_cache()
        L, start = tokens.shape[1], cache[0].offset
        if fused is None:
            fused = fused_prefill_supported(self.auxiliary, aux_cache) and fused_prefill_supported(self.base, cache)
        if fused:
            aux_rope = _rope_table(self.auxiliary.layers[0].self_attn.rope, 0, L)
            base_rope = _rope_table(self.base.layers[0].self_attn.rope, start, L)
        dtype = self.base.model.norm.weight.dtype
        done = 0
        while done < L:
            n = min(step, L - done)
            chunk = tokens[:, done : done + n]
            if fused:
                aux_k, aux_v = _fused_backbone(
                    self.auxiliary, chunk, aux_cache, aux_rope[0][done : done + n], aux_rope[1][done : done + n],
                    raw_kv=True,
                )
            else:
                _, aux_k, aux_v = forward_raw_kv(self.auxiliary, chunk, aux_cache)
            pk, pv = self.predictor(aux_k, aux_v)
            if fused:
                cos, sin = base_rope[0][done : done + n], base_rope[1][done : done + n]
                for layer, c, k, v in zip(self.base.layers, cache, pk, pv):
                    attn = layer.self_attn
                    k, v = (k, v) if k.dtype == dtype else (k.astype(dtype), v.astype(dtype))
                    c.update_and_fetch(_apply_rope(_k_norm(attn, k), cos, sin, 1.0, attn.rope.traditional), v)
            else:
                fill_cache(self.base, pk, pv, cache)
            mx.eval([c.state for c in aux_cache + cache])
            done += n
        return cache

    def prefill(
        self, tokens: mx.array, prefill_step: Optional[int] = None, *, fused: Optional[bool] = None
    ) -> tuple[mx.array, list]:
        """The KV Prediction prompt step (corenet `forward` with an empty cache): aux on tokens[:, :-1] (chunked,
        `predict_cache_chunked`), predicted base cache for those N−1 positions, base on the last token against it.
        Returns (base logits (B, V) for the first generated token, the base cache at offset N). Later steps are
        plain base steps."""
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.shape[1] == 0:
            raise ValueError("empty prompt")
        cache = self.base.make_cache()
        if tokens.shape[1] > 1:
            self.predict_cache_chunked(tokens[:, :-1], cache, prefill_step, fused=fused)
        logits = self.base(tokens[:, -1:], cache)[:, -1]
        return logits, cache


def layer_pruned(base: Model, retained: list[int]) -> Model:
    """KVP-LP auxiliary: a copy of the base keeping `retained` layers (renumbered), with their weights and the base's
    embeddings, final norm and head."""
    from mlx.utils import tree_flatten

    from .lm import ModelArgs

    args = ModelArgs.from_dict({**base.args.to_dict(), "num_hidden_layers": len(retained)})
    aux = Model(args)
    new = {old: i for i, old in enumerate(retained)}
    weights = []
    for name, w in tree_flatten(base.parameters()):
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            old = int(parts[2])
            if old not in new:
                continue
            name = ".".join(parts[:2] + [str(new[old])] + parts[3:])
        weights.append((name, mx.array(w)))
    aux.load_weights(weights, strict=True)
    mx.eval(aux.parameters())
    return aux
