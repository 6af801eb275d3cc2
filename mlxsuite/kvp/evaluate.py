"""KV Prediction evaluation, against the paper's own baselines, on held-out text.

Methods (the rows of the paper's Table 5):
- `base`: the base model alone;
- `baseline`: the paper's baseline of the auxiliary kind — for KVP-LP the layer-pruned model fine-tuned alone with
  plain cross-entropy on the same tokens and steps ("OE-LP", `kvp train --baseline`), for KVP-C the auxiliary's
  original weights ("OE");
- `aux-joint`: the auxiliary as trained jointly with the KV Prediction objective (not a baseline of the paper: it
  shows what the joint training did to the auxiliary on its own);
- `kvp`: KV Prediction (auxiliary + predictor fill the base's prompt cache, the base produces every token).

Metrics, each method continuing from its own prompt cache:
- continuation cross-entropy of the tokens after a prompt, and first-token accuracy;
- agreement with the base: greedy continuation of N tokens, token-level match rate and exact match against the
  base's own greedy continuation (what a user of a TTFT method cares about: does it answer like the base?);
- a generative task in the paper's style (greedy, stop at the end of the answer, exact match): completing the end
  of a line of held-out stdlib code from the code before it (the paper's TriviaQA and HumanEval cannot be
  downloaded here; completing a function's first body line from its signature and docstring, tried first, read 0 %
  for SmolLM2-135M itself, so it could not tell methods apart);
- TTFT FLOPs, and the per-layer error of the predicted keys and values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxsuite import store
from mlxsuite.data import corpus as data
from mlxsuite.generate import Fill, generate_step, prefill
from mlxsuite.kvp.recipe import BASELINE_DIR, flops_reduction, load_pair, prompt_fill
from mlxsuite.models import flops
from mlxsuite.models import kv_prediction as kvm
from mlxsuite.platform.errors import UserError
from mlxsuite.platform.plots import pyplot, save

Tick = Optional[Callable[[str], None]]


@dataclass
class Method:
    """One way to produce a model's continuation: the model that decodes and how its prompt cache is made."""

    name: str
    model: object
    prompt_cache: Callable[[], tuple[list, Optional[Fill]]]  # → (a new prompt cache, the fill that enters it)


def methods(pair: kvm.KVPredictionModel, baseline=None) -> list[Method]:
    """base, baseline (when given), aux-joint, kvp."""
    plain = lambda m: Method("", m, lambda: (m.make_cache(), None))  # noqa: E731
    out = [Method("base", pair.base, plain(pair.base).prompt_cache)]
    if baseline is not None:
        out.append(Method("baseline", baseline, plain(baseline).prompt_cache))
    out.append(Method("aux-joint", pair.auxiliary, plain(pair.auxiliary).prompt_cache))
    out.append(Method("kvp", pair.base, lambda: prompt_fill(pair)))
    return out


def load_baseline(folder: Path, config: dict):
    """The paper's baseline for this pair: the OE-LP model trained beside it (KVP-LP) or the auxiliary's original
    weights (KVP-C); None when it is not there (an LP pair trained without --baseline)."""
    aux = config.get("aux", {})
    if aux.get("kind") == "C":
        return store.load(aux["source"], "lm", dequantize=True).model
    if (Path(folder) / BASELINE_DIR / store.WEIGHTS_FILE).exists():
        return store.load(str(Path(folder) / BASELINE_DIR), "lm", dequantize=True).model
    return None


# ---- metrics ------------------------------------------------------------------------------------------------------


def continuation(ms: list[Method], rows: np.ndarray, prompt_len: int, batch_size: int = 8, tick: Tick = None) -> dict:
    """Mean CE of the `rows.shape[1] − prompt_len` tokens after the prompt, and first-token accuracy."""
    res = {m.name: {"ce": 0.0, "first_acc": 0.0} for m in ms}
    for i in range(0, len(rows), batch_size):
        batch = mx.array(rows[i : i + batch_size])
        prompt, cont = batch[:, :prompt_len], batch[:, prompt_len:]
        for m in ms:
            cache, fill = m.prompt_cache()
            logits = prefill(m.model, prompt, cache, fill=fill)[:, None]
            if cont.shape[1] > 1:
                logits = mx.concatenate([logits, m.model(cont[:, :-1], cache)], axis=1)
            ce = nn.losses.cross_entropy(logits, cont, reduction="none").mean(axis=1)
            acc = (mx.argmax(logits[:, 0], axis=-1) == cont[:, 0]).astype(mx.float32)
            mx.eval(ce, acc)
            res[m.name]["ce"] += ce.sum().item()
            res[m.name]["first_acc"] += acc.sum().item()
            if tick:
                tick(f"continuation, {m.name}")
    return {k: {s: v / max(len(rows), 1) for s, v in d.items()} for k, d in res.items()}


