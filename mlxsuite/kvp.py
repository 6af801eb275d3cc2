"""KV Prediction recipe: build a (base, auxiliary, predictor) pair, train it with the shared trainer, store it,
load it, generate with it and evaluate it. The model code is in `mlxsuite.models.kv_prediction`.

A KVP folder (in the store, via `store.output_path`):
    kvp.json                 base reference (name, resolved path, sha256 of its weights), aux kind, layer map, λs
    aux/                     the trained auxiliary as a normal model folder (loadable by `store.load_model`)
    predictor.safetensors    the predictor weights; predictor.json its `PredictorArgs`
    run/                     spec.json, trainer checkpoint, metrics.jsonl
`aux/` and the predictor appear when training ends; `resume=True` continues from `run/checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import data, store, trainer
from .generate import decode_stream, generate_tokens, prefill, sample
from .errors import UserError
from .plots import pyplot
from .models import kv_prediction as kvm
from .models import lm

KVP_FILE = "kvp.json"
PREDICTOR_FILE = "predictor.safetensors"
PREDICTOR_CONFIG = "predictor.json"
AUX_DIR = "aux"


# ---- building the pair --------------------------------------------------------------------------------------------


def weights_hash(folder: Path) -> str:
    """sha256 over the folder's model*.safetensors files (in name order)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("model*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _tokenizer_bytes(folder: Path) -> bytes:
    for name in ("tokenizer.model", "tokenizer.json"):
        if (Path(folder) / name).is_file():
            return (Path(folder) / name).read_bytes()
    return b""


def check_same_tokenizer(base_folder: Path, base: lm.Model, aux_folder: Path, aux: lm.Model) -> None:
    """KVP-C needs the auxiliary to share the base's tokenizer: same tokenizer file bytes and vocabulary size."""
    tb, ta = _tokenizer_bytes(base_folder), _tokenizer_bytes(aux_folder)
    if not tb or not ta:
        raise UserError(f"{base_folder if not tb else aux_folder} has no tokenizer: cannot check the pair shares one")
    if tb != ta:
        raise UserError(f"{aux_folder} does not share the tokenizer of {base_folder} (tokenizer files differ)")
    if base.args.vocab_size != aux.args.vocab_size:
        raise UserError(
            f"vocabulary sizes differ: base {base.args.vocab_size}, auxiliary {aux.args.vocab_size}"
        )


def parse_aux(aux: str) -> tuple[str, Optional[float]]:
    """'prune:0.5' → ('prune', 0.5); anything else is a stored model name or folder → ('model', None)."""
    if aux.startswith("prune:"):
        try:
            keep = float(aux.split(":", 1)[1])
        except ValueError:
            raise UserError(f"--aux prune:X needs X in 0.75, 0.5, 0.25, got {aux!r}") from None
        if not any(abs(keep - k) < 1e-9 for k in (0.75, 0.5, 0.25)):
            raise UserError(f"--aux prune:X needs X in 0.75, 0.5, 0.25 (the paper's LP models), got {keep}")
        return "prune", keep
    return "model", None


def build_pair(base_name: str, aux_spec: str, seed: int = 0):
    """(pair, tokenizer, base_folder, info). The base is frozen; the aux is a layer-pruned copy of the base
    (`prune:X`, KVP-LP) or a stored smaller model sharing its tokenizer (KVP-C); the predictor has default init."""
    from .convert import pruned_layers

    base, tok, base_folder = store.load_model(base_name)
    if tok is None:
        raise UserError(f"{base_folder} has no tokenizer")
    kind, keep = parse_aux(aux_spec)
    n_base = base.args.num_hidden_layers
    if kind == "prune":
        retained = pruned_layers(n_base, keep)
        aux = kvm.layer_pruned(base, retained)
        layer_map = kvm.lp_layer_map(keep, retained, n_base)
        info = {"kind": "LP", "keep": keep, "retained": retained}
    else:
        aux, _, aux_folder = store.load_model(aux_spec)
        check_same_tokenizer(base_folder, base, aux_folder, aux)
        layer_map = kvm.contiguous_layer_map(n_base, aux.args.num_hidden_layers)
        info = {"kind": "C", "source": str(aux_folder.resolve())}
    mx.random.seed(seed)
    predictor = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, layer_map))
    pair = kvm.KVPredictionModel(base, aux, predictor)
    pair.base.freeze()
    pair.auxiliary.train()
    mx.eval(pair.parameters())
    info["layer_map"] = layer_map
    return pair, tok, base_folder, info


