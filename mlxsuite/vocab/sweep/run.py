"""Running the sweep: one shared tokenizer per V, then every planned run through `train_lm` (the one run scaffold),
skipping finished runs and resuming a run from its checkpoint; the analysis is redone at the end."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from mlxsuite import store
from mlxsuite.data.corpus import load_corpus
from mlxsuite.models.lm import PRESETS, preset_args
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.train.lm import LMRunSpec, eval_model, train_lm
from mlxsuite.train.trainer import TrainConfig, has_checkpoint
from mlxsuite.vocab.sweep.analysis import analyze
from mlxsuite.vocab.sweep.plan import RunPlan, SweepGrid, SweepSettings, estimate_seconds, plan_runs
from mlxsuite.vocab.sweep.tokenizers import train_tokenizers

SWEEP_FILE = "sweep.json"
FORMAT = 2  # 2: tokenizers without byte fallback (V from 128)


def _tokenizer_path(folder: Path, vocab: int) -> Path:
    return folder / "tokenizers" / f"v{vocab}.model"


def _run_folder(folder: Path, plan: RunPlan) -> Path:
    return folder / "runs" / plan.name


def finished_metrics(run_folder: Path) -> Optional[dict]:
    """Final metrics of a finished run (weights written and a final evaluation logged), else None."""
    if not (run_folder / store.WEIGHTS_FILE).exists():
        return None
    try:
        final = json.loads((run_folder / "config.json").read_text())["mlxsuite"].get("final")
    except (OSError, ValueError, KeyError):
        final = None
    if final and "val_lu" in final:
        return final
    return None


def _load_doc(folder: Path) -> Optional[dict]:
    path = folder / SWEEP_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON: remove it or pass `force` to start over") from None


def _open_doc(folder: Path, settings: SweepSettings, force: bool) -> Optional[dict]:
    """The sweep already in `folder` (None: a new one), refused when its format or settings differ; with `force`
    the folder is emptied first (only if it holds a sweep)."""
    doc = None if force else _load_doc(folder)
    if force and folder.exists():
        if not (folder / SWEEP_FILE).exists() and any(folder.iterdir()):
            raise UserError(f"{folder} is not a sweep folder (no {SWEEP_FILE}): refusing to delete it")
        shutil.rmtree(folder)
    if doc is not None and doc.get("format") != FORMAT:
        raise UserError(
            f"{folder} holds a sweep of format {doc.get('format')} (this mlxsuite writes {FORMAT}: "
            "tokenizers without byte fallback): use another `out` or pass `force`"
        )
    if doc is not None and doc.get("settings") != asdict(settings):
        old = doc.get("settings", {})
        diff = ", ".join(f"{k}: {old.get(k)!r} → {v!r}" for k, v in asdict(settings).items() if old.get(k) != v)
        raise UserError(f"{folder} holds a sweep with other settings ({diff}): use another `out` or pass `force`")
    if doc is None and folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} exists and is not a sweep: use another `out` or pass `force`")
    return doc


def _run_one(folder: Path, doc: dict, plans: list, i: int, settings: SweepSettings, callback) -> None:
    """Train run `i` of the plan (or take its finished metrics) and record it in the sweep's document."""
    plan = plans[i]
    run_folder = _run_folder(folder, plan)
    metrics = finished_metrics(run_folder)
    skipped = metrics is not None
    seconds = doc["runs"].get(plan.name, {}).get("seconds")
    windows = settings.eval_windows(doc["tokenizers"][str(plan.vocab)]["tokens_per_char"])
    if not skipped:
        start = time.perf_counter()
        metrics = _train_one(
            plan, run_folder, _tokenizer_path(folder, plan.vocab), settings, windows, i, len(plans), callback
        )
        seconds = time.perf_counter() - start
    doc["runs"][plan.name] = {**asdict(plan), **_pick(metrics), "eval_windows": windows, "seconds": seconds}
    _save(folder, doc)
    callback(
        "run_end",
        {
            "index": i,
            "total": len(plans),
            "run": plan.name,
            "metrics": _pick(metrics),
            "skipped": skipped,
            "seconds": seconds,
        },
    )


