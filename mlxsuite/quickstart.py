"""The quickstart: KV Prediction end to end on the embedded corpus, the KV Prediction paper's Table 5 in miniature.

Stages (each reported through `callback("stage", …)`; the trainer's and the measurements' events in between):

1. base: tokenizer + a small base LM (`train_lm`), store name `{name}-lm`;
2. kvp: an LP-0.50 KV Prediction pair for it (`train_kvp`: layer-pruned aux + predictor), store name `{name}-kvp`
   (`{name}-{model}-kvp` on a model of the user's: a folder holding another base's pair is refused, never replaced);
3. quality: base, the paper's baseline (OE-LP, trained beside the pair), the jointly trained auxiliary and KV
   Prediction on held-out text (`evaluate_kvp`): continuation loss, first-token accuracy, agreement with the
   base's greedy continuation (and the 1-shot code task with `code` > 0: on the toy model it reads 0 % for all);
4. ttft: time to first token of the three at 128/512/1024 tokens (`ttft.run`, modes base/aux/kvp, medians).

Finished work is reused when run again: a trained base or pair is loaded, not retrained; an interrupted training
resumes from its checkpoint; the quality and TTFT results are kept in the pair's folder (`quickstart.json`) with the
settings that made them and reused while those match. `fresh=True` redoes everything.

Budget on 2 shared CPU cores (load average ~2.5): tokenizer ~5 s, token streams ~20 s (cached on disk afterwards),
base ~1 s/step (300 steps: ~5 min), pair ~0.8 s/step at batch 8 (60 steps: ~1 min), quality ~15 s, TTFT ~5 s:
about 7 minutes, under 10.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from mlxsuite import store
from mlxsuite.bench import ttft
from mlxsuite.generate import default_prefill_step
from mlxsuite.kvp.evaluate import evaluate_kvp, load_baseline
from mlxsuite.kvp.recipe import BASELINE_DIR, KVPRunSpec, StoredPair, load_pair, train_kvp
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.train.lm import LMRunSpec, train_lm
from mlxsuite.train.trainer import TrainConfig, has_checkpoint

RESULTS_FILE = "quickstart.json"


@dataclass
class QuickstartConfig:
    name: str = "quickstart"  # store names: {name}-lm (the base) and {name}-kvp (the pair; {name}-{model}-kvp)
    model: Optional[str] = None  # a model of the user's as the base (any model reference) instead of training one
    preset: str = "tiny"  # d=128, 4 layers: LP-0.50 keeps 2
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 300  # base training steps (batch_size sequences each)
    kvp_steps: int = 60  # pair training steps (kvp_batch_size sequences each): a short fine-tune of the aux, as
    kvp_batch_size: int = 8  # in the paper, so that the aux does not simply get more training than the base
    kvp_lr: float = 2e-3
    keep: float = 0.5  # the LP fraction of the auxiliary
    baseline: bool = True  # train the paper's OE-LP baseline beside the pair (same batches and steps)
    train_embeddings: bool = True
    predictor_init: str = "default"  # the paper's; "identity" for a real model's short fine-tune (kvp train --help)
    corpus: Optional[str] = None  # None: the embedded stdlib corpus
    model_overrides: dict = field(default_factory=dict)
    # quality
    prompt_len: int = 64
    cont_len: int = 32
    samples: int = 64
    agree_tokens: int = 16
    code: int = 0  # 1-shot code-task samples: 0 for the toy model, on which it reads 0 % for every method
    # ttft
    lengths: tuple[int, ...] = (128, 512, 1024)
    reps: int = 3
    warmup: int = 1

    @property
    def base_name(self) -> str:
        return self.model or f"{self.name}-lm"

    @property
    def kvp_name(self) -> str:
        """{name}-kvp for the trained base; {name}-{model}-kvp on a model of the user's, so that the pairs of
        different bases never share a folder."""
        return f"{self.name}-{model_slug(self.model)}-kvp" if self.model else f"{self.name}-kvp"

    def quality_settings(self) -> dict:
        return {k: getattr(self, k) for k in ("corpus", "prompt_len", "cont_len", "samples", "agree_tokens", "code")}

    def ttft_settings(self) -> dict:
        return {"lengths": list(self.lengths), "reps": self.reps, "warmup": self.warmup}


def model_slug(ref: str) -> str:
    """A store-name part from a model reference: `smollm2`, `Qwen/Qwen2.5-0.5B@main` -> `qwen2.5-0.5b`,
    `~/x/SmolLM2-135M.Q4_1.gguf` -> `smollm2-135m.q4_1`."""
    name = Path(ref.split("@")[0].rstrip("/\\")).name
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return re.sub(r"[^a-z0-9._]+", "-", name.lower()).strip("-.") or "model"


def _check_own_pair(folder: Path, base_folder: Path) -> None:
    """Refuse to overwrite a folder that holds something other than this quickstart's pair: a pair (or an
    interrupted pair run) made for another base, or anything that is not a pair."""
    if not folder.exists():
        return
    recorded = None
    if (folder / store.CONFIG_FILE).is_file():
        config = store.read_config(folder)
        if config.get("model_type") == store.KVP_TYPE:
            recorded = config["base"]["path"]
    elif (folder / "run" / "spec.json").is_file():
        from mlxsuite.kvp.recipe import BASE_FILE

        started = folder / "run" / BASE_FILE
        recorded = json.loads(started.read_text())["path"] if started.is_file() else str(base_folder.resolve())
    if recorded is None:
        raise UserError(f"{folder} exists and is not a KV Prediction pair; give the quickstart another name")
    if Path(recorded).resolve() != base_folder.resolve():
        raise UserError(
            f"{folder} holds the KV Prediction pair of another base ({recorded}); give the quickstart another "
            "name, or remove that folder"
        )


def _stage(callback, index: int, name: str, title: str, reused: bool = False) -> None:
    callback("stage", {"index": index, "total": 4, "name": name, "title": title, "reused": reused})


def run_quickstart(
    config: Optional[QuickstartConfig] = None, fresh: bool = False, callback: Optional[Callable] = None
) -> dict:
    """Run (or reuse) the four stages; returns one JSON-ready document with the TTFT and the quality tables."""
    cfg = config or QuickstartConfig()
    callback = callback or (lambda event, info: None)
    if cfg.steps < 1 or cfg.kvp_steps < 1 or cfg.reps < 1 or not cfg.lengths:
        raise UserError("steps, KVP steps, repetitions and prompt lengths must be positive")
    t_start = time.perf_counter()
    stages: dict[str, dict] = {}

    t0 = time.perf_counter()
    base_folder, base_done = _base_stage(cfg, fresh, callback)
    stages["base"] = {"seconds": time.perf_counter() - t0, "reused": base_done}

    t0 = time.perf_counter()
    kvp_folder, pair_done = _kvp_stage(cfg, fresh, callback, base_folder, base_done)
    stages["kvp"] = {"seconds": time.perf_counter() - t0, "reused": pair_done}

    stored = load_pair(str(kvp_folder))
    saved = Saved(kvp_folder / RESULTS_FILE, keep=pair_done)

    t0 = time.perf_counter()
    quality_done = _quality_stage(cfg, callback, stored, saved)
    quality = _quality_table(saved.data["quality"]["result"])
    stages["quality"] = {"seconds": time.perf_counter() - t0, "reused": quality_done}

    t0 = time.perf_counter()
    ttft_done = _ttft_stage(cfg, callback, stored, saved)
    report = saved.data["ttft"]["report"]
    stages["ttft"] = {"seconds": time.perf_counter() - t0, "reused": ttft_done}

    return {
        **_models(cfg, base_folder, base_done, kvp_folder, pair_done, stored),
        "ttft": {
            "table": _ttft_table(report),
            "device": report["device"],
            "prefill_step": report["prefill_step"],
            "reps": report["reps"],
            "load_average": report["load_average"],
            "reused": ttft_done,
            "report": report,
        },
        "quality": {**quality, "reused": quality_done},
        "stages": stages,
        "wall_s": time.perf_counter() - t_start,
        "config": asdict(cfg),
    }


def _models(cfg: QuickstartConfig, base_folder: Path, base_done: bool, kvp_folder: Path, pair_done: bool, stored):
    """The document's "base" and "kvp" entries: what was trained (or reused) and its size."""
    pair, meta = stored.pair, stored.config
    return {
        "base": {
            "name": cfg.base_name,
            "folder": str(base_folder),
            "preset": None if cfg.model else cfg.preset,
            "params": pair.base.args.n_params,
            "layers": pair.base.args.num_hidden_layers,
            "reused": base_done,
        },
        "kvp": {
            "name": cfg.kvp_name,
            "folder": str(kvp_folder),
            "aux": meta["aux"],
            "aux_layers": pair.auxiliary.args.num_hidden_layers,
            "params": meta["params"],
            "param_ratio": pair.base.args.n_params / pair.auxiliary.args.n_params,
            "reused": pair_done,
        },
    }