def greedy(m: Method, prompts: mx.array, n_tokens: int) -> np.ndarray:
    """m's greedy continuation (B, n_tokens) of prompts (B, T), through the one decode loop."""
    cache, fill = m.prompt_cache()
    steps = generate_step(m.model, prompts, n_tokens, cache=cache, fill=fill)
    return np.stack([np.array(t) for t in steps], axis=1)


def agreement(ms: list[Method], prompts: np.ndarray, n_tokens: int, batch_size: int = 8, tick: Tick = None) -> dict:
    """Per method: token-level match rate, exact-match rate and the mean number of leading tokens equal (before the
    first divergence) of its greedy continuation of N tokens against the base's own (the first method is the base:
    its rates are 1 and its prefix N by construction)."""
    match = {m.name: [] for m in ms}
    for i in range(0, len(prompts), batch_size):
        batch = mx.array(prompts[i : i + batch_size])
        ref = None
        for m in ms:
            out = greedy(m, batch, n_tokens)
            ref = out if ref is None else ref
            match[m.name].append(out == ref)
            if tick:
                tick(f"agreement, {m.name}")
    scores = {}
    for k, v in match.items():
        same = np.concatenate(v)
        scores[k] = {
            "token_match": float(same.mean()),
            "exact": float(same.all(axis=1).mean()),
            "prefix": float(np.cumprod(same, axis=1).sum(axis=1).mean()),
        }  # tokens before the first miss
    return scores


@dataclass
class CodeSample:
    prompt: str  # the code before the line, and the line up to a cut after "(", "=", "." or ","
    answer: str  # the rest of the line (stripped)


def code_samples(docs: list[str], n: int, seed: int = 0, context_lines: int = 40) -> list[CodeSample]:
    """The code task: complete the end of a line of held-out Python code, from the code before it (up to
    `context_lines` lines) and the line's start. The cut is after the first "(", "=", "." or "," that leaves 3–30
    characters, never in whitespace (BPE tokenizers join spaces to the next word: a prompt ending in a space would
    split a token the model never saw split). Indented lines of 16–80 characters, not comments or strings; drawn
    reproducibly, at most one per 10 lines of a file. SmolLM2-135M completes 20 % of them exactly (40 samples; the
    last such cut instead: 27.5 %)."""
    found = []
    for doc in docs:
        lines = doc.splitlines()
        for i in range(5, len(lines), 10):
            line = lines[i].rstrip()
            body = line.strip()
            if not line.startswith((" ", "\t")) or not 16 <= len(body) <= 80 or body[0] in "#'\"":
                continue
            indent = len(line) - len(body)
            cut = min(
                (k + 1 for k, ch in enumerate(line) if ch in "(=.," and k >= indent and 3 <= len(line) - k - 1 <= 30),
                default=0,
            )
            if not cut or not line[cut:].strip():
                continue
            context = "\n".join(lines[max(0, i - context_lines) : i])
            found.append(CodeSample(f"{context}\n{line[:cut]}", line[cut:].strip()))
    rng = np.random.default_rng(seed)
    return [found[i] for i in rng.permutation(len(found))[:n]]


def line_end(text: str) -> Optional[str]:
    """The generated rest of the line, stripped, once it is complete (a newline follows), else None."""
    return text.split("\n", 1)[0].strip() if "\n" in text else None


def code_task(ms: list[Method], tok, samples: list[CodeSample], max_tokens: int = 24, tick: Tick = None) -> dict:
    """Exact match of each method's greedy completion of the line (up to the newline) with the real one."""
    res = {}
    for m in ms:
        hits = 0
        for s in samples:
            ids = tok.encode(s.prompt)
            cache, fill = m.prompt_cache()
            head = tok.decode(ids)
            gen: list[int] = []
            for t in generate_step(m.model, mx.array(ids)[None], max_tokens, cache=cache, fill=fill):
                gen.append(int(t.item()))
                if gen[-1] == tok.eos_id or line_end(tok.decode(ids + gen)[len(head) :]) is not None:
                    break
            hits += line_end(tok.decode(ids + gen)[len(head) :] + "\n") == s.answer
            if tick:
                tick(f"code task, {m.name}")
        res[m.name] = hits / max(len(samples), 1)
    return res