def run_sweep(
    out: str,
    grid: SweepGrid,
    settings: SweepSettings,
    force: bool = False,
    callback: Optional[Callable[[str, dict], None]] = None,
    free_exponents: bool = False,
) -> dict:
    """Run (or continue) the sweep in `store.output_path(out)`; returns the document also saved as sweep.json.

    Events: "plan" {runs, done, folder, estimate_s}; "shared_tokenizer" {vocab, tokens_per_char, trained, seconds};
    "run_start" {index, total, run, resume, steps}; every trainer event of the run (with the run's name under "run");
    "run_end" {index, total, run, metrics, skipped, seconds}; "analysis" {…}.
    """
    callback = callback or (lambda event, info: None)
    folder = store.output_path(out)
    if settings.corpus not in (None, "", "stdlib"):
        settings.corpus = str(Path(settings.corpus).expanduser().resolve())
    else:
        settings.corpus = None
    plans = plan_runs(grid, settings)

    doc = _open_doc(folder, settings, force)
    corpus = load_corpus(settings.corpus) if doc is None else None  # a new sweep checks its corpus before writing
    folder.mkdir(parents=True, exist_ok=True)
    doc = doc or {"format": FORMAT, "settings": asdict(settings), "tokenizers": {}, "runs": {}}
    doc["grid"] = asdict(grid)
    doc["plan"] = [asdict(p) for p in plans]
    doc.pop("analysis", None)
    _save(folder, doc)

    done = [p for p in plans if finished_metrics(_run_folder(folder, p)) is not None]
    known = {int(k): v["tokens_per_char"] for k, v in doc["tokenizers"].items()}
    vocabs = sorted({p.vocab for p in plans})
    new_tokenizers = sum(not (v in known and _tokenizer_path(folder, v).exists()) for v in vocabs)
    callback(
        "plan",
        {
            "runs": len(plans),
            "done": len(done),
            "folder": str(folder),
            "estimate_s": estimate_seconds([p for p in plans if p not in done], new_tokenizers),
        },
    )

    def shared(info: dict) -> None:
        v = info["vocab"]
        doc["tokenizers"][str(v)] = {
            "file": str(_tokenizer_path(folder, v).relative_to(folder)),
            "tokens_per_char": info["tokens_per_char"],
        }
        _save(folder, doc)
        callback("shared_tokenizer", info)

    train_tokenizers(
        lambda: corpus or load_corpus(settings.corpus),
        vocabs,
        lambda v: _tokenizer_path(folder, v),
        byte_fallback=False,
        known=known,
        callback=shared,
    )

    for i in range(len(plans)):
        _run_one(folder, doc, plans, i, settings, callback)

    rows = [doc["runs"][p.name] for p in plans]
    tpc = {int(k): v["tokens_per_char"] for k, v in doc["tokenizers"].items()}
    for r in rows:
        r["characters"] = r["tokens"] / tpc[r["vocab"]]
    doc["analysis"] = analyze(rows, tpc, family=_family(), free_exponents=free_exponents)
    _save(folder, doc)
    callback("analysis", doc["analysis"])
    return {"folder": str(folder), **doc}


def _family() -> list[tuple[int, int]]:
    """(N_nv, d) of mlxsuite's small presets: the model family approach 2 fits γ on (the paper: its 7 families)."""
    shapes = (preset_args(name, 1) for name in PRESETS if not name.startswith("vocab-"))
    return [(a.n_nonvocab_params, a.hidden_size) for a in shapes]


def _pick(metrics: dict) -> dict:
    return {"lu": metrics.get("val_lu"), "ce": metrics.get("val_ce"), "bpc": metrics.get("val_bpc")}


def _save(folder: Path, doc: dict) -> None:
    atomic.write_json(folder / SWEEP_FILE, doc)


def _train_one(
    plan: RunPlan,
    run_folder: Path,
    tokenizer: Path,
    settings: SweepSettings,
    eval_windows: int,
    index: int,
    total: int,
    callback,
) -> dict:
    spec = LMRunSpec(
        out=str(run_folder.resolve()),
        preset=plan.preset,
        vocab_size=plan.vocab,
        tokenizer=str(tokenizer.resolve()),
        corpus=settings.corpus,
        seq_len=settings.seq_len,
        batch_size=settings.batch_size,
        seed=settings.seed,
        eval_windows=eval_windows,
        train=TrainConfig(
            steps=plan.steps,
            lr=settings.lr,
            warmup=max(1, plan.steps // 10),
            save_every=max(1, plan.steps // 4),
            eval_every=plan.steps,
            log_every=max(1, min(10, plan.steps // 10)),
        ),
    )
    resume = has_checkpoint(run_folder / "run") and (run_folder / "run" / "spec.json").exists()
    callback("run_start", {"index": index, "total": total, "run": plan.name, "resume": resume, "steps": plan.steps})

    def forward(event: str, info: dict) -> None:
        callback(event, {**info, "run": plan.name})

    metrics = train_lm(spec, resume=resume, force=not resume, callback=forward)
    if "val_lu" not in metrics:  # resumed from a checkpoint at the last step: the loop had nothing left to do
        ev = eval_model(str(run_folder.resolve()), settings.corpus, settings.seq_len, eval_windows)
        metrics = {f"val_{k}": v for k, v in ev.items() if k in ("ce", "lu", "bpc")}
        _store_final(run_folder, metrics)
    return metrics


def _store_final(run_folder: Path, metrics: dict) -> None:
    config = json.loads((run_folder / "config.json").read_text())
    config.setdefault("mlxsuite", {})["final"] = metrics
    atomic.write_json(run_folder / "config.json", config)