class Saved:
    """The measured stages' results kept in the pair's folder (reused while their settings match)."""

    def __init__(self, path: Path, keep: bool):
        self.path = path
        self.data = json.loads(path.read_text()) if keep and path.exists() else {}

    def save(self) -> None:
        atomic.write_json(self.path, self.data)


def _base_stage(cfg: QuickstartConfig, fresh: bool, callback) -> tuple[Path, bool]:
    """1. tokenizer + base LM (or the given model): (its folder, whether it was reused)."""
    if cfg.model:
        base_folder, base_done = store.resolve(cfg.model), True
        _stage(callback, 1, "base", f"base: {cfg.model}", True)
    else:
        base_folder = store.output_path(cfg.base_name)
        base_done = (base_folder / store.WEIGHTS_FILE).exists() and not fresh
        _stage(
            callback, 1, "base", f"tokenizer + base LM ({cfg.preset}, V={cfg.vocab_size}, {cfg.steps} steps)", base_done
        )
    if not base_done:
        if base_folder.exists() and not (base_folder / "run" / "spec.json").is_file():
            raise UserError(f"{base_folder} exists and is not a quickstart's base; give the quickstart another name")
        spec = LMRunSpec(
            out=cfg.base_name,
            preset=cfg.preset,
            vocab_size=cfg.vocab_size,
            corpus=cfg.corpus,
            seq_len=cfg.seq_len,
            batch_size=cfg.batch_size,
            model_overrides=dict(cfg.model_overrides),
            train=TrainConfig(
                steps=cfg.steps,
                lr=3e-3,
                warmup=min(30, cfg.steps // 10),
                save_every=50,
                eval_every=cfg.steps,
                log_every=5,
            ),
        )
        resume = not fresh and has_checkpoint(base_folder / "run")
        train_lm(spec, resume=resume, force=True, callback=callback)
    return base_folder, base_done


def _kvp_stage(cfg: QuickstartConfig, fresh: bool, callback, base_folder: Path, base_done: bool) -> tuple[Path, bool]:
    """2. the KV Prediction pair (and the OE-LP baseline): (its folder, whether it was reused)."""
    kvp_folder = store.output_path(cfg.kvp_name)
    base_hash = store.weights_hash(base_folder)
    pair_done = False
    baseline_done = not cfg.baseline or (kvp_folder / BASELINE_DIR / store.WEIGHTS_FILE).exists()
    if not fresh and (kvp_folder / store.PREDICTOR_FILE).exists() and baseline_done:
        meta = store.read_config(kvp_folder)
        pair_done = meta["base"]["sha256"] == base_hash  # a retrained base needs a new pair
    _stage(
        callback,
        2,
        "kvp",
        f"KV Prediction pair (LP-{cfg.keep:.2f}, {cfg.kvp_steps} steps)"
        + (" and the OE-LP baseline" if cfg.baseline else ""),
        pair_done,
    )
    if not pair_done:
        _check_own_pair(kvp_folder, base_folder)
        spec = KVPRunSpec(
            out=cfg.kvp_name,
            base=cfg.base_name,
            aux=f"prune:{cfg.keep}",
            corpus=cfg.corpus,
            seq_len=cfg.seq_len,
            batch_size=cfg.kvp_batch_size,
            eval_windows=8,
            baseline=cfg.baseline,
            predictor_init=cfg.predictor_init,
            train_embeddings=cfg.train_embeddings,
            train=TrainConfig(
                steps=cfg.kvp_steps,
                lr=cfg.kvp_lr,
                warmup=min(10, cfg.kvp_steps // 10),
                save_every=20,
                eval_every=cfg.kvp_steps,
                log_every=5,
            ),
        )
        resume = not fresh and base_done and has_checkpoint(kvp_folder / "run")
        if resume:
            started = kvp_folder / "run" / "base.json"
            resume = started.exists() and json.loads(started.read_text())["sha256"] == base_hash
        train_kvp(spec, resume=resume, force=True, callback=callback)
    return kvp_folder, pair_done


def _quality_stage(cfg: QuickstartConfig, callback, stored: StoredPair, saved: Saved) -> bool:
    """3. quality: base, baseline, auxiliary, KV Prediction on held-out text. True when reused."""
    q = saved.data.get("quality")
    quality_done = q is not None and q.get("settings") == cfg.quality_settings()
    _stage(callback, 3, "quality", "quality: base, baseline, auxiliary, KV Prediction on held-out text", quality_done)
    if not quality_done:
        result = evaluate_kvp(
            str(stored.folder),
            cfg.corpus,
            prompt_len=cfg.prompt_len,
            cont_len=cfg.cont_len,
            samples=cfg.samples,
            agree_tokens=cfg.agree_tokens,
            code=cfg.code,
            loaded=(stored.pair, stored.tokenizer, load_baseline(stored.folder, stored.config)),
            progress=lambda done, total, what: callback(
                "measure", {"stage": "quality", "done": done, "total": total, "what": what}
            ),
        )
        saved.data["quality"] = {"settings": cfg.quality_settings(), "result": result}
        saved.save()
    return quality_done


def _ttft_stage(cfg: QuickstartConfig, callback, stored: StoredPair, saved: Saved) -> bool:
    """4. time to first token of base, auxiliary and KV Prediction, interleaved. True when reused."""
    t = saved.data.get("ttft")
    ttft_done = t is not None and t.get("settings") == cfg.ttft_settings()
    _stage(
        callback,
        4,
        "ttft",
        f"time to first token at {'/'.join(map(str, cfg.lengths))} tokens "
        f"({cfg.warmup} warm-up + {cfg.reps} runs, interleaved)",
        ttft_done,
    )
    if not ttft_done:
        setup = ttft.Setup(stored.pair.base, default_prefill_step(), kvp=stored.pair)
        report = ttft.run(
            setup,
            ["base", "aux", "kvp"],
            [(T, 1) for T in cfg.lengths],
            cfg.reps,
            cfg.warmup,
            progress=lambda done, total, what: callback(
                "measure", {"stage": "ttft", "done": done, "total": total, "what": what}
            ),
        )
        for row in report["results"]:  # the samples stay, the per-run memory detail is enough in the bench
            row.pop("tokenize_s", None)
        saved.data["ttft"] = {"settings": cfg.ttft_settings(), "report": report}
        saved.save()
    return ttft_done


def _ttft_table(report: dict) -> list[dict]:
    """One row per prompt length: median TTFT (s) per method, its reduction vs the base (base / method), FLOPs
    reduction vs the base."""
    rows: dict[int, dict] = {}
    for r in report["results"]:
        row = rows.setdefault(r["prompt_tokens"], {"prompt_tokens": r["prompt_tokens"]})
        row[r["mode"]] = {
            "median_s": r["ttft_s"]["median"],
            "ttft_reduction": r.get("ttft_reduction_vs_base"),
            "flops_reduction": r.get("flops_reduction_vs_base"),
        }
    return [rows[T] for T in sorted(rows)]


def _quality_table(result: dict) -> dict:
    names = {
        "ce": "continuation_ce",
        "first_acc": "first_token_acc",
        "agree_token_match": "agree_token_match",
        "agree_exact": "agree_exact",
        "code_em": "code_em",
    }
    return {
        "methods": {m: {names[k]: x for k, x in v.items() if k in names} for m, v in result["methods"].items()},
        "samples": result["samples"],
        "agree_tokens": result["agree_tokens"],
        "code_samples": result["code_samples"],
        "prompt_tokens": result["flops"]["prompt_tokens"],
        "flops_reduction": result["flops"]["prefill_reduction"],
        "kv_error": result["kv_error"],
    }