def kv_errors(pair, rows: np.ndarray, batch_size: int = 8) -> dict:
    """Per base layer: mean |k_norm_B(K̂) − K| (pre-RoPE) and mean |V̂ − V| over all positions of the rows."""
    k_sum = np.zeros(pair.base.args.num_hidden_layers)
    v_sum = np.zeros_like(k_sum)
    for i in range(0, len(rows), batch_size):
        inputs = mx.array(rows[i : i + batch_size])
        _, _, pk, pv = pair(inputs)
        tk, tv = pair.base_targets(inputs)
        ks = mx.stack([mx.mean(mx.abs(a - b)) for a, b in zip(pk, tk)])
        vs = mx.stack([mx.mean(mx.abs(a - b)) for a, b in zip(pv, tv)])
        mx.eval(ks, vs)
        k_sum += np.array(ks) * len(inputs)
        v_sum += np.array(vs) * len(inputs)
    n = max(len(rows), 1)
    return {"k_l1": (k_sum / n).tolist(), "v_l1": (v_sum / n).tolist()}


def flops_report(pair, prompt_len: int) -> dict:
    b, a = pair.base.args, pair.auxiliary.args
    base_f, aux_f, kvp_f = (
        flops.prefill(b, prompt_len),
        flops.prefill(a, prompt_len),
        flops.kvp_prefill(pair, prompt_len),
    )
    return {
        "prompt_tokens": prompt_len,
        "params": {"base": b.n_params, "aux": a.n_params, "predictor": pair.predictor.n_params()},
        "param_ratio": flops_reduction(pair),
        "prefill_flops": {"base": base_f, "aux": aux_f, "kvp": kvp_f},
        "prefill_reduction": {"aux": base_f / aux_f, "kvp": base_f / kvp_f},
    }


# ---- the evaluation -----------------------------------------------------------------------------------------------


def evaluate_kvp(
    ref: str,
    corpus: Optional[str] = None,
    prompt_len: int = 64,
    cont_len: int = 32,
    samples: int = 32,
    agree_tokens: int = 16,
    code: int = 32,
    seed: int = 0,
    loaded=None,
    progress: Optional[Callable[[int, int, str], None]] = None,
) -> dict:
    """Every method on held-out text (default: the embedded corpus's validation files). `loaded`: (pair, tokenizer,
    baseline or None) instead of loading `ref`. `progress(done, total, what)` follows the work."""
    if prompt_len < 2 or cont_len < 1 or samples < 1 or agree_tokens < 0 or code < 0:
        raise UserError(
            "prompt length must be >= 2, continuation and samples >= 1, agreement tokens and code samples >= 0"
        )
    if loaded is None:
        pair, tok, folder, config = load_pair(ref)
        baseline = load_baseline(folder, config)
    else:
        (pair, tok, baseline), folder = loaded, Path(ref)
    context, longest = pair.base.args.max_position_embeddings, prompt_len + max(cont_len, agree_tokens)
    if longest > context:
        raise UserError(
            f"a prompt of {prompt_len} tokens and {longest - prompt_len} more exceed the base's context "
            f"({context} tokens)"
        )
    ms = methods(pair, baseline)
    c = data.load_corpus(corpus)
    rows = data.eval_windows(data.token_stream(tok, c, "val"), prompt_len + cont_len - 1, samples)
    if len(rows) == 0:
        raise UserError(f"validation text is shorter than {prompt_len + cont_len} tokens")
    tasks = code_samples(c.val, code, seed) if code else []
    batches = -(-len(rows) // 8)
    total = len(ms) * (batches * (2 if agree_tokens else 1) + len(tasks))
    count = [0]

    def tick(what: str) -> None:
        count[0] += 1
        if progress is not None:
            progress(count[0], total, what)

    result = {m: {} for m in (x.name for x in ms)}
    for name, scores in continuation(ms, rows, prompt_len, tick=tick).items():
        result[name].update(scores)
    if agree_tokens:
        for name, scores in agreement(ms, rows[:, :prompt_len], agree_tokens, tick=tick).items():
            result[name].update({f"agree_{k}": v for k, v in scores.items()})
    if tasks:
        for name, em in code_task(ms, tok, tasks, tick=tick).items():
            result[name]["code_em"] = em
    return {
        "kvp": str(folder),
        "corpus": c.name,
        "samples": int(len(rows)),
        "agree_tokens": agree_tokens,
        "code_samples": len(tasks),
        "methods": result,
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
    save(fig, path)
