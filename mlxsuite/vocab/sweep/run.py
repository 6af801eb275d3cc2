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

import mlx.core as mx

from mlxsuite import store
from mlxsuite.data.corpus import load_corpus
from mlxsuite.models.lm import PRESETS, preset_args
from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError
from mlxsuite.train.lm import LMRunSpec, eval_model, train_lm
from mlxsuite.train.trainer import TrainConfig, has_checkpoint
from mlxsuite.vocab.sweep import ranks
from mlxsuite.vocab.sweep.analysis import analyze
from mlxsuite.vocab.sweep.plan import (
    RunPlan,
    SweepGrid,
    SweepSettings,
    edge_extensions,
    estimate_seconds,
    plan_runs,
    run_seconds,
)
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


def run_sweep(
    out: str,
    grid: SweepGrid,
    settings: SweepSettings,
    force: bool = False,
    callback: Optional[Callable[[str, dict], None]] = None,
    free_exponents: bool = False,
    extend_edges: int = 0,
    group=None,
) -> dict:
    """Run (or continue) the sweep in `store.output_path(out)`; returns the document also saved as sweep.json.

    Under `mlx.launch` (or with `group`) every rank trains its share of the runs alone and rank 0 writes sweep.json
    and fits once all are done; the other ranks return {"folder", "rank"} without an analysis. Every run is a pure
    function of its settings, so the result equals one process's. `extend_edges` rounds: after the grid, every
    (budget, preset) cell whose lowest L_u sits at its smallest or largest V gets one more V beyond that edge.

    Events: "plan" {runs, done, folder, estimate_s, rank, ranks, mine}; "shared_tokenizer" {vocab, tokens_per_char,
    trained, seconds}; "run_start" {index, total, run, resume, steps}; every trainer event of the run (with the run's
    name under "run"); "run_end" {index, total, run, metrics, skipped, seconds}; "extend" {runs}; "analysis" {…}.
    """
    world = group or mx.distributed.init()
    callback = callback or (lambda event, info: None)
    folder = store.output_path(out)
    if settings.corpus not in (None, "", "stdlib"):
        settings.corpus = str(Path(settings.corpus).expanduser().resolve())
    else:
        settings.corpus = None
    plans = plan_runs(grid, settings)
    doc, error = None, None
    if world.rank() == 0:
        try:
            doc = _open(folder, grid, settings, force)
        except UserError as e:
            error = str(e)
    opened = ranks.gather_json({"error": error, "tokenizers": doc and doc["tokenizers"]}, world)[0]
    if opened["error"]:
        raise UserError(opened["error"])
    state = _State(folder, settings, world, ranks.solo_group(world), doc, callback)
    state.tpc = {int(k): v["tokens_per_char"] for k, v in opened["tokenizers"].items()}
    results = state.run_round(plans)
    for _ in range(extend_edges):
        extra = edge_extensions(plans, {k: r["lu"] for k, r in results.items()}, settings)
        if not extra:
            break
        callback("extend", {"runs": [p.name for p in extra]})
        plans = plans + extra
        results = state.run_round(plans)
    if world.rank() != 0:
        return {"folder": str(folder), "rank": world.rank()}
    doc["grid"], doc["plan"] = asdict(grid), [asdict(p) for p in plans]
    rows = [doc["runs"][p.name] for p in plans]
    for r in rows:
        r["characters"] = r["tokens"] / state.tpc[r["vocab"]]
    doc["analysis"] = analyze(rows, state.tpc, family=_family(), free_exponents=free_exponents)
    _save(folder, doc)
    callback("analysis", doc["analysis"])
    return {"folder": str(folder), **doc}


def _open(folder: Path, grid: SweepGrid, settings: SweepSettings, force: bool) -> dict:
    """Rank 0: the sweep document of `folder` (new, or the one there if its settings match), saved with this grid."""
    doc = _open_doc(folder, settings, force)
    if doc is None:
        load_corpus(settings.corpus)  # a new sweep checks its corpus before writing
    folder.mkdir(parents=True, exist_ok=True)
    doc = doc or {"format": FORMAT, "settings": asdict(settings), "tokenizers": {}, "runs": {}}
    doc["grid"] = asdict(grid)
    doc.pop("analysis", None)
    _save(folder, doc)
    return doc


