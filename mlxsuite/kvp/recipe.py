"""KV Prediction recipe: build a (base, auxiliary, predictor) pair, train it with the shared trainer, and use it:
its prompt fill for the one prefill and decode loop (`mlxsuite.generate`). The model code is in
`mlxsuite.models.kv_prediction`; evaluation in `kvp.evaluate`; the folder format in `mlxsuite.store`
(config.json with model_type "kv_prediction": the base reference with the sha256 of its weights, aux kind, layer
map, λs; `aux/`; `predictor.safetensors`; `run/`). `aux/`, the predictor and config.json appear when training
ends; `resume=True` continues from `run/checkpoint`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxsuite import store
from mlxsuite.convert.hf import pruned_layers
from mlxsuite.data import corpus as data
from mlxsuite.models import kv_prediction as kvm
from mlxsuite.models import lm
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.train import trainer
from mlxsuite.train.evaluate import evaluate_lm, lm_loss

BASE_FILE = "base.json"  # in run/: the base a run started from (checked on resume)
BASELINE_DIR = "baseline"  # the OE-LP baseline trained beside a KVP-LP pair


# ---- building the pair --------------------------------------------------------------------------------------------


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
        raise UserError(f"vocabulary sizes differ: base {base.args.vocab_size}, auxiliary {aux.args.vocab_size}")


def parse_aux(aux: str) -> tuple[str, Optional[float]]:
    """'prune:0.5' → ('prune', 0.5); anything else is a stored model name or folder → ('model', None)."""
    if aux.startswith("prune:"):
        try:
            keep = float(aux.split(":", 1)[1])
        except ValueError:
            raise UserError(f"`aux` prune:X needs X in 0.75, 0.5, 0.25, got {aux!r}") from None
        if not any(abs(keep - k) < 1e-9 for k in (0.75, 0.5, 0.25)):
            raise UserError(f"`aux` prune:X needs X in 0.75, 0.5, 0.25 (the paper's LP models), got {keep}")
        return "prune", keep
    return "model", None


class BuiltPair(NamedTuple):
    """A new (untrained) KV Prediction pair and where it comes from."""

    pair: kvm.KVPredictionModel
    tokenizer: Any
    base_folder: Path
    info: dict  # the auxiliary: kind ("LP" or "C"), keep and retained layers or source, layer_map


def build_pair(base_name: str, aux_spec: str, seed: int = 0, predictor_init: str = "default") -> BuiltPair:
    """A new pair. The base is frozen; the aux is a layer-pruned copy of the base
    (`prune:X`, KVP-LP) or a stored smaller model sharing its tokenizer (KVP-C); the predictor has nn.Linear's
    default init (the paper's), or with `predictor_init="identity"` starts as the identity (needs equal KV widths,
    as an LP auxiliary has: each base layer then starts from the copy of the base layer its aux layer is)."""
    base, tok, base_folder = store.load_model(base_name, dequantize=True)
    store.require_own_forward(base, base_folder, "KV Prediction")
    if tok is None:
        raise UserError(f"{base_folder} has no tokenizer")
    kind, keep = parse_aux(aux_spec)
    n_base = base.args.num_hidden_layers
    if kind == "prune":
        retained = pruned_layers(n_base, keep)
        try:
            aux = kvm.layer_pruned(base, retained)
        except ValueError as e:  # a sliding-window pattern would move
            raise UserError(f"{base_folder}: {e}; train a smaller model of the family as the auxiliary") from None
        layer_map = kvm.lp_layer_map(keep, retained, n_base)
        info = {"kind": "LP", "keep": keep, "retained": retained}
    else:
        aux, _, aux_folder = store.load_model(aux_spec, dequantize=True)
        store.require_own_forward(aux, aux_folder, "KV Prediction")
        check_same_tokenizer(base_folder, base, aux_folder, aux)
        layer_map = kvm.contiguous_layer_map(n_base, aux.args.num_hidden_layers)
        info = {"kind": "C", "source": str(aux_folder.resolve())}
    mx.random.seed(seed)
    predictor = kvm.KVPredictor(kvm.PredictorArgs.for_models(base, aux, layer_map))
    if predictor_init == "identity":
        try:
            predictor.set_identity()
        except ValueError:
            raise UserError(
                "`predictor_init` identity needs equal auxiliary and base KV widths (an LP auxiliary)"
            ) from None
    pair = kvm.KVPredictionModel(base, aux, predictor)
    pair.base.freeze()
    pair.auxiliary.train()
    mx.eval(pair.parameters())
    info["layer_map"] = layer_map
    return BuiltPair(pair, tok, base_folder, info)


# ---- training -----------------------------------------------------------------------------------------------------


@dataclass
class KVPRunSpec(trainer.RunSpec):
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
    baseline: bool = False  # KVP-LP: also train the paper's OE-LP baseline (the pruned model alone, plain CE)
    predictor_init: str = "default"  # "default" (nn.Linear's, the paper's) or "identity" (a warm start for LP)
    train_embeddings: bool = True  # False: the auxiliary's (and baseline's) embedding and head stay as initialized
    train: trainer.TrainConfig = field(default_factory=lambda: trainer.TrainConfig(lr=1e-3))

    POSITIVE = ("seq_len", "batch_size", "eval_windows")

    def validate(self) -> None:
        super().validate()
        for name in ("lambda_kv", "lambda_aux", "z_loss"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise UserError(f"`{name}` must be >= 0, got {v}")
        kind, _ = parse_aux(self.aux)
        if self.predictor_init not in ("default", "identity"):
            raise UserError(f"`predictor_init` must be default or identity, got {self.predictor_init!r}")
        if self.baseline and kind != "prune":
            raise UserError(
                "`baseline` trains the OE-LP baseline of a layer-pruned auxiliary (`aux` prune:X); the "
                "baseline of KVP-C is the auxiliary's original weights, which `kvp eval` uses as they are"
            )


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


def _pair_config(spec: KVPRunSpec, pair, base_folder: Path, base_hash: str, info: dict, lambda_kv: float) -> dict:
    """The pair's config.json (without the predictor's args): the base by reference, the aux, the λs, sizes."""
    return {
        "base": {"name": spec.base, "path": str(base_folder.resolve()), "sha256": base_hash},
        "aux": {k: v for k, v in info.items() if k != "layer_map"},
        "layer_map": info["layer_map"],
        "lambda_kv": lambda_kv,
        "lambda_aux": spec.lambda_aux,
        "params": {
            "base": pair.base.args.n_params,
            "aux": pair.auxiliary.args.n_params,
            "predictor": pair.predictor.n_params(),
        },
    }


def train_kvp(
    spec: KVPRunSpec, resume: bool = False, force: bool = False, callback: Optional[Callable] = None, given=()
) -> dict:
    """Train (or resume) a KV Prediction pair (and its OE-LP baseline); returns the final metrics and the folder.
    `given`: the settings the user gave explicitly (a resume refuses changed ones)."""
    callback = callback or (lambda event, info: None)
    run = trainer.open_run(store.output_path(spec.out), spec, resume, force, given=given)
    spec, folder = run.spec, run.folder
    with run.preparing():
        pair, tok, base_folder, info = build_pair(spec.base, spec.aux, spec.seed, spec.predictor_init)
        base_hash = store.weights_hash(base_folder)
        started = run.dir / BASE_FILE
        if resume and started.exists() and json.loads(started.read_text())["sha256"] != base_hash:
            raise UserError(f"the base model {base_folder} changed since this run started")
        n_base = pair.base.args.num_hidden_layers
        lambda_kv = 1.0 / n_base if spec.lambda_kv is None else spec.lambda_kv
        meta = _pair_config(spec, pair, base_folder, base_hash, info, lambda_kv)
        if run.rank == 0:
            atomic.write_json(run.dir / BASE_FILE, meta["base"])

        corpus = data.load_corpus(spec.corpus)
        train_tokens = data.token_stream(tok, corpus, "train")
        val_tokens = data.token_stream(tok, corpus, "val")
        windows = data.eval_windows(val_tokens, spec.seq_len, spec.eval_windows)
        if spec.seq_len > pair.base.args.max_position_embeddings:
            raise UserError(
                f"`seq_len` {spec.seq_len} is longer than the base's context "
                f"({pair.base.args.max_position_embeddings} tokens)"
            )
        callback(
            "model",
            {
                "kind": info["kind"],
                "base_layers": n_base,
                "predictor_params": pair.predictor.n_params(),
                "aux_layers": pair.auxiliary.args.num_hidden_layers,
                "lambda_kv": round(lambda_kv, 6),
            },
        )
        batches = data.Batches(train_tokens, spec.seq_len, spec.batch_size, spec.seed, run.rank, run.size)
        _set_trainable(pair.auxiliary, spec)
    if resume and (folder / store.CONFIG_FILE).exists():  # the pair finished; what may be left is the baseline
        metrics = store.read_config(folder)["mlxsuite"]["final"]
    else:
        metrics = trainer.train(
            pair,
            kvp_loss(lambda_kv, spec.lambda_aux, spec.z_loss),
            batches,
            spec.train,
            run.dir,
            evaluate=lambda m: eval_pair(m, windows),
            callback=callback,
            resume=resume,
            tokens_per_row=spec.seq_len,
            group=run.group,
        )
        if run.rank == 0:
            store.save_pair(folder, pair, tok, {**meta, "mlxsuite": {"format": 1, "final": metrics}})
    result = {**metrics, "folder": str(folder)}
    if spec.baseline:
        baseline = kvm.layer_pruned(pair.base, info["retained"])
        _set_trainable(baseline, spec)
        result["baseline"] = _train_baseline(baseline, run, batches, windows, tok, callback)
    return result


def _set_trainable(aux: lm.Model, spec: KVPRunSpec) -> None:
    aux.train()
    aux.unfreeze()
    if not spec.train_embeddings:
        aux.model.embed_tokens.freeze()
        if "lm_head" in aux:
            aux.lm_head.freeze()


def _train_baseline(model: lm.Model, run: trainer.Run, batches, windows, tok, callback) -> dict:
    """The paper's OE-LP baseline: the same layer-pruned model trained alone with plain cross-entropy, on the same
    batches, steps and schedule as the pair; kept in `BASELINE_DIR` (resumable from its own run)."""
    folder = run.folder / BASELINE_DIR
    if (folder / store.WEIGHTS_FILE).exists():
        return store.read_config(folder)["mlxsuite"]["final"]
    callback("baseline", {"what": "OE-LP: the pruned model fine-tuned alone, same batches and steps"})
    metrics = trainer.train(
        model,
        lm_loss,
        batches,
        run.spec.train,
        folder / "run",
        evaluate=lambda m: {"ce": evaluate_lm(m, windows)["ce"]},
        callback=callback,
        resume=trainer.has_checkpoint(folder / "run"),
        tokens_per_row=run.spec.seq_len,
        group=run.group,
    )
    if run.rank == 0:
        store.save_into(folder, model, tok, {"kvp_baseline": "OE-LP", "final": metrics})
    return metrics


# ---- loading and inference ----------------------------------------------------------------------------------------


class StoredPair(NamedTuple):
    """A trained KV Prediction pair as loaded from its folder."""

    pair: kvm.KVPredictionModel
    tokenizer: Any
    folder: Path
    config: dict  # its config.json: the base reference, aux, layer map, λs


def load_pair(ref: str, expect_base: Optional[str] = None) -> StoredPair:
    """A KV Prediction folder for inference (`store.load`'s rule: a quantized base or auxiliary is dequantized on
    the CPU; it refuses a base whose weights changed since training); with `expect_base` (the base a command
    names beside the pair) also a pair trained for another base."""
    folders = [path for path in (Path(ref).expanduser(), store.models_dir() / ref) if path.is_dir()]
    if not folders:
        raise UserError(f"KVP folder not found: {ref} (not a folder, and not in the store {store.models_dir()})")
    if not (folders[0] / store.CONFIG_FILE).is_file():
        if (folders[0] / "run").is_dir():
            raise UserError(store.incomplete_message(folders[0]))
        raise UserError(f"{folders[0]} is not a KV Prediction pair (no config.json)")
    loaded = store.load(ref, store.KVP_TYPE, dequantize=True)
    base = loaded.config["base"]
    if expect_base is not None:
        folder = store.resolve(expect_base).resolve()
        same = folder == Path(base["path"]).resolve()  # then `store.load` has just checked its hash
        if not same and store.weights_hash(folder) != base["sha256"]:
            raise UserError(f"{loaded.folder} was trained for the base {base['name']}, not {expect_base}")
    return StoredPair(loaded.model, loaded.tokenizer, loaded.folder, loaded.config)


def prompt_fill(pair: kvm.KVPredictionModel) -> tuple[list, Callable]:
    """KV Prediction's plug-in for the one prefill (`generate.prefill`, `generate.generate_tokens`): a new base
    prompt cache and the fill that writes predicted KV into it, chunk by chunk (the aux keeps its own cache; the
    predictor's maps stacked once per prompt run as one batched GEMM per chunk)."""
    base_cache, aux_cache = pair.base.make_cache(), pair.auxiliary.make_cache()
    stacked = pair.predictor.stacked()

    def fill(chunk: mx.array) -> list:
        return pair.fill(chunk, aux_cache, base_cache, stacked)

    fill.caches = aux_cache  # the prefill reserves the prompt's room in the auxiliary's cache too
    return base_cache, fill


def flops_reduction(pair: kvm.KVPredictionModel) -> float:
    """The paper's FLOPs reduction: total parameters (with the tied embedding) base / aux."""
    return pair.base.args.n_params / pair.auxiliary.args.n_params
