"""Validation metrics of a language model: cross-entropy, bits per character and the unigram-normalized loss.

L_u (Tao et al. 2024, Eq. 4; notes §2) = mean over target tokens of  −log p(w_i | context) + log p_uni(w_i),
where p_uni is the token's frequency in the tokenized training corpus (unseen ids count 1). Natural log; usually
negative. Bits per character = total CE in bits / characters of the text behind the targets.
"""

from __future__ import annotations

import math
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def lm_loss(model, batch: mx.array) -> mx.array:
    """Mean next-token cross-entropy of a batch of (B, T+1) token windows."""
    logits = model(batch[:, :-1])
    return nn.losses.cross_entropy(logits, batch[:, 1:], reduction="mean")


def evaluate_lm(
    model,
    windows: np.ndarray,
    unigram: Optional[np.ndarray] = None,
    chars: Optional[int] = None,
    batch_size: int = 8,
    progress=None,
) -> dict:
    """CE (nats/token), perplexity, L_u (if a unigram table is given) and bits/char (if `chars` is given) over
    (N, T+1) windows. `progress(batches done, batches)` follows the work."""
    log_uni = mx.array(np.log(unigram).astype(np.float32)) if unigram is not None else None
    ce_sum, lu_sum, n = 0.0, 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = mx.array(windows[i : i + batch_size])
        targets = batch[:, 1:]
        ce = nn.losses.cross_entropy(model(batch[:, :-1]), targets, reduction="none")
        parts = [ce.sum()]
        if log_uni is not None:
            parts.append((ce + log_uni[targets]).sum())
        mx.eval(parts)
        ce_sum += parts[0].item()
        lu_sum += parts[1].item() if log_uni is not None else 0.0
        n += targets.size
        if progress is not None:
            progress(i // batch_size + 1, -(-len(windows) // batch_size))
    if n == 0:
        return {}
    out = {"ce": ce_sum / n, "ppl": math.exp(min(ce_sum / n, 50.0)), "tokens": n}
    if log_uni is not None:
        out["lu"] = lu_sum / n
    if chars:
        out["bpc"] = ce_sum / math.log(2) / chars
    return out
