"""KV Prediction evaluation: base alone, auxiliary alone and KV Prediction on held-out text — continuation
cross-entropy, first-token accuracy, greedy next-line exact match, TTFT FLOPs, per-layer KV error."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import data, flops
from .errors import UserError
from .generate import prefill
from .kvp import flops_reduction, load_pair, prompt_step
from .models import kv_prediction as kvm
from .plots import pyplot

METHODS = ("base", "aux", "kvp")


def _prompt_step(pair: kvm.KVPredictionModel, method: str, prompt: mx.array):
    """(first-token logits (B, V), cache, the model that continues) for one method."""
    if method == "kvp":
        logits, cache = prompt_step(pair, prompt)
        return logits, cache, pair.base
    model = pair.base if method == "base" else pair.auxiliary
    cache = model.make_cache()
    return prefill(model, prompt, cache), cache, model


def continuation_metrics(pair, rows: np.ndarray, prompt_len: int, batch_size: int = 8, tick=None) -> dict:
    """For each method: mean CE of the `rows.shape[1] - prompt_len` tokens after the prompt, each method continuing
    from its own prompt cache (KVP: the predicted cache, then the base), and first-token accuracy."""
    res = {m: {"ce": 0.0, "first_acc": 0.0} for m in METHODS}
    n = 0
    for i in range(0, len(rows), batch_size):
        batch = mx.array(rows[i : i + batch_size])
        prompt, cont = batch[:, :prompt_len], batch[:, prompt_len:]
        for m in METHODS:
            first, cache, model = _prompt_step(pair, m, prompt)
            logits = first[:, None]
            if cont.shape[1] > 1:
                logits = mx.concatenate([logits, model(cont[:, :-1], cache)], axis=1)
            ce = mx.mean(nn.losses.cross_entropy(logits, cont, reduction="none"), axis=1)
            acc = (mx.argmax(first, axis=-1) == cont[:, 0]).astype(mx.float32)
            mx.eval(ce, acc)
            res[m]["ce"] += ce.sum().item()
            res[m]["first_acc"] += acc.sum().item()
            if tick is not None:
                tick(f"continuation, {m}")
        n += len(batch)
    return {m: {k: v / max(n, 1) for k, v in d.items()} for m, d in res.items()}


def next_line_samples(tok, docs: list[str], n: int, prompt_len: int, seed: int = 0) -> list[tuple[list[int], str]]:
    """(prompt ids: the last `prompt_len` tokens of a file up to the start of a line, that line) for n code lines
    with at least 8 non-blank characters, drawn reproducibly from the documents."""
    rng = np.random.default_rng(seed)
    out: list[tuple[list[int], str]] = []
    tries = 0
    while len(out) < n and tries < 50 * n and docs:
        tries += 1
        doc = docs[int(rng.integers(len(docs)))]
        starts = [0] + [i + 1 for i, ch in enumerate(doc) if ch == "\n"]
        if len(starts) < 4:
            continue
        k = int(rng.integers(2, len(starts) - 1))
        line = doc[starts[k] :].split("\n", 1)[0].rstrip()
        if len(line.strip()) < 8:
            continue
        ids = tok.encode(doc[max(0, starts[k] - 8 * prompt_len) : starts[k]])[-prompt_len:]
        if len(ids) >= 4:
            out.append((ids, line))
    return out


def next_line_exact_match(pair, tok, samples: list[tuple[list[int], str]], max_tokens: int = 48, tick=None) -> dict:
    """Greedy next-line exact match (trailing whitespace ignored) for each method."""
    res = {}
    for m in METHODS:
        hits = 0
        for ids, line in samples:
            first, cache, model = _prompt_step(pair, m, mx.array(ids)[None])
            head = tok.decode(ids)
            gen: list[int] = []
            logits = first
            for _ in range(max_tokens):
                token = int(mx.argmax(logits, axis=-1).item())
                gen.append(token)
                text = tok.decode(ids + gen)[len(head):]
                if "\n" in text or token == tok.eos_id:
                    break
                logits = model(mx.array([[token]]), cache)[:, -1]
            text = tok.decode(ids + gen)[len(head):]
            hits += text.split("\n", 1)[0].rstrip() == line
            if tick is not None:
                tick(f"next line, {m}")
        res[m] = hits / max(len(samples), 1)
    return res


def kv_errors(pair, rows: np.ndarray, batch_size: int = 8) -> dict:
    """Per base layer: mean |k_norm_B(K̂) − K| (pre-RoPE) and mean |V̂ − V| over all positions of the rows."""
    k_sum = np.zeros(pair.base.args.num_hidden_layers)
    v_sum = np.zeros_like(k_sum)
    n = 0
    for i in range(0, len(rows), batch_size):
        inputs = mx.array(rows[i : i + batch_size])
        _, _, pk, pv = pair(inputs)
        tk, tv = pair.base_targets(inputs)
        ks = mx.stack([mx.mean(mx.abs(a - b)) for a, b in zip(pk, tk)])
        vs = mx.stack([mx.mean(mx.abs(a - b)) for a, b in zip(pv, tv)])
        mx.eval(ks, vs)
        k_sum += np.array(ks) * len(inputs)
        v_sum += np.array(vs) * len(inputs)
        n += len(inputs)
    return {"k_l1": (k_sum / max(n, 1)).tolist(), "v_l1": (v_sum / max(n, 1)).tolist()}


def flops_report(pair, prompt_len: int) -> dict:
    b, a = pair.base.args, pair.auxiliary.args
    base_f = flops.prefill(b, prompt_len)
    aux_f = flops.prefill(a, prompt_len)
    kvp_f = flops.kvp_prefill(pair, prompt_len)
    return {
        "prompt_tokens": prompt_len,
        "params": {"base": b.n_params, "aux": a.n_params, "predictor": pair.predictor.n_params()},
        "param_ratio": flops_reduction(pair),
        "prefill_flops": {"base": base_f, "aux": aux_f, "kvp": kvp_f},
        "prefill_reduction": {"aux": base_f / aux_f, "kvp": base_f / kvp_f},
    }


def evaluate_kvp(
    name_or_path: str, corpus: Optional[str] = None, prompt_len: int = 64, cont_len: int = 32, samples: int = 32,
    lines: int = 32, seed: int = 0, pair_and_tok=None, progress: Optional[Callable[[int, int, str], None]] = None,
) -> dict:
    """Base alone vs auxiliary alone vs KV Prediction on held-out text (default: the embedded corpus's validation
    files): continuation CE and first-token accuracy, greedy next-line exact match, TTFT FLOPs, per-layer KV L1.
    `progress(done, total, what)` is called as the methods go through the batches and lines."""
    if prompt_len < 2 or cont_len < 1 or samples < 1 or lines < 0:
        raise UserError("prompt length must be >= 2, continuation >= 1, samples >= 1")
    if pair_and_tok is None:
        pair, tok, folder, _ = load_pair(name_or_path)
    else:
        (pair, tok), folder = pair_and_tok, Path(name_or_path)
    c = data.load_corpus(corpus)
    val = data.token_stream(tok, c, "val")
    rows = data.eval_windows(val, prompt_len + cont_len - 1, samples)
    if len(rows) == 0:
        raise UserError(f"validation text is shorter than {prompt_len + cont_len} tokens")
    line_samples = next_line_samples(tok, c.val, lines, prompt_len, seed) if lines else []
    total = len(METHODS) * (-(-len(rows) // 8) + len(line_samples))
    count = [0]

    def tick(what: str) -> None:
        count[0] += 1
        if progress is not None:
            progress(count[0], total, what)

    cont = continuation_metrics(pair, rows, prompt_len, tick=tick)
    em = next_line_exact_match(pair, tok, line_samples, tick=tick) if lines else {}
    return {
        "kvp": str(folder),
        "corpus": c.name,
        "samples": int(len(rows)),
        "lines": lines,
        "methods": {m: {**cont[m], **({"next_line_em": em[m]} if em else {})} for m in METHODS},
        "flops": flops_report(pair, prompt_len),
        "kv_error": kv_errors(pair, rows),
        "layer_map": pair.predictor.args.layer_map,
    }


def plot_kv_errors(result: dict, path: str) -> None:
    """Per-layer L1 error of predicted keys and values against depth (the paper's Figs 6–7, per layer)."""
    plt = pyplot()
    k, v = result["kv_error"]["k_l1"], result["kv_error"]["v_l1"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(k)), k, "o-", label="keys (after base k-norm, pre-RoPE)")
    ax.plot(range(len(v)), v, "s-", label="values")
    ax.set_xticks(range(len(k)))
    ax.set_xlabel("base layer")
    ax.set_ylabel("mean |predicted − true|")
    ax.set_title("KV Prediction error by depth")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
