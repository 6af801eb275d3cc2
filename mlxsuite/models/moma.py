"""MoMa: an early-fusion decoder whose FFNs are modality-aware expert-choice mixtures (Lin et al. 2024).

One decoder over a unified vocabulary (text BPE ids, image codebook ids, BOI/EOI). Self-attention is shared by both
modalities (mlxsuite.models.lm.Attention); each layer's FFN is one of

- ``dense``: the SwiGLU MLP of mlxsuite.models.lm;
- ``moe``:   one group of E experts over all tokens, expert choice (MoMa's "MoE 8x");
- ``moma``:  a text group and an image group; a token goes to its modality's group (decided by its *input* token id:
             image codes are image, everything else, BOI/EOI/BOS/EOS included, is text), then expert choice inside
             the group.

Expert choice (training mode): within group M, scores s = sigmoid(x·W_g^M) (N, E_M); each expert takes the top-k_e
member tokens of the whole batch, k_e = n_M·c/E_M (c = 1: FLOPs per token equal the dense FFN); the output of a
token is Σ_{experts that picked it} s_j·FFN_j(x) (no renormalization, no balancing loss). Dispatch is static-shaped:
(E, k_e) indices → gather (E, k_e, D) → batched SwiGLU matmuls over the stacked expert weights → gate →
scatter-add.

Mixture-of-depths (optional): layers 0, 2, 4, … keep the top 25 % of the batch's tokens by sigmoid(x·w); the others
skip attention and FFN; a kept token's block update is scaled by its router weight. In training the kept tokens are
gathered flat and only they run (attention among the kept tokens of the same row, causal, RoPE at the original
positions; then the FFN, whose expert groups see only kept tokens of their modality).

Causal inference mode: expert choice compares tokens across the batch, so it is not causal. Auxiliary routers
sigmoid(silu(x·W1)·W2) (one per layer and group, and one per MoD layer) are trained afterwards to predict the
batch-level selections; in inference mode a token goes to every expert of its group whose auxiliary score is > 0.5,
weighted by the main router's sigmoid, and a MoD layer processes a token iff its auxiliary score is > 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.activations import swiglu

from . import lm

FFN_TYPES = ("dense", "moe", "moma")


@dataclass
class ModelArgs(lm.ModelArgs):
    model_type: str = "moma"
    ffn: str = "moma"  # dense | moe | moma
    num_experts: int = 8  # moe: experts in the single mixed-modal group
    text_experts: int = 4  # moma: experts in the text group
    image_experts: int = 4  # moma: experts in the image group
    capacity: float = 1.0  # c: expert-choice capacity factor (average experts per token)
    mod: bool = False  # mixture-of-depths in layers 0, 2, 4, …
    mod_capacity: float = 0.25  # c_d: fraction of the batch's tokens a MoD layer processes
    router_noise: bool = False  # Gumbel-sigmoid noise on the expert routers' logits in training (upcycling)
    image_start: int = 0  # image code ids are [image_start, image_end)
    image_end: int = 0
    tie_word_embeddings: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.ffn not in FFN_TYPES:
            raise ValueError(f"unknown ffn type {self.ffn!r}")

    @property
    def groups(self) -> list[int]:
        """Expert counts of the FFN's groups: [] dense, [E] moe, [E_text, E_image] moma."""
        return {"dense": [], "moe": [self.num_experts], "moma": [self.text_experts, self.image_experts]}[self.ffn]

    def is_mod_layer(self, i: int) -> bool:
        return self.mod and i % 2 == 0

    # ---- FLOPs accounting ----------------------------------------------------------------------------------------

    def flops_per_token(self, seq_len: int, image_fraction: float = 0.5) -> dict:
        """Training FLOPs per token (6 × multiply-adds of the forward), the dense-LM convention of lm.ModelArgs:
        6·(params a token passes through) + 6·T·d per layer for causal attention scores. Experts: a group of E_M
        experts with capacity k_e = n_M·c/E_M processes c expert-FFNs per token on average; routers count d·E_M for
        the token's group. MoD layers process c_d of the tokens (attention scores: c_d² of the pairs) plus their
        router d·1. Auxiliary routers are not counted (they are trained afterwards, on frozen activations)."""
        d, hd = self.hidden_size, self.head_dim
        attn = d * self.num_attention_heads * hd * 2 + 2 * d * self.num_key_value_heads * hd
        mlp = 3 * d * self.intermediate_size
        if self.ffn == "dense":
            ffn, router = mlp, 0.0
        elif self.ffn == "moe":
            ffn, router = self.capacity * mlp, d * self.num_experts
        else:
            ffn = self.capacity * mlp
            router = d * (self.text_experts * (1 - image_fraction) + self.image_experts * image_fraction)
        scores = seq_len * self.num_attention_heads * hd
        per_layer = []
        for i in range(self.num_hidden_layers):
            if self.is_mod_layer(i):
                c = self.mod_capacity
                per_layer.append(6 * (c * (attn + ffn + router) + d) + 6 * c * c * scores)
            else:
                per_layer.append(6 * (attn + ffn + router) + 6 * scores)
        head = 6 * self.vocab_size * d
        total = sum(per_layer) + head
        return {"total": total, "layers": sum(per_layer), "head": head}

    @property
    def n_params_total(self) -> int:
        return sum(v.size for _, v in tree_flatten(Model(self).parameters()))


