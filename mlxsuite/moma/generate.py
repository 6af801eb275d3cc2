"""MoMa generation through the causal path (auxiliary routers) and the shared decode loop (`generate_tokens`, with a
per-layer KV cache): caption → image (Chameleon's fixed-length image block, logits restricted to image codes) and
image → caption (logits restricted to text ids)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxsuite import store
from mlxsuite.generate import generate_tokens
from mlxsuite.moma.data import layout_of, load_assets
from mlxsuite.moma.images import read_image
from mlxsuite.moma.train import load_run
from mlxsuite.platform.errors import UserError


def only_ids(start: int, end: int, vocab: int):
    """A logits processor that leaves ids [start, end) to choose from."""
    allowed = (mx.arange(vocab) >= start) & (mx.arange(vocab) < end)
    return lambda logits: mx.where(allowed, logits, -mx.inf)


def inference_model(name: str):
    model, _, folder = load_run(name)
    if not store.read_config(folder)["mlxsuite"].get("routers_trained"):
        raise UserError(
            f"{folder} routes by expert choice, which is not causal: train its auxiliary routers first "
            f"(mlxsuite moma train-routers {name})"
        )
    model.eval()
    tok, imtok = load_assets(folder)
    return model, tok, imtok, layout_of(tok, imtok)


def generate_image(name: str, prompt: str, temperature: float = 1.0, seed: int = 0) -> dict:
    """caption → image: [BOS] prompt [BOI], then exactly tokens_per_image image codes, decoded through the
    codebook."""
    model, tok, imtok, L = inference_model(name)
    mx.random.seed(seed)
    ids = mx.array([L.bos] + tok.encode(prompt) + [L.boi])
    tokens = generate_tokens(
        model, ids, imtok.tokens_per_image, temperature, processor=only_ids(L.image_start, L.image_end, L.size)
    )
    codes = [t - L.image_start for t in tokens]
    return {"codes": codes, "image": imtok.decode(np.array([codes]))[0], "prompt": prompt}


def caption_image(name: str, image, max_tokens: int = 24) -> str:
    """image → caption: [BOS] [BOI] codes [EOI], then greedy text tokens until EOS."""
    model, tok, imtok, L = inference_model(name)
    if isinstance(image, (str, Path)):
        image = read_image(Path(image), imtok.size)
    codes = imtok.encode(np.asarray(image, np.float32)[None])[0]
    ids = mx.array([L.bos, L.boi] + (codes + L.image_start).tolist() + [L.eoi])
    out = []
    for t in generate_tokens(model, ids, max_tokens, processor=only_ids(0, L.text_size, L.size)):
        if t == L.eos:
            break
        out.append(t)
    return tok.decode(out).strip()
