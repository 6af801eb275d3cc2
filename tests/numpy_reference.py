"""Independent float64 numpy references for the tests: RoPE, causal attention, the Llama-style decoder of
`models/lm.py` (with KV Prediction's seams: tapped raw K/V, replaced K/V) and the KV predictor. Written from the
equations (notes in shared/papers), not from the MLX code; they read only the models' weights."""

import numpy as np
from mlx.utils import tree_flatten


def weights64(module) -> dict:
    return {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(module.parameters())}


def rope64(x, start, base, traditional=False, scale=1.0, rope_scale=1.0):
    """RoPE at positions start.. : rotate pairs (i, i + D/2), or consecutive pairs when traditional; times scale."""
    n, D = x.shape[-2], x.shape[-1]
    theta = ((np.arange(n) + start) * rope_scale)[:, None] * base ** (-np.arange(D // 2) / (D // 2))
    cos, sin = np.cos(theta), np.sin(theta)
    if traditional:
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)
    else:
        a, b = x[..., : D // 2], x[..., D // 2 :]
        out = np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return out * scale


def attention64(q, k, v, offset=0, scale=1.0, key_start=0, window=None):
    """softmax(scale·q kᵀ + causal mask) v, queries at positions offset.., keys at key_start.., GQA by repeating the
    KV heads; `window`: a query sees the last `window` positions only."""
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    n, L = q.shape[2], k.shape[2]
    scores = scale * q @ k.swapaxes(-1, -2)
    query_pos, key_pos = np.arange(offset, offset + n)[:, None], np.arange(key_start, key_start + L)[None]
    causal = (query_pos >= key_pos) & (query_pos < key_pos + window if window else True)
    scores = np.where(causal, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def rmsnorm64(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu64(x):
    return x / (1.0 + np.exp(-x))


def cross_entropy64(logits, targets):
    """Mean over positions of −log softmax(logits)[target]."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1).mean()


def logsumexp64(x):
    m = x.max(-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[..., 0]


def _heads(x, heads):
    B, T, _ = x.shape
    return x.reshape(B, T, heads, -1).transpose(0, 2, 1, 3)


def key_norm64(w: dict, args, i: int, k):
    """Layer i's k-norm (qwen3-style) on raw keys, or the keys as they are."""
    name = f"model.layers.{i}.self_attn.k_norm.weight"
    return rmsnorm64(k, w[name], args.rms_norm_eps) if args.qk_norm else k


def decoder64(model, tokens, kv=None, tap=None):
    """Logits (B, T, V) of an `lm.Model` on tokens (B, T) in float64. `tap` (a list) receives every layer's raw
    (keys, values) (B, kv_heads, T, head_dim), before k-norm and RoPE; `kv` gives raw keys and values per layer that
    replace the layer's own projections (KV Prediction), then go through the layer's k-norm and RoPE."""
    args, w = model.args, weights64(model)
    eps, H, Hkv = args.rms_norm_eps, args.num_attention_heads, args.num_key_value_heads

    def linear(name, x):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    tokens = np.asarray(tokens)
    h = w["model.embed_tokens.weight"][tokens]
    for i in range(args.num_hidden_layers):
        p = f"model.layers.{i}."
        x = rmsnorm64(h, w[p + "input_layernorm.weight"], eps)
        q = _heads(linear(p + "self_attn.q_proj", x), H)
        k, v = _heads(linear(p + "self_attn.k_proj", x), Hkv), _heads(linear(p + "self_attn.v_proj", x), Hkv)
        if kv is not None:
            k, v = kv[i]
        if tap is not None:
            tap.append((k, v))
        if args.qk_norm:
            q = rmsnorm64(q, w[p + "self_attn.q_norm.weight"], eps)
        k = key_norm64(w, args, i, k)
        q, k = rope64(q, 0, args.rope_theta), rope64(k, 0, args.rope_theta)
        out = attention64(q, k, v, 0, args.head_dim**-0.5)
        B, _, T, _ = out.shape
        h = h + linear(p + "self_attn.o_proj", out.transpose(0, 2, 1, 3).reshape(B, T, -1))
        x = rmsnorm64(h, w[p + "post_attention_layernorm.weight"], eps)
        h = h + linear(p + "mlp.down_proj", silu64(linear(p + "mlp.gate_proj", x)) * linear(p + "mlp.up_proj", x))
    h = rmsnorm64(h, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if args.tie_word_embeddings else w["lm_head.weight"]
    return h @ head.T


def predictor64(predictor, aux_keys, aux_values):
    """KV Prediction's per-layer linear maps: base layer i takes aux layer j_i's raw K (V), heads merged, through
    its own Linear (weight and bias) for keys (values), split into the base's KV heads."""
    w, a = weights64(predictor), predictor.args
    keys, values = [], []
    for i, j in enumerate(a.layer_map):
        for kind, source, out in (("key", aux_keys, keys), ("value", aux_values, values)):
            x = source[j]
            B, h, T, d = x.shape
            merged = x.transpose(0, 2, 1, 3).reshape(B, T, h * d)
            y = merged @ w[f"{kind}_transforms.{i}.weight"].T + w[f"{kind}_transforms.{i}.bias"]
            out.append(_heads(y, a.base_kv_heads[i]))
    return keys, values