def mod_matched_layers(dense_layers: int, mod_capacity: float = 0.25) -> int:
    """Layer count of a MoD model (alternating from layer 0) whose layer-equivalents best match `dense_layers`."""
    best, best_err = dense_layers, float("inf")
    for n in range(dense_layers, 4 * dense_layers + 1):
        mod = (n + 1) // 2
        eq = (n - mod) + mod * mod_capacity
        if abs(eq - dense_layers) < best_err - 1e-9:
            best, best_err = n, abs(eq - dense_layers)
    return best


# ---- routing primitives -----------------------------------------------------------------------------------------


def expert_choice(scores: mx.array, member: mx.array, k: int) -> tuple[mx.array, mx.array]:
    """Expert-choice selection. scores (N, E) in (0, 1), member (N,) bool: the tokens that may be chosen.
    Each expert takes its top-k member tokens. Returns indices (E, k) (no gradient) and gates (E, k) = the chosen
    tokens' scores (differentiable), zero where a non-member had to fill the bucket (fewer than k members)."""
    s = mx.where(member[:, None], scores, -1.0).T  # (E, N): non-members rank below every sigmoid
    idx = mx.stop_gradient(mx.argpartition(-s, kth=k - 1, axis=-1)[:, :k])
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


class ExpertGroup(nn.Module):
    """E stacked SwiGLU experts (weights (E, D, H), (E, D, H), (E, H, D)) and their sigmoid router W_g ∈ R^{D×E}."""

    def __init__(self, dims: int, hidden: int, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.router = nn.Linear(dims, num_experts, bias=False)
        self.gate_proj = mx.zeros((num_experts, dims, hidden))
        self.up_proj = mx.zeros((num_experts, dims, hidden))
        self.down_proj = mx.zeros((num_experts, hidden, dims))
        self.aux_router = AuxRouter(dims, num_experts)

    def experts(self, xg: mx.array) -> mx.array:
        """(E, k, D) → (E, k, D): expert e applied to row block e, as three batched matmuls."""
        return swiglu(xg @ self.gate_proj, xg @ self.up_proj) @ self.down_proj

    def logits(self, x: mx.array, noise: bool) -> mx.array:
        z = self.router(x)
        return z + gumbel_sigmoid_noise(z.shape) if noise else z

    def dispatch(self, x: mx.array, idx: mx.array, gates: mx.array) -> mx.array:
        """Gather the chosen tokens per expert, run the experts batched, gate, scatter-add back. x (N, D)."""
        E, k = idx.shape
        y = self.experts(x[idx]) * gates[..., None]
        return mx.zeros_like(x).at[idx.reshape(-1)].add(y.reshape(E * k, -1))

    def route(self, x, member, k, noise, ctx: Context) -> tuple[mx.array, mx.array]:
        """Expert choice in this group: (E, k) token indices and gates; records selections for router training."""
        scores = mx.sigmoid(self.logits(x, noise))
        idx, gates = expert_choice(scores, member, k)
        if ctx.collect is not None or ctx.routes is not None:
            target = selection_mask(idx, x.shape[0]) * member[:, None]
            if ctx.collect is not None:
                ctx.collect.append((self.aux_router(x), target, member))
            if ctx.routes is not None:
                ctx.routes.append(target)
        return idx, gates

    def train_forward(self, x, member, k, noise, ctx: Context) -> mx.array:
        return self.dispatch(x, *self.route(x, member, k, noise, ctx))

    def infer_forward(self, x, member, ctx: Context) -> mx.array:
        """Causal: each member token goes to every expert whose auxiliary score is > 0.5, gated by the main router.
        All experts run on all tokens (E× the FLOPs; inference on short sequences only)."""
        scores = mx.sigmoid(self.router(x))
        chosen = (self.aux_router(x) > 0) & member[:, None]  # sigmoid(z) > 0.5  ⇔  z > 0
        if ctx.routes is not None:
            ctx.routes.append(chosen.astype(mx.float32))
        w = mx.where(chosen, scores, 0.0)  # (N, E)
        y = self.experts(mx.broadcast_to(x[None], (self.num_experts,) + x.shape))  # (E, N, D)
        return mx.einsum("ne,end->nd", w, y)


class SparseFFN(nn.Module):
    """moe (one group over all tokens) or moma (text group, image group). Works on flat tokens (N, D)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.groups = [ExpertGroup(args.hidden_size, args.intermediate_size, e) for e in args.groups]

    def __call__(self, x: mx.array, is_image: mx.array, active: Optional[mx.array], counts: list[int],
                 ctx: Context) -> mx.array:
        """x (N, D); is_image (N,); active (N,) bool or None (MoD: tokens this layer processes); counts: the static
        number of tokens each group sees in this layer (sets the capacity k_e = count·c/E_M)."""
        if self.args.ffn == "moe":
            members = [mx.ones(is_image.shape, dtype=mx.bool_)]
        else:
            members = [mx.logical_not(is_image), is_image]
        if active is not None:
            members = [m & active for m in members]
        if ctx.mode == "infer":
            return sum(g.infer_forward(x, m, ctx) for g, m in zip(self.groups, members))
        ks = [capacity(n, g.num_experts, self.args.capacity) for g, n in zip(self.groups, counts)]
        routed = [g.route(x, m, k, ctx.noise, ctx) for g, m, k in zip(self.groups, members, ks)]
        if len(set(ks)) == 1 and len(self.groups) > 1:
            # equal capacities (a balanced text/image mix, §3.1): all experts of the layer in one batched matmul
            idx = mx.concatenate([r[0] for r in routed])
            gates = mx.concatenate([r[1] for r in routed])
            E, k = idx.shape
            w = [mx.concatenate([getattr(g, n) for g in self.groups]) for n in ("gate_proj", "up_proj", "down_proj")]
            xg = x[idx]
            y = swiglu(xg @ w[0], xg @ w[1]) @ w[2] * gates[..., None]
            return mx.zeros_like(x).at[idx.reshape(-1)].add(y.reshape(E * k, -1))
        # otherwise the groups run one after the other (as in the paper, §3.2)
        return sum(g.dispatch(x, idx, gates) for g, (idx, gates) in zip(self.groups, routed))


def capacity(count: int, num_experts: int, c: float) -> int:
    """k_e = count·c/E, rounded to nearest, at least 1 and at most count."""
    return max(1, min(count, int(round(count * c / num_experts)))) if count > 0 else 1


def attend_selected(attn: lm.Attention, xs: mx.array, rows: mx.array, pos: mx.array) -> mx.array:
    """Self-attention over a MoD layer's selected tokens only, gathered flat: xs (k, D) sorted by (row, position).
    Each token attends to the selected tokens of its own row at positions <= its own; RoPE at the original
    positions (one single-token "sequence" per token, offsets = positions). Uses attn's projections."""
    k_sel, _ = xs.shape
    H, Hkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(xs).reshape(k_sel, H, 1, hd)
    k = attn.k_proj(xs).reshape(k_sel, Hkv, 1, hd)
    v = attn.v_proj(xs).reshape(k_sel, Hkv, 1, hd)
    if "q_norm" in attn:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = attn.rope(q, offset=pos), attn.rope(k, offset=pos)
    q, k, v = (t.transpose(2, 1, 0, 3) for t in (q, k, v))  # (1, heads, k_sel, hd)
    allowed = (rows[:, None] == rows[None]) & (pos[:, None] >= pos[None])
    mask = mx.where(allowed, 0.0, -1e9).astype(xs.dtype)
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask)
    return attn.o_proj(out.transpose(2, 0, 1, 3).reshape(k_sel, H * hd))


