"""Every FLOPs count of the project, in one place. Matmul FLOPs, 2 per multiply-add; norms, RoPE, softmax, the
activation and the embedding lookup are not counted.

The vocabulary paper's budget formula C ≈ 6·(N_nv + V·d)·H·f(V) is a law of that paper and lives with it in
`scaling.py`; MoMa's training FLOPs per token (`moma_train_per_token`) are counted here.
"""

from __future__ import annotations

from typing import Optional

from mlxsuite.models import lm


def forward(args: lm.ModelArgs, n_tokens: int, offset: int = 0, logits_tokens: int = 1) -> int:
    """Running `n_tokens` positions after `offset` cached ones:

    - linear layers on every token: 2·n·Σ_layers (d·q + 2·d·kv + q·d + 3·d·f), q = heads·head_dim, kv =
      kv_heads·head_dim, f the FFN width (per layer: OpenELM's vary);
    - causal attention (a sliding-window layer's queries see at most the window): each (query, key) pair a query
      sees costs 2·head_dim for q·k and 2·head_dim for the weighted sum of values, per query head and layer;
    - the LM head on `logits_tokens` positions (prefill needs only the last): 2·V·d each."""
    d = args.hidden_size
    widths = [args.layer_widths(i) for i in range(args.num_hidden_layers)]  # (q, kv, ffn) per layer
    linear = 2 * n_tokens * sum(d * q + 2 * d * kv + q * d + 3 * d * f for q, kv, f in widths)
    attention = 0
    for i, (q, _, _) in enumerate(widths):
        window = args.sliding_window if args.is_sliding(i) else None
        attention += 4 * q * keys_seen(n_tokens, offset, window)
    return linear + attention + 2 * logits_tokens * d * args.vocab_size


def keys_seen(n_tokens: int, offset: int, window: Optional[int] = None) -> int:
    """(query, key) pairs of `n_tokens` causal queries after `offset` cached positions: Σ min(p + 1, window) over
    their positions p."""
    lo, hi = offset + 1, offset + n_tokens  # each query sees p + 1 keys, for p + 1 in [lo, hi]
    if window is None:
        return (lo + hi) * n_tokens // 2
    below = max(0, min(hi, window) - lo + 1)
    return below * (2 * lo + below - 1) // 2 + window * max(0, hi - max(lo - 1, window))


def prefill(args: lm.ModelArgs, prompt_tokens: int, batch: int = 1) -> int:
    """From `batch` prompts of `prompt_tokens` to the first token's logits: every layer on every prompt token, the
    head on the last one."""
    return batch * forward(args, prompt_tokens)


def predictor(pair, n_tokens: int) -> int:
    """KV Prediction's predictor on `n_tokens` positions: one K and one V linear map per base layer."""
    p = pair.predictor
    return 2 * n_tokens * sum(t.weight.size for t in p.key_transforms + p.value_transforms)


def kvp_prefill(pair, prompt_tokens: int, batch: int = 1) -> int:
    """KV Prediction's prompt step: the auxiliary on N−1 tokens (no head), the predictor on N−1, the base on the
    last token against N−1 cached positions (with its head). Nominal, like `prefill`: MLX's lazy evaluation skips
    work whose result is unused (the auxiliary's last-layer attention and MLP) in every mode alike."""
    m = max(prompt_tokens - 1, 0)
    aux = forward(pair.auxiliary.args, m, 0, logits_tokens=0) if m else 0
    return batch * (aux + predictor(pair, m) + forward(pair.base.args, 1, m))


def moma_train_per_token(args, seq_len: int, image_fraction: float = 0.5) -> dict:
    """Training FLOPs per token (6 × multiply-adds of the forward), as the vocabulary paper counts C = 6ND:
    6·(params a token passes through) + 6·T·d per layer for causal attention scores. Experts: a group of E_M
    experts with capacity k_e = n_M·c/E_M processes c expert-FFNs per token on average; routers count d·E_M for
    the token's group. MoD layers process c_d of the tokens (attention scores: c_d² of the pairs) plus their
    router d·1. Auxiliary routers are not counted (they are trained afterwards, on frozen activations)."""
    d, hd = args.hidden_size, args.head_dim
    attn = d * args.num_attention_heads * hd * 2 + 2 * d * args.num_key_value_heads * hd
    mlp = 3 * d * args.intermediate_size
    if args.ffn == "dense":
        ffn, router = mlp, 0.0
    elif args.ffn == "moe":
        ffn, router = args.capacity * mlp, d * args.num_experts
    else:
        ffn = args.capacity * mlp
        router = d * (args.text_experts * (1 - image_fraction) + args.image_experts * image_fraction)
    scores = seq_len * args.num_attention_heads * hd
    per_layer = []
    for i in range(args.num_hidden_layers):
        if args.is_mod_layer(i):
            c = args.mod_capacity
            per_layer.append(6 * (c * (attn + ffn + router) + d) + 6 * c * c * scores)
        else:
            per_layer.append(6 * (attn + ffn + router) + 6 * scores)
    head = 6 * args.vocab_size * d
    total = sum(per_layer) + head
    return {"total": total, "layers": sum(per_layer), "head": head}
