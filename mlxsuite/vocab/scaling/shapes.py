"""The shapes of public decoders, enough to count their non-vocabulary parameters N_nv."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """A decoder's shape from its config.json, enough to count N_nv.

    N_nv = layers·(attention + MLP + norms) + final norm, where attention = d·q + 2·d·kv + q·d
    (q = heads·head_dim, kv = kv_heads·head_dim; plus q + 2·kv biases if `qkv_bias`), MLP = 3·d·d_ff (gated: gate,
    up, down) and each RMSNorm has d weights. Embedding and output head are N_v and not counted.
    """

    layers: int
    d: int
    d_ff: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None
    qkv_bias: bool = False
    norms_per_layer: int = 2

    @property
    def nnv(self) -> int:
        hd = self.head_dim or self.d // self.heads
        q, kv = self.heads * hd, self.kv_heads * hd
        attn = 2 * self.d * q + 2 * self.d * kv + ((q + 2 * kv) if self.qkv_bias else 0)
        mlp = 3 * self.d * self.d_ff
        return self.layers * (attn + mlp + self.norms_per_layer * self.d) + self.d


# From each model's published config.json (Hugging Face).
KNOWN_MODELS: dict[str, ModelShape] = {
    "llama2-7b": ModelShape(32, 4096, 11008, 32, 32, 32000),
    "llama2-13b": ModelShape(40, 5120, 13824, 40, 40, 32000),
    "llama2-70b": ModelShape(80, 8192, 28672, 64, 8, 32000),
    "llama3-8b": ModelShape(32, 4096, 14336, 32, 8, 128256),
    "llama3-70b": ModelShape(80, 8192, 28672, 64, 8, 128256),
    "llama3.1-405b": ModelShape(126, 16384, 53248, 128, 8, 128256),
    "tinyllama-1.1b": ModelShape(22, 2048, 5632, 32, 4, 32000),
    "mistral-7b": ModelShape(32, 4096, 14336, 32, 8, 32000),
    "qwen2-7b": ModelShape(28, 3584, 18944, 28, 4, 152064, qkv_bias=True),
    "qwen2-72b": ModelShape(80, 8192, 29568, 64, 8, 152064, qkv_bias=True),
    "gemma2-9b": ModelShape(42, 3584, 14336, 16, 8, 256000, head_dim=256, norms_per_layer=4),
    "gemma2-27b": ModelShape(46, 4608, 36864, 32, 16, 256000, head_dim=128, norms_per_layer=4),
}