class Block(nn.Module):
    """Pre-norm block: shared attention, then the layer's FFN; MoD layers route the whole block."""

    def __init__(self, args: ModelArgs, index: int):
        super().__init__()
        self.args = args
        self.self_attn = lm.Attention(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        if args.ffn == "dense":
            self.mlp = lm.MLP(args)
        else:
            self.moe = SparseFFN(args)
        self.is_mod = args.is_mod_layer(index)
        if self.is_mod:
            self.mod_router = nn.Linear(args.hidden_size, 1, bias=False)
            self.mod_aux_router = AuxRouter(args.hidden_size, 1)

    def ffn(self, h: mx.array, ctx: Context, active: Optional[mx.array], counts: list[int]) -> mx.array:
        """h (N, D) flat, already normalized."""
        if self.args.ffn == "dense":
            return self.mlp(h)
        return self.moe(h, ctx.is_image, active, counts, ctx)

    def group_counts(self, ctx: Context, n_tokens: int, n_total: int) -> list[int]:
        """Tokens each group sees: all tokens (moe) or the modality's tokens (moma); under MoD scaled by
        n_tokens/n_total (the batch's modality ratio; a group may then get fewer members, see expert_choice)."""
        if self.args.ffn == "moe":
            return [n_tokens]
        n_img = ctx.n_image * n_tokens / n_total
        return [int(round(n_tokens - n_img)), int(round(n_img))]

    def __call__(self, x: mx.array, mask, ctx: Context) -> mx.array:
        B, L, D = x.shape
        N = B * L
        if not self.is_mod:
            h = x + self.self_attn(self.input_layernorm(x), mask)
            y = self.ffn(self.post_attention_layernorm(h).reshape(N, D), ctx, None, self.group_counts(ctx, N, N))
            return h + y.reshape(B, L, D)

        # mixture-of-depths over the whole batch (before the modality split)
        r_logit = self.mod_router(x).reshape(N)
        r = mx.sigmoid(r_logit)
        if ctx.mode == "train":
            k_d = max(1, int(round(N * self.args.mod_capacity)))
            sel_idx = mx.stop_gradient(mx.argpartition(-r, kth=k_d - 1)[:k_d])
            sel = mx.zeros((N,)).at[sel_idx].add(1.0) > 0
            if ctx.collect is not None:
                ctx.collect.append((self.mod_aux_router(x).reshape(N, 1), sel.astype(mx.float32)[:, None],
                                    mx.ones((N,), dtype=mx.bool_)))
        else:
            sel = self.mod_aux_router(x).reshape(N) > 0
        if ctx.routes is not None:
            ctx.routes.append(sel.astype(mx.float32)[:, None])
        if ctx.mode == "train":
            # only the k_d selected tokens run: attention among them (same row, causal), then the FFN
            sel_idx = mx.sort(sel_idx)
            xs = x.reshape(N, D)[sel_idx]
            hs = xs + attend_selected(self.self_attn, self.input_layernorm(xs), sel_idx // L, sel_idx % L)
            sub = replace(ctx, is_image=ctx.is_image[sel_idx])
            ys = hs + self.ffn(self.post_attention_layernorm(hs), sub, None, self.group_counts(ctx, k_d, N))
            upd = (r[sel_idx][:, None] * (ys - xs)).astype(x.dtype)
            return x + mx.zeros((N, D), dtype=x.dtype).at[sel_idx].add(upd).reshape(B, L, D)
        # inference: per-token decisions; selected queries attend to selected keys only (causal)
        sel_bl = sel.reshape(B, L)
        causal = mx.arange(L)[:, None] >= mx.arange(L)[None]
        allowed = causal[None] & sel_bl[:, None, :]
        attn_mask = mx.where(allowed, 0.0, -1e9)[:, None].astype(x.dtype)
        h = x + self.self_attn(self.input_layernorm(x), attn_mask)
        y = self.ffn(self.post_attention_layernorm(h).reshape(N, D), ctx, sel, [])
        out = h + y.reshape(B, L, D)
        w = mx.where(sel, r, 0.0).reshape(B, L, 1)
        return x + w * (out - x)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [Block(args, i) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def is_image(self, inputs: mx.array) -> mx.array:
        return (inputs >= self.args.image_start) & (inputs < self.args.image_end)

    def __call__(self, inputs: mx.array, n_image: Optional[int] = None, mode: str = "train",
                 collect: Optional[list] = None, routes: Optional[list] = None) -> mx.array:
        """Logits (B, L, V). mode "train": expert choice over this batch, which must hold exactly `n_image` image
        tokens (a static count from the data layout); mode "infer": causal routing by the auxiliary routers."""
        if mode not in ("train", "infer"):
            raise ValueError(f"unknown mode {mode!r}")
        B, L = inputs.shape
        is_image = self.is_image(inputs).reshape(B * L)
        if mode == "train" and n_image is None:
            n_image = int(is_image.sum().item())  # convenience outside compiled code
        # router noise (upcycling) only in main training: the selections that supervise the auxiliary routers
        # (collect) are the noise-free ones, else stage 2 would learn to predict noise
        noise = self.args.router_noise and self.training and mode == "train" and collect is None
        ctx = Context(mode, is_image, n_image or 0, collect, routes, noise)
        h = self.embed_tokens(inputs)
        for layer in self.layers:
            h = layer(h, "causal", ctx)
        h = self.norm(h)
        if self.args.tie_word_embeddings:
            return self.embed_tokens.as_linear(h)
        return self.lm_head(h)

    def aux_modules(self) -> list[nn.Module]:
        """The auxiliary routers (frozen during main training, the only trainable part in router training)."""
        mods = []
        for layer in self.layers:
            if "moe" in layer:
                mods += [g.aux_router for g in layer.moe.groups]
            if layer.is_mod:
                mods.append(layer.mod_aux_router)
        return mods

    def freeze_aux(self) -> None:
        for m in self.aux_modules():
            m.freeze()

    def only_aux_trainable(self) -> None:
        self.freeze()
        for m in self.aux_modules():
            m.unfreeze()


def init_weights(model: Model, seed: int = 0) -> None:
    """lm.init_weights' scheme: N(0, sqrt(2/(5d))) everywhere, output projections (o_proj, down_proj, also the
    stacked experts') std 1/sqrt(d)/n_layers; norms one. Every expert gets its own draw."""
    args = model.args
    d, n_layers = args.hidden_size, args.num_hidden_layers
    std = math.sqrt(2 / (5 * d))
    out_std = 1 / math.sqrt(d) / n_layers
    flat = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(flat))
    params = {}
    for key, (name, p) in zip(keys, flat):
        if name.endswith("bias"):
            params[name] = mx.zeros_like(p)
        elif "norm" in name:
            params[name] = mx.ones_like(p)
        else:
            s = out_std if name.endswith(("o_proj.weight", "down_proj.weight", "down_proj")) else std
            params[name] = s * mx.random.normal(p.shape, dtype=p.dtype, key=key)
    model.update(tree_unflatten(list(params.items())))


def build(args: ModelArgs, seed: int = 0) -> Model:
    model = Model(args)
    init_weights(model, seed)
    model.freeze_aux()
    mx.eval(model.parameters())
    return model


def upcycle(model: Model, source: Model) -> None:
    """Initialize a moma model from a trained 1t1i model (same dims): attention, norms and embeddings copied; every
    text expert starts as the text FFN, every image expert as the image FFN; routers keep their fresh init."""
    src = dict(tree_flatten(source.parameters()))
    new = {}
    for name, p in tree_flatten(model.parameters()):
        if ".moe.groups." in name and name.endswith(("gate_proj", "up_proj", "down_proj")):
            s = src[name]  # (1, ., .)
            new[name] = mx.broadcast_to(s, p.shape) + 0.0
        elif ".moe.groups." in name or "aux_router" in name:
            continue
        elif name in src and src[name].shape == p.shape:
            new[name] = src[name]
    model.update(tree_unflatten(list(new.items())))
    mx.eval(model.parameters())
