"""MoMa's expert layer: expert-choice routing inside modality groups, stacked SwiGLU experts, auxiliary routers.

Expert choice (training mode): within group M, scores s = sigmoid(x·W_g^M) (N, E_M); each expert takes the top-k_e
member tokens of the whole batch, k_e = n_M·c/E_M (c = 1: FLOPs per token equal the dense FFN); the output of a
token is Σ_{experts that picked it} s_j·FFN_j(x) (no renormalization, no balancing loss). Dispatch is static-shaped:
(E, k_e) indices (each expert's tokens in ascending order) → gather (E, k_e, D) → batched SwiGLU matmuls over the
stacked expert weights → gate → scatter-add.

Causal inference mode: expert choice compares tokens across the batch, so it is not causal. Auxiliary routers
sigmoid(silu(x·W1)·W2) (one per layer and group) are trained afterwards to predict the batch-level selections; in
inference mode a token goes to every expert of its group whose auxiliary score is > 0.5, weighted by the main
router's sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.activations import swiglu


def expert_choice(scores: mx.array, member: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Expert-choice selection. scores (N, E) in (0, 1), member (N,) bool: the tokens that may be chosen.
    Each expert takes its top-k member tokens. Returns indices (E, k) (no gradient) and gates (E, k) = the chosen
    tokens' scores (differentiable), zero where a non-member had to fill the bucket (fewer than k members)."""
    s = mx.where(member[:, None], scores, -1.0).T  # (E, N): non-members rank below every sigmoid
    # each expert's tokens in ascending order: the gather and scatter-add then walk memory forwards (a few per
    # cent off the FFN's training step on the CPU)
    idx = mx.stop_gradient(mx.sort(mx.argpartition(-s, kth=k - 1, axis=-1)[:, :k], axis=-1))
    gates = mx.take_along_axis(scores.T, idx, axis=-1) * member[idx]
    return idx, gates


def selection_mask(idx: mx.array, n: int) -> mx.array:
    """(E, k) chosen token indices → (n, E) float 0/1 mask of which experts picked each token."""
    E, k = idx.shape
    return mx.put_along_axis(mx.zeros((E, n)), idx, mx.ones((E, k)), axis=-1).T


def gumbel_sigmoid_noise(shape) -> mx.array:
    """G' − G'' for iid Gumbel(0, 1), i.e. Logistic(0, 1): log u − log(1 − u)."""
    u = mx.random.uniform(low=1e-6, high=1 - 1e-6, shape=shape)
    return mx.log(u) - mx.log1p(-u)


@dataclass
class Context:
    """What every layer needs to route one forward pass."""

    mode: str  # "train": expert choice over the batch; "infer": causal, auxiliary routers
    is_image: mx.array  # (N,) bool, from the input token ids
    n_image: int = 0  # image tokens in the batch (static, from the data layout)
    collect: Optional[list] = None  # when a list: (aux logits, targets, valid) per router, for router training
    routes: Optional[list] = None  # when a list: selection masks per layer and group (tests, inspection)
    noise: bool = False  # Gumbel-sigmoid noise on the expert routers' logits (upcycled models in main training)