# ---- training -----------------------------------------------------------------------------------------------------


@dataclass
class KVPRunSpec:
    out: str
    base: str
    aux: str = "prune:0.5"  # prune:0.75|0.5|0.25 (KVP-LP) or a stored model (KVP-C)
    lambda_kv: Optional[float] = None  # λ_C; None = 1/n_base (the paper's choice); 1 = released configs; 0 = ablation
    lambda_aux: float = 1.0  # λ_A (paper and configs: 1)
    z_loss: float = 0.0  # the configs use 1e-4 on both logits; off by default here
    corpus: Optional[str] = None
    seq_len: int = 128
    batch_size: int = 16
    seed: int = 0
    eval_windows: int = 16
    train: trainer.TrainConfig = field(default_factory=lambda: trainer.TrainConfig(lr=1e-3))

    @classmethod
    def from_dict(cls, d: dict) -> "KVPRunSpec":
        d = dict(d)
        d["train"] = trainer.TrainConfig.from_dict(d.get("train", {}))
        return cls(**d)

    def validate(self) -> None:
        for name in ("seq_len", "batch_size", "eval_windows"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        for name in ("lambda_kv", "lambda_aux", "z_loss"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise UserError(f"{name.replace('_', '-')} must be >= 0, got {v}")
        parse_aux(self.aux)
        self.train.validate()


def _z(logits: mx.array) -> mx.array:
    return mx.mean(mx.logsumexp(logits, axis=-1) ** 2)


def kvp_loss(lambda_kv: float, lambda_aux: float = 1.0, z_loss: float = 0.0) -> Callable:
    """loss(pair, batch (B, T+1)) = CE(base logits with predicted KV) + λ_A·CE(aux logits)
    + λ_C·Σ_layers [mean|k_norm_B(K̂_i) − K_i| + mean|V̂_i − V_i|] (+ z-loss·mean logsumexp² on both logits).
    The layer *sum* is what the code feeds the total (`k_loss/total`); λ_C = 1/n_B makes it the paper's average."""

    def loss(pair: kvm.KVPredictionModel, batch: mx.array):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        base_logits, aux_logits, pk, pv = pair(inputs)
        base_ce = nn.losses.cross_entropy(base_logits, targets, reduction="mean")
        aux_ce = nn.losses.cross_entropy(aux_logits, targets, reduction="mean")
        total = base_ce + lambda_aux * aux_ce
        k_l1 = v_l1 = mx.array(0.0)
        if lambda_kv > 0:
            tk, tv = pair.base_targets(inputs)
            k_l1 = sum(mx.mean(mx.abs(a - b)) for a, b in zip(pk, tk))
            v_l1 = sum(mx.mean(mx.abs(a - b)) for a, b in zip(pv, tv))
            total = total + lambda_kv * (k_l1 + v_l1)
        if z_loss > 0:
            total = total + z_loss * (_z(base_logits) + _z(aux_logits))
        return total, {"base_ce": base_ce, "aux_ce": aux_ce, "k_l1_sum": k_l1, "v_l1_sum": v_l1}

    return loss


def eval_pair(pair: kvm.KVPredictionModel, windows: np.ndarray, batch_size: int = 8) -> dict:
    """Mean CE of base-with-predicted-KV (all positions) and of the aux, and the KV L1 averaged over layers (the
    training log reports the layer sums, k_l1_sum and v_l1_sum, which the loss weights by λ_C), over windows."""
    sums = {"kvp_ce": 0.0, "aux_ce": 0.0, "k_l1": 0.0, "v_l1": 0.0}
    n = 0
    for i in range(0, len(windows), batch_size):
        batch = mx.array(windows[i : i + batch_size])
        inputs, targets = batch[:, :-1], batch[:, 1:]
        bl, al, pk, pv = pair(inputs)
        tk, tv = pair.base_targets(inputs)
        parts = [
            nn.losses.cross_entropy(bl, targets, reduction="mean"),
            nn.losses.cross_entropy(al, targets, reduction="mean"),
            sum(mx.mean(mx.abs(a - b)) for a, b in zip(pk, tk)) / len(pk),
            sum(mx.mean(mx.abs(a - b)) for a, b in zip(pv, tv)) / len(pv),
        ]
        mx.eval(parts)
        w = len(batch)
        for k, p in zip(sums, parts):
            sums[k] += p.item() * w
        n += w
    return {k: v / max(n, 1) for k, v in sums.items()}


def train_kvp(spec: KVPRunSpec, resume: bool = False, force: bool = False, callback: Optional[Callable] = None) -> dict:
    """Train (or resume) a KV Prediction pair; returns the final metrics and the folder."""
    callback = callback or (lambda event, info: None)
    group = mx.distributed.init()
    rank = group.rank()
    folder = store.output_path(spec.out)
    run_dir = folder / "run"
    spec = trainer.open_run(folder, spec, resume, force, group)

    pair, tok, base_folder, info = build_pair(spec.base, spec.aux, spec.seed)
    base_hash = weights_hash(base_folder)
    if resume:
        saved = json.loads((folder / KVP_FILE).read_text())
        if saved["base"]["sha256"] != base_hash:
            raise UserError(f"the base model {base_folder} changed since this run started")
    n_base = pair.base.args.num_hidden_layers
    lambda_kv = 1.0 / n_base if spec.lambda_kv is None else spec.lambda_kv
    meta = {
        "format": 1,
        "base": {"name": spec.base, "path": str(base_folder.resolve()), "sha256": base_hash},
        "aux": {k: v for k, v in info.items() if k != "layer_map"},
        "layer_map": info["layer_map"],
        "lambda_kv": lambda_kv,
        "lambda_aux": spec.lambda_aux,
        "params": {
            "base": pair.base.args.n_params, "aux": pair.auxiliary.args.n_params,
            "predictor": pair.predictor.n_params(),
        },
    }
    if rank == 0:
        store.write_json(folder / KVP_FILE, meta)

    corpus = data.load_corpus(spec.corpus)
    train_tokens = data.token_stream(tok, corpus, "train")
    val_tokens = data.token_stream(tok, corpus, "val")
    windows = data.eval_windows(val_tokens, spec.seq_len, spec.eval_windows)
    callback("model", {"kind": info["kind"], "base_layers": n_base, "aux_layers": pair.auxiliary.args.num_hidden_layers,
                       "predictor_params": pair.predictor.n_params(), "lambda_kv": round(lambda_kv, 6)})
    batches = data.Batches(train_tokens, spec.seq_len, spec.batch_size, spec.seed, rank, group.size())
    metrics = trainer.train(
        pair,
        kvp_loss(lambda_kv, spec.lambda_aux, spec.z_loss),
        batches,
        spec.train,
        run_dir,
        evaluate=lambda m: eval_pair(m, windows),
        callback=callback,
        resume=resume,
        tokens_per_row=spec.seq_len,
        group=group,
    )
    if rank == 0:
        save_pair(folder, pair, tok, meta, metrics)
    return {**metrics, "folder": str(folder)}


def save_pair(folder: Path, pair: kvm.KVPredictionModel, tok, meta: dict, metrics: Optional[dict] = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store.save_model(folder / AUX_DIR, pair.auxiliary, tok, extra={"kvp_aux": meta["aux"]}, force=True)
    tmp = folder / f".{PREDICTOR_FILE}.tmp.safetensors"
    mx.save_safetensors(str(tmp), dict(tree_flatten(pair.predictor.parameters())), metadata={"format": "mlx"})
    tmp.replace(folder / PREDICTOR_FILE)
    store.write_json(folder / PREDICTOR_CONFIG, pair.predictor.args.to_dict())
    store.write_json(folder / KVP_FILE, {**meta, **({"final": metrics} if metrics is not None else {})})


# ---- loading and inference ----------------------------------------------------------------------------------------


def resolve_kvp(name_or_path: str) -> Path:
    for path in (Path(name_or_path).expanduser(), store.models_dir() / name_or_path):
        if (path / KVP_FILE).is_file():
            if not (path / PREDICTOR_FILE).is_file():
                raise UserError(f"{path} has no trained predictor yet (training unfinished? resume it)")
            return path
    raise UserError(f"KVP folder not found: {name_or_path} (needs {KVP_FILE}; not a folder or store name)")


def load_pair(name_or_path: str, check_base: bool = True, expect_base: Optional[str] = None):
    """(pair, tokenizer, folder, meta) from a KVP folder; refuses a base whose weights changed since training, and
    (with `expect_base`, e.g. `mlxsuite generate BASE --kvp DIR`) a pair trained for another base."""
    folder = resolve_kvp(name_or_path)
    meta = json.loads((folder / KVP_FILE).read_text())
    ref = meta["base"]
    base_loc = ref["path"] if Path(ref["path"]).is_dir() else ref["name"]
    base, tok, base_folder = store.load_model(base_loc)
    base_hash = weights_hash(base_folder) if check_base or expect_base is not None else None
    if expect_base is not None:
        expected = store.resolve(expect_base)
        same = expected.resolve() == base_folder.resolve()
        if (base_hash if same else weights_hash(expected)) != ref["sha256"]:
            raise UserError(f"{folder} was trained for the base {ref['name']}, not {expect_base}")
    if check_base and base_hash != ref["sha256"]:
        raise UserError(f"the base model {base_folder} changed since {folder} was trained (weights hash differs)")
    aux, _, _ = store.load_model(str(folder / AUX_DIR))
    pargs = kvm.PredictorArgs.from_dict(json.loads((folder / PREDICTOR_CONFIG).read_text()))
    predictor = kvm.KVPredictor(pargs)
    predictor.load_weights(str(folder / PREDICTOR_FILE), strict=True)
    pair = kvm.KVPredictionModel(base, aux, predictor)
    pair.freeze()
    pair.eval()
    mx.eval(pair.parameters())
    return pair, tok, folder, meta


def kvp_first_token(pair: kvm.KVPredictionModel, tokens, temperature: float = 0.0, top_k: int = 0,
                    prefill_step: Optional[int] = None):
    """TTFT entry point: prompt ids (B, T) or (T,) → (first token ids (B,), the filled base caches at offset T).
    The aux runs in chunks of `prefill_step` (default: `generate.default_prefill_step()`, as the base's prefill) on
    the fused CPU path where it applies. Lazy: call mx.eval on the result to time it. FLOPs: `kvp_prefill_flops`."""
    tokens = mx.array(tokens)
    logits, cache = pair.prefill(tokens if tokens.ndim == 2 else tokens[None], prefill_step)
    return sample(logits, temperature, top_k), cache


def aux_first_token(pair: kvm.KVPredictionModel, tokens, temperature: float = 0.0, top_k: int = 0,
                    prefill_step: Optional[int] = None):
    """The auxiliary-alone TTFT baseline, prefilled exactly as the base is (`generate.prefill`: chunked, fused CPU
    path): (first token ids (B,), aux caches). FLOPs: `ttft.prefill_flops(aux.args, T, B)`."""
    tokens = mx.array(tokens)
    tokens = tokens if tokens.ndim == 2 else tokens[None]
    cache = pair.auxiliary.make_cache()
    return sample(prefill(pair.auxiliary, tokens, cache, prefill_step), temperature, top_k), cache


def kvp_generate_tokens(pair, prompt_ids, max_tokens: int, temperature: float = 0.0, top_k: int = 0):
    """Yield token ids: the first from the base over the predicted cache, then base-only decoding."""
    prompt = mx.array(prompt_ids)
    logits, cache = pair.prefill(prompt[None])
    yield from generate_tokens(pair.base, prompt, max_tokens, temperature, top_k, cache=cache, first_logits=logits)


def kvp_generate_text(
    kvp, tokenizer=None, prompt: str = "", max_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
    on_token: Optional[Callable[[str], None]] = None, base: Optional[str] = None,
) -> str:
    """Like `generate.generate_text`, with KV Prediction at prefill. `kvp` is a KVP folder/name (then `base`, if
    given, must be the pair's base) or a loaded pair (then `tokenizer` is required)."""
    if isinstance(kvp, (str, Path)):
        kvp, tokenizer, _, _ = load_pair(str(kvp), expect_base=base)
    ids = tokenizer.encode(prompt) or [tokenizer.bos_id]
    return decode_stream(tokenizer, kvp_generate_tokens(kvp, ids, max_tokens, temperature, top_k), on_token)


# ---- FLOPs --------------------------------------------------------------------------------------------------------


def forward_flops(args: lm.ModelArgs, n_tokens: int, offset: int = 0, logits_tokens: int = 1) -> int:
    """Matmul FLOPs (2 per multiply-add) of running n_tokens positions after `offset` cached ones: the linear
    layers, causal attention scores and weighted sum (Q·K and P·V over the keys each query sees), and the output
    head for `logits_tokens` positions (prefill needs only the last)."""
    d, hd = args.hidden_size, args.head_dim
    q, kv = args.num_attention_heads * hd, args.num_key_value_heads * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * args.intermediate_size
    linear = 2 * n_tokens * args.num_hidden_layers * per_layer
    keys_seen = n_tokens * offset + n_tokens * (n_tokens + 1) // 2
    attn = 2 * 2 * args.num_hidden_layers * q * keys_seen
    return linear + attn + 2 * logits_tokens * d * args.vocab_size


def kvp_prefill_flops(pair: kvm.KVPredictionModel, n_tokens: int, batch: int = 1) -> int:
    """TTFT FLOPs of KV Prediction on `batch` prompts of n_tokens: aux on N−1 tokens (no logits), predictor on N−1,
    base on 1 token against N−1 cached positions (with its head). Same counting as `ttft.prefill_flops` (nominal:
    every layer on every token; MLX's lazy evaluation skips work whose result is unused, such as the last layer's
    attention and MLP on cache-only chunks, in all modes alike)."""
    m = max(n_tokens - 1, 0)
    aux = forward_flops(pair.auxiliary.args, m, 0, logits_tokens=0) if m else 0
    return batch * (aux + pair.predictor.flops(m) + forward_flops(pair.base.args, 1, m, logits_tokens=1))


def flops_reduction(pair: kvm.KVPredictionModel) -> float:
    """The paper's FLOPs reduction: total parameters (with the tied embedding) base / aux."""
    return pair.base.args.n_params / pair.auxiliary.args.n_params


# ---- evaluation ---------------------------------------------------------------------------------------------------

METHODS = ("base", "aux", "kvp")


def _prompt_step(pair: kvm.KVPredictionModel, method: str, prompt: mx.array):
    """(first-token logits (B, V), cache, the model that continues) for one method."""
    if method == "kvp":
        logits, cache = pair.prefill(prompt)
        return logits, cache, pair.base
    model = pair.base if method == "base" else pair.auxiliary
    cache = model.make_cache()
    return model(prompt, cache)[:, -1], cache, model


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
    base_f = forward_flops(b, prompt_len)
    aux_f = forward_flops(a, prompt_len)
    kvp_f = kvp_prefill_flops(pair, prompt_len)
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
        pair, tok, folder, meta = load_pair(name_or_path)
    else:
        (pair, tok), folder, meta = pair_and_tok, Path(name_or_path), {}
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