class _State:
    """One process's side of a sweep: the shared tokenizers, its share of the runs, and (rank 0) the document."""

    def __init__(self, folder: Path, settings: SweepSettings, world, solo, doc: Optional[dict], callback):
        self.folder, self.settings, self.world, self.solo, self.doc = folder, settings, world, solo, doc
        self.callback = callback
        self.tpc: dict[int, float] = {}
        self.corpus = None

    def _corpus(self):
        self.corpus = self.corpus or load_corpus(self.settings.corpus)
        return self.corpus

    def tokenizers(self, vocabs: list[int]) -> None:
        """Every rank trains (or finds) every size-th tokenizer, the measurements are exchanged, then every rank has
        the tokenizers of all `vocabs` (trained again, byte-identical, where the ranks do not share a filesystem)."""
        rank, size = self.world.rank(), self.world.size()
        path_of = lambda v: _tokenizer_path(self.folder, v)  # noqa: E731

        def shared(info: dict) -> None:
            if self.doc is not None:  # saved as soon as measured: a tokenizer is not measured twice
                file = str(path_of(info["vocab"]).relative_to(self.folder))
                self.doc["tokenizers"][str(info["vocab"])] = {"file": file, "tokens_per_char": info["tokens_per_char"]}
                _save(self.folder, self.doc)
            self.callback("shared_tokenizer", info)

        mine = [v for i, v in enumerate(vocabs) if i % size == rank]
        measured = train_tokenizers(self._corpus, mine, path_of, byte_fallback=False, known=self.tpc, callback=shared)
        for part in ranks.gather_json({str(k): v for k, v in measured.items()}, self.world):
            self.tpc.update({int(k): v for k, v in part.items()})
        if self.doc is not None:  # the other ranks' measurements too
            for v in vocabs:
                file = str(path_of(v).relative_to(self.folder))
                self.doc["tokenizers"][str(v)] = {"file": file, "tokens_per_char": self.tpc[v]}
            _save(self.folder, self.doc)
        absent = [v for v in vocabs if not path_of(v).exists()]
        train_tokenizers(self._corpus, absent, path_of, byte_fallback=False, known={})

    def run_round(self, plans: list[RunPlan]) -> dict[str, dict]:
        """Train the runs of `plans` not finished yet, this rank's share; returns name → measurements of all."""
        self.tokenizers(sorted({p.vocab for p in plans}))
        rank, size = self.world.rank(), self.world.size()
        local = {p.name: _pick(m) for p in plans if (m := finished_metrics(_run_folder(self.folder, p))) is not None}
        done = _merge(ranks.gather_json(local, self.world))
        todo = [p for p in plans if p.name not in done]
        share = {todo[i].name for i in ranks.assign([run_seconds(p) for p in todo], size)[rank]}
        info = {"runs": len(plans), "done": len(done), "folder": str(self.folder), "rank": rank, "ranks": size}
        mine = [p for p in todo if p.name in share]
        self.callback("plan", {**info, "mine": len(mine), "estimate_s": estimate_seconds(mine, 0)})
        trained = {}
        for i, plan in enumerate(plans):
            if plan.name in done or plan.name in share:
                trained.update(self._one(i, plan, plans, done))
        results = {**done, **_merge(ranks.gather_json(trained, self.world))}
        if self.doc is not None:
            for plan in plans:
                old = self.doc["runs"].get(plan.name, {})
                r = results[plan.name]
                seconds, by = r.get("seconds", old.get("seconds")), r.get("rank", old.get("rank"))
                entry = {**asdict(plan), **r, "eval_windows": self._windows(plan), "seconds": seconds, "rank": by}
                self.doc["runs"][plan.name] = entry
            _save(self.folder, self.doc)
        return results

    def _windows(self, plan: RunPlan) -> int:
        return self.settings.eval_windows(self.tpc[plan.vocab])

    def _one(self, i: int, plan: RunPlan, plans: list[RunPlan], done: dict) -> dict:
        skipped = plan.name in done
        metrics, seconds = (done[plan.name], None) if skipped else (None, None)
        if self.doc is not None and skipped:
            seconds = self.doc["runs"].get(plan.name, {}).get("seconds")
        if not skipped:
            start = time.perf_counter()
            tokenizer = _tokenizer_path(self.folder, plan.vocab)
            run_folder = _run_folder(self.folder, plan)
            raw = _train_one(
                plan, run_folder, tokenizer, self.settings, self._windows(plan), i, len(plans), self.callback, self.solo
            )
            metrics, seconds = _pick(raw), time.perf_counter() - start
            if self.doc is not None:
                entry = {**asdict(plan), **metrics, "eval_windows": self._windows(plan), "seconds": seconds, "rank": 0}
                self.doc["runs"][plan.name] = entry
                _save(self.folder, self.doc)
        info = {"index": i, "total": len(plans), "run": plan.name, "metrics": metrics, "skipped": skipped}
        self.callback("run_end", {**info, "seconds": seconds})
        return {} if skipped else {plan.name: {**metrics, "seconds": seconds, "rank": self.world.rank()}}


def _merge(parts: list[dict]) -> dict:
    """One dict from the ranks' dicts; where several ranks have a run (a shared filesystem), the lowest rank's."""
    out: dict = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, v)
    return out


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
    group=None,
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

    metrics = train_lm(spec, resume=resume, force=not resume, callback=forward, group=group)
    if "val_lu" not in metrics:  # resumed from a checkpoint at the last step: the loop had nothing left to do
        ev = eval_model(str(run_folder.resolve()), settings.corpus, settings.seq_len, eval_windows)
        metrics = {f"val_{k}": v for k, v in ev.items() if k in ("ce", "lu", "bpc")}
        _store_final(run_folder, metrics)
    return metrics


def _store_final(run_folder: Path, metrics: dict) -> None:
    config = json.loads((run_folder / "config.json").read_text())
    config.setdefault("mlxsuite", {})["final"] = metrics
    atomic.write_json(run_folder / "config.json", config)