class AuxRouter(nn.Module):
    """sigmoid(silu(x·W1)·W2), W1: d×d/2, W2: d/2×E. Sees stop-gradient inputs. Returns logits."""

    def __init__(self, dims: int, outputs: int):
        super().__init__()
        self.fc1 = nn.Linear(dims, max(1, dims // 2), bias=False)
        self.fc2 = nn.Linear(max(1, dims // 2), outputs, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.silu(self.fc1(mx.stop_gradient(x))))


class SparseFFN(nn.Module):
    """moe (one group of experts over all tokens) or moma (a text group, then an image group). The experts of all
    groups are stacked in one set of weights, (E, D, H), (E, D, H), (E, H, D) with E = Σ E_M, group by group, so
    that groups of equal capacity run as one batched matmul with no copying; each group has its own sigmoid router
    W_g^M ∈ R^{D×E_M} and auxiliary router. Works on flat tokens (N, D)."""

    def __init__(self, dims: int, hidden: int, groups: list[int], by_modality: bool, capacity: float = 1.0):
        super().__init__()
        self.sizes = list(groups)
        self.by_modality = by_modality
        self.capacity = capacity
        E = sum(groups)
        self.gate_proj = mx.zeros((E, dims, hidden))
        self.up_proj = mx.zeros((E, dims, hidden))
        self.down_proj = mx.zeros((E, hidden, dims))
        self.routers = [nn.Linear(dims, e, bias=False) for e in groups]
        self.aux_routers = [AuxRouter(dims, e) for e in groups]

    def experts(self, xg: mx.array, lo: int = 0, hi: Optional[int] = None) -> mx.array:
        """(E', k, D) → (E', k, D): experts lo..hi-1 applied to row blocks 0..E'-1, as three batched matmuls."""
        w = [self.gate_proj, self.up_proj, self.down_proj]
        if (lo, hi) != (0, None):
            w = [t[lo:hi] for t in w]
        return swiglu(xg @ w[0], xg @ w[1]) @ w[2]

    def dispatch(self, x: mx.array, idx: mx.array, gates: mx.array, lo: int = 0, hi: Optional[int] = None):
        """Gather the chosen tokens per expert, run the experts batched, gate, scatter-add back. x (N, D)."""
        E, k = idx.shape
        y = self.experts(x[idx], lo, hi) * gates[..., None]
        return mx.zeros_like(x).at[idx.reshape(-1)].add(y.reshape(E * k, -1))

    def members(self, is_image: mx.array, active: Optional[mx.array]) -> list[mx.array]:
        """Per group, the tokens it may take: all (moe) or the group's modality (moma), and only `active` ones."""
        members = [mx.logical_not(is_image), is_image] if self.by_modality else [mx.ones(is_image.shape, mx.bool_)]
        return members if active is None else [m & active for m in members]

    def route(self, g: int, x: mx.array, member: mx.array, k: int, ctx: Context) -> tuple[mx.array, mx.array]:
        """Expert choice in group g: (E_g, k) token indices and gates; records selections for router training."""
        z = self.routers[g](x)
        if ctx.noise:
            z = z + gumbel_sigmoid_noise(z.shape)
        idx, gates = expert_choice(mx.sigmoid(z), member, k)
        if ctx.collect is not None or ctx.routes is not None:
            target = selection_mask(idx, x.shape[0]) * member[:, None]
            if ctx.collect is not None:
                ctx.collect.append((self.aux_routers[g](x), target, member))
            if ctx.routes is not None:
                ctx.routes.append(target)
        return idx, gates

    def __call__(
        self, x: mx.array, is_image: mx.array, active: Optional[mx.array], counts: list[int], ctx: Context
    ) -> mx.array:
        """x (N, D); is_image (N,); active (N,) bool or None (MoD: tokens this layer processes); counts: the static
        number of tokens each group sees in this layer (sets the capacity k_e = count·c/E_M)."""
        members = self.members(is_image, active)
        if ctx.mode == "infer":
            return self.infer(x, members, ctx)
        ks = [capacity(n, e, self.capacity) for e, n in zip(self.sizes, counts)]
        routed = [self.route(g, x, m, k, ctx) for g, (m, k) in enumerate(zip(members, ks))]
        if len(set(ks)) == 1:
            # one group, or equal capacities (a balanced text/image mix, §3.1): all experts in one batched matmul
            return self.dispatch(x, mx.concatenate([r[0] for r in routed]), mx.concatenate([r[1] for r in routed]))
        # otherwise the groups run one after the other (as in the paper, §3.2)
        bounds = np.cumsum([0] + self.sizes).tolist()
        return sum(self.dispatch(x, idx, gates, lo, hi) for (idx, gates), lo, hi in zip(routed, bounds, bounds[1:]))

    def infer(self, x: mx.array, members: list[mx.array], ctx: Context) -> mx.array:
        """Causal: each member token goes to every expert of its group whose auxiliary score is > 0.5, gated by the
        main router. All experts run on all tokens (E× the FLOPs; inference on short sequences only)."""
        weights = []
        for router, aux, member in zip(self.routers, self.aux_routers, members):
            chosen = (aux(x) > 0) & member[:, None]  # sigmoid(z) > 0.5  ⇔  z > 0
            if ctx.routes is not None:
                ctx.routes.append(chosen.astype(mx.float32))
            weights.append(mx.where(chosen, mx.sigmoid(router(x)), 0.0))
        y = self.experts(mx.broadcast_to(x[None], (sum(self.sizes),) + x.shape))  # (E, N, D)
        return mx.einsum("ne,end->nd", mx.concatenate(weights, axis=-1), y)


def capacity(count: int, num_experts: int, c: float) -> int:
    """k_e = count·c/E, rounded to nearest, at least 1 and at most count."""
    return max(1, min(count, int(round(count * c / num_experts)))) if count > 0 else 1
