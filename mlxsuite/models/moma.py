"""MoMa: an early-fusion decoder whose FFNs are modality-aware expert-choice mixtures (Lin et al. 2024).

One decoder over a unified vocabulary (text BPE ids, image codebook ids, BOI/EOI). Self-attention is shared by both
modalities (mlxsuite.models.lm.Attention); each layer's FFN is one of

- ``dense``: the SwiGLU MLP of mlxsuite.models.lm;
- ``moe``:   one group of E experts over all tokens, expert choice (MoMa's "MoE 8x");
- ``moma``:  a text group and an image group; a token goes to its modality's group (decided by its *input* token id:
             image codes are image, everything else, BOI/EOI/BOS/EOS included, is text), then expert choice inside
             the group.

Expert choice, the stacked experts and their auxiliary routers are in `moma_experts`.

Mixture-of-depths (optional): layers 0, 2, 4, … keep the top 25 % of the batch's tokens by sigmoid(x·w); the others
skip attention and FFN; a kept token's block update is scaled by its router weight. In training the kept tokens are
gathered flat and only they run (attention among the kept tokens of the same row, causal, RoPE at the original
positions; then the FFN, whose expert groups see only kept tokens of their modality).

Causal inference mode (the default, `model(tokens, cache)` as in mlx-lm): expert choice compares tokens across the
batch, so it is not causal. Auxiliary routers sigmoid(silu(x·W1)·W2) (one per layer and group, and one per MoD
layer) are trained afterwards to predict the batch-level selections; in inference mode a token goes to every expert
of its group whose auxiliary score is > 0.5, weighted by the main router's sigmoid, and a MoD layer processes a token
iff its auxiliary score is > 0.5. `Model.make_cache()` gives one KV cache per layer; a MoD layer's cache also keeps
which positions it processed, so later tokens attend only to those.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache

from mlxsuite.models import lm
from mlxsuite.models.moma_experts import AuxRouter, Context, SparseFFN

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


BAND = 64  # query chunk of the banded MoD attention


def attend_selected(attn: lm.Attention, xs: mx.array, rows: mx.array, pos: mx.array, span: int) -> mx.array:
    """Self-attention over a MoD layer's selected tokens only, gathered flat: xs (k, D) sorted by (row, position).
    Each token attends to the selected tokens of its own row at positions <= its own, with RoPE at its original
    position. The pieces of `lm.Attention`, with each token as a one-token sequence so that every one gets its own
    RoPE offset. A token's earlier row-mates lie at most `span` − 1 places before it (span: the row length), so
    chunks of BAND queries attend to a band of BAND + span − 1 keys under a (row, causal) mask, not all k: the k × k
    scores of the whole selection were as many as a full layer's attention, and cost MoD most of its overhead."""
    q, k, v = attn.project(xs[:, None])  # (k, heads, 1, head_dim)
    q, k = attn.finish_queries(q, pos), attn.finish_keys(k, pos)
    n, C, W = xs.shape[0], BAND, span - 1
    chunks = -(-n // C)
    if chunks * C * (C + W) >= n * n:  # the band would not be smaller: one k × k attention
        q, k, v = (t.transpose(2, 1, 0, 3) for t in (q, k, v))  # (1, heads, k, head_dim)
        allowed = (rows[:, None] == rows[None]) & (pos[:, None] >= pos[None])
        return attn.attend(q, k, v, mx.where(allowed, 0.0, -1e9).astype(xs.dtype))[0]
    q, k, v = (t[:, :, 0] for t in (q, k, v))  # (k, heads, head_dim)
    rows, pos = rows.astype(mx.int32), pos.astype(mx.int32)
    tail = chunks * C - n  # queries padded at the end (row −2: attend to nothing real, dropped)
    q = mx.concatenate([q, mx.zeros((tail,) + q.shape[1:], q.dtype)])
    q_rows = mx.concatenate([rows, mx.full((tail,), -2, mx.int32)]).reshape(chunks, C)
    q_pos = mx.concatenate([pos, mx.zeros((tail,), mx.int32)]).reshape(chunks, C)
    front = lambda t, fill: mx.concatenate([mx.full((W,) + t.shape[1:], fill, t.dtype), t])  # noqa: E731
    band = mx.arange(chunks)[:, None] * C + mx.arange(C + W)[None]  # (chunks, C + W) into the W-padded keys
    window = mx.minimum(band, n + W - 1)  # the last chunk's band stops at the last key (its extra slots repeat it)
    k_rows, k_pos = front(rows, -1)[window], front(pos, 0)[window]
    kw, vw = (front(t, 0)[window].transpose(0, 2, 1, 3) for t in (k, v))  # (chunks, kv heads, C + W, head_dim)
    allowed = (q_rows[:, :, None] == k_rows[:, None]) & (q_pos[:, :, None] >= k_pos[:, None])
    allowed = allowed & (band < n + W)[:, None]  # a repeated last key counts once
    qc = q.reshape(chunks, C, *q.shape[1:]).transpose(0, 2, 1, 3)  # (chunks, heads, C, head_dim)
    out = attn.attend(qc, kw, vw, mx.where(allowed, 0.0, -1e9)[:, None].astype(xs.dtype))
    return out.reshape(chunks * C, -1)[:n]


class MoDCache(KVCache):
    """A MoD layer's KV cache: keys and values of every position, and which positions the layer processed; later
    tokens attend to those only (a skipped token has no keys at that layer)."""

    def __init__(self):
        super().__init__()
        self.selected = None  # (B, offset) bool

    def select(self, sel: mx.array) -> mx.array:
        """Append the new positions' decisions (B, L); return the decisions of every cached position."""
        self.selected = sel if self.selected is None else mx.concatenate([self.selected, sel], axis=1)
        return self.selected

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.selected

    @state.setter
    def state(self, v):
        self.keys, self.values, self.offset, self.selected = v


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
            self.moe = SparseFFN(
                args.hidden_size, args.intermediate_size, args.groups, args.ffn == "moma", args.capacity
            )
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

    def __call__(self, x: mx.array, ctx: Context, cache=None) -> mx.array:
        if ctx.mode == "train":
            return self.train_forward(x, ctx)
        return self.infer_forward(x, ctx, cache)

    def train_forward(self, x: mx.array, ctx: Context) -> mx.array:
        """Expert choice over the batch; a MoD layer runs only the top c_d of the batch's tokens."""
        B, L, D = x.shape
        N = B * L
        if not self.is_mod:
            h = x + self.self_attn(self.input_layernorm(x), "causal")
            y = self.ffn(self.post_attention_layernorm(h).reshape(N, D), ctx, None, self.group_counts(ctx, N, N))
            return h + y.reshape(B, L, D)
        # mixture-of-depths over the whole batch (before the modality split)
        r = mx.sigmoid(self.mod_router(x).reshape(N))
        k_d = max(1, int(round(N * self.args.mod_capacity)))
        sel_idx = mx.stop_gradient(mx.sort(mx.argpartition(-r, kth=k_d - 1)[:k_d]))
        if ctx.collect is not None or ctx.routes is not None:
            sel = (mx.zeros((N,)).at[sel_idx].add(1.0) > 0).astype(mx.float32)[:, None]
            if ctx.collect is not None:
                ctx.collect.append((self.mod_aux_router(x).reshape(N, 1), sel, mx.ones((N,), dtype=mx.bool_)))
            if ctx.routes is not None:
                ctx.routes.append(sel)
        # only the k_d selected tokens run: attention among them (same row, causal), then the FFN
        xs = x.reshape(N, D)[sel_idx]
        hs = xs + attend_selected(self.self_attn, self.input_layernorm(xs), sel_idx // L, sel_idx % L, L)
        sub = replace(ctx, is_image=ctx.is_image[sel_idx])
        ys = hs + self.ffn(self.post_attention_layernorm(hs), sub, None, self.group_counts(ctx, k_d, N))
        upd = (r[sel_idx][:, None] * (ys - xs)).astype(x.dtype)
        return x.reshape(N, D).at[sel_idx].add(upd).reshape(B, L, D)

    def infer_forward(self, x: mx.array, ctx: Context, cache=None) -> mx.array:
        """Causal: per-token routing by the auxiliary routers. With a cache, x holds the positions after the cached
        ones; a MoD layer's cache remembers which positions it processed."""
        B, L, D = x.shape
        N = B * L
        if not self.is_mod:
            h = x + self.self_attn(self.input_layernorm(x), create_attention_mask(x, cache), cache)
            y = self.ffn(self.post_attention_layernorm(h).reshape(N, D), ctx, None, [])
            return h + y.reshape(B, L, D)
        r = mx.sigmoid(self.mod_router(x).reshape(N))
        sel = self.mod_aux_router(x).reshape(N) > 0
        if ctx.routes is not None:
            ctx.routes.append(sel.astype(mx.float32)[:, None])
        # selected queries attend to the selected keys at or before them
        offset = cache.offset if cache is not None else 0
        keys_sel = cache.select(sel.reshape(B, L)) if cache is not None else sel.reshape(B, L)
        causal = mx.arange(offset, offset + L)[:, None] >= mx.arange(offset + L)[None]
        allowed = causal[None] & keys_sel[:, None, :]
        attn_mask = mx.where(allowed, 0.0, -1e9)[:, None].astype(x.dtype)
        h = x + self.self_attn(self.input_layernorm(x), attn_mask, cache)
        y = self.ffn(self.post_attention_layernorm(h).reshape(N, D), ctx, sel, [])
        out = h + y.reshape(B, L, D)
        w = mx.where(sel, r, 0.0).reshape(B, L, 1)
        return x + w * (out - x)


class MomaModel(nn.Module):
    """The decoder: embeddings, blocks, final norm; returns hidden states (mlx-lm's inner `model`)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [Block(args, i) for i in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(
        self,
        inputs: mx.array,
        cache=None,
        *,
        mode: str = "infer",
        n_image: Optional[int] = None,
        collect: Optional[list] = None,
        routes: Optional[list] = None,
    ) -> mx.array:
        if mode not in ("train", "infer"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "train" and cache is not None:
            raise ValueError("expert choice compares the tokens of a whole batch: it cannot run with a KV cache")
        B, L = inputs.shape
        is_image = ((inputs >= self.args.image_start) & (inputs < self.args.image_end)).reshape(B * L)
        if mode == "train" and n_image is None:
            n_image = int(is_image.sum().item())  # convenience outside compiled code
        # router noise (upcycling) only in main training: the selections that supervise the auxiliary routers
        # (collect) are the noise-free ones, else stage 2 would learn to predict noise
        noise = self.args.router_noise and self.training and mode == "train" and collect is None
        ctx = Context(mode, is_image, n_image or 0, collect, routes, noise)
        h = self.embed_tokens(inputs)
        for layer, c in zip(self.layers, cache or [None] * len(self.layers)):
            h = layer(h, ctx, c)
        return self.norm(h)


class Model(lm.CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__(args, MomaModel(args))

    def __call__(
        self,
        inputs: mx.array,
        cache=None,
        *,
        mode: str = "infer",
        n_image: Optional[int] = None,
        collect: Optional[list] = None,
        routes: Optional[list] = None,
    ) -> mx.array:
        """Logits (B, L, V). mode "infer" (the default, as in mlx-lm: `model(tokens, cache)`): causal routing by the
        auxiliary routers, with an optional per-layer cache (`make_cache`). mode "train": expert choice over this
        batch, which holds exactly `n_image` image tokens (a static count from the data layout); `collect` gathers
        the auxiliary routers' logits and targets, `routes` the selections."""
        return self.logits(self.model(inputs, cache, mode=mode, n_image=n_image, collect=collect, routes=routes))

    def make_cache(self) -> list:
        return [MoDCache() if layer.is_mod else KVCache() for layer in self.layers]

    def is_image(self, inputs: mx.array) -> mx.array:
        return (inputs >= self.args.image_start) & (inputs < self.args.image_end)

    def aux_modules(self) -> list[nn.Module]:
        """The auxiliary routers (frozen during main training, the only trainable part in router training)."""
        mods = []
        for layer in self.layers:
            if "moe" in layer:
                mods += layer.moe.aux_routers
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


init_weights = lm.init_weights  # one init for every model here (every expert its own draw)


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
    sizes = model.args.groups
    new = {}
    for name, p in tree_flatten(model.parameters()):
        if ".moe." in name and name.endswith(("gate_proj", "up_proj", "down_proj")):
            s = src[name]  # (2, ., .): the text FFN, the image FFN
            new[name] = mx.concatenate([mx.repeat(s[g : g + 1], e, axis=0) for g, e in enumerate(sizes)])
        elif ".moe." in name or "aux_router" in name:
            continue
        elif name in src and src[name].shape == p.shape:
            new[name] = src[name]
    model.update(tree_unflatten(list(new.items())))
    mx.eval(model.parameters())
