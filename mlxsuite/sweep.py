"""The IsoFLOPs experiment of the vocabulary scaling-law paper (Tao et al. 2024, approach 1 §3 and approach 3 §5 of
the notes) at small scale: for every FLOPs budget C, every model size (preset → N_nv, d) and every vocabulary size
V, train one model for exactly C = 6·(N_nv + V·d)·D FLOPs (D = C / (6(N_nv + V·d)) tokens, rounded to whole steps),
measure the unigram-normalized loss L_u, then fit

- per (budget, preset): a parabola of L_u against ln V; its minimum (clamped to the grid, and flagged when it falls
  at an edge or the parabola is not convex) is that model's optimal V at that budget;
- approach 1: power laws N_nv, N_v = V·d and H (characters) against C through the per-budget minima;
- approach 3: the parametric loss L_u = -E + A1/N_nv^α1 + A2/N_v^α2 + B/D^β (α1 = β; A1, A2, B >= 0) on all runs
  (D = trained tokens), and its optimal V for each budget.

The sweep folder (`store.output_path(out)`) holds `sweep.json` (settings, grid, tokenizers, runs, analysis), one
tokenizer per vocabulary size (`tokenizers/v{V}.model`, trained once and shared by every run with that V) and one
model folder per run (`runs/{preset}-v{V}-c{C}`). Finished runs (weights + final metrics) are not redone; a run with
a checkpoint resumes from it exactly. The library never prints: progress goes through `callback(event, info)`.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import atomic, scaling, store
from .errors import UserError
from .plots import pyplot

SWEEP_FILE = "sweep.json"
FORMAT = 1

# Defaults sized for 2 busy CPU cores: measured ~2–4K tokens/s for micro and ~0.6–1.2K tokens/s for tiny, i.e. about
# 3–4e9 "6ND" FLOPs/s either way. 3 budgets × 2 presets × 4 vocabularies = 24 runs, 8 runs per budget:
# 8·(3e10 + 1e11 + 3e11) ≈ 3.4e12 FLOPs ≈ 19 min of training plus tokenizers and per-run start-up.
DEFAULT_BUDGETS = (3e10, 1e11, 3e11)
DEFAULT_PRESETS = ("micro", "tiny")
DEFAULT_VOCAB_SIZES = (512, 1024, 2048, 4096)
ASSUMED_FLOPS_PER_S = 3e9  # for the time estimate only
MIN_STEPS = 5


@dataclass
class SweepSettings:
    """Everything that makes two runs of the same (preset, V, C) the same run. Fixed for a sweep folder."""

    corpus: Optional[str] = None  # None: the embedded stdlib corpus; else an absolute path
    seq_len: int = 64
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    eval_windows: int = 64

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size


@dataclass
class SweepGrid:
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    presets: list[str] = field(default_factory=lambda: list(DEFAULT_PRESETS))
    vocab_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_VOCAB_SIZES))


@dataclass
class RunPlan:
    name: str
    preset: str
    vocab: int
    budget: float
    d: int
    nnv: int
    nv: int
    steps: int
    tokens: int  # steps · batch · seq_len: what is actually trained
    flops: float  # 6·(N_nv + N_v)·tokens: the budget actually spent (rounding to whole steps)


def _budget_tag(c: float) -> str:
    return f"{c:.3g}".replace("+", "").replace(".", "p")


def plan_runs(grid: SweepGrid, settings: SweepSettings) -> list[RunPlan]:
    """Every (budget, preset, V) run with its step count: D = C / (6(N_nv + V·d)) tokens, steps = D / (batch·seq)."""
    from .models.lm import PRESETS, preset_args

    if not grid.budgets or not grid.presets or not grid.vocab_sizes:
        raise UserError("a sweep needs at least one budget, one preset and one vocabulary size")
    for p in grid.presets:
        if p not in PRESETS:
            raise UserError(f"unknown preset {p!r}: choose from {', '.join(PRESETS)}")
    for v in grid.vocab_sizes:
        if v < 320:
            raise UserError(f"vocabulary size {v} is too small: the tokenizer needs >= 320 (>= ~400 on real text)")
    for c in grid.budgets:
        if not (math.isfinite(c) and c > 0):
            raise UserError(f"budgets must be positive numbers of FLOPs, got {c}")
    plans = []
    for c in sorted(set(grid.budgets)):
        for p in grid.presets:
            for v in sorted(set(grid.vocab_sizes)):
                args = preset_args(p, v)
                n = args.n_nonvocab_params + args.n_vocab_params
                steps = round(c / (6 * n) / settings.tokens_per_step)
                if steps < MIN_STEPS:
                    need = 6 * n * MIN_STEPS * settings.tokens_per_step
                    raise UserError(
                        f"budget {c:.3g} FLOPs buys only {steps} steps of {settings.tokens_per_step} tokens for "
                        f"{p} at V = {v} (N = {n:,}); use budgets >= {need:.2g} or fewer tokens per step"
                    )
                tokens = steps * settings.tokens_per_step
                plans.append(
                    RunPlan(f"{p}-v{v}-c{_budget_tag(c)}", p, v, float(c), args.hidden_size, args.n_nonvocab_params,
                            args.n_vocab_params, steps, tokens, 6.0 * n * tokens)
                )
    return plans


def estimate_seconds(plans: list[RunPlan], flops_per_s: float = ASSUMED_FLOPS_PER_S) -> float:
    """Rough training time of the runs (plus ~5 s start-up each), at the throughput measured on 2 busy CPU cores."""
    return sum(p.flops for p in plans) / flops_per_s + 5 * len(plans)


# ---- running ----------------------------------------------------------------------------------------------------


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
        raise UserError(f"{path} is not valid JSON: remove it or pass --force to start over") from None


def run_sweep(
    out: str,
    grid: SweepGrid,
    settings: SweepSettings,
    force: bool = False,
    callback: Optional[Callable[[str, dict], None]] = None,
) -> dict:
    """Run (or continue) the sweep in `store.output_path(out)`; returns the document also saved as sweep.json.

    Events: "plan" {runs, done, folder, estimate_s}, "shared_tokenizer" {vocab, tokens_per_char, trained}, "run_start"
    {index, total, run, resume}, every trainer event of the run (with the run's name under "run"), "run_end"
    {index, total, run, metrics, skipped}, "analysis" {…}.
    """
    callback = callback or (lambda event, info: None)
    folder = store.output_path(out)
    if settings.corpus not in (None, "", "stdlib"):
        settings.corpus = str(Path(settings.corpus).expanduser().resolve())
    else:
        settings.corpus = None
    plans = plan_runs(grid, settings)

    doc = None if force else _load_doc(folder)
    if force and folder.exists():
        if not (folder / SWEEP_FILE).exists() and any(folder.iterdir()):
            raise UserError(f"{folder} is not a sweep folder (no {SWEEP_FILE}): refusing to delete it")
        shutil.rmtree(folder)
    if doc is not None and doc.get("settings") != asdict(settings):
        old = doc.get("settings", {})
        diff = ", ".join(f"{k}: {old.get(k)!r} → {v!r}" for k, v in asdict(settings).items() if old.get(k) != v)
        raise UserError(f"{folder} holds a sweep with other settings ({diff}): use another --out or pass --force")
    if doc is None and folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} exists and is not a sweep: use another --out or pass --force")
    folder.mkdir(parents=True, exist_ok=True)
    doc = doc or {"format": FORMAT, "settings": asdict(settings), "tokenizers": {}, "runs": {}}
    doc["grid"] = asdict(grid)
    doc["plan"] = [asdict(p) for p in plans]
    doc.pop("analysis", None)
    _save(folder, doc)

    done = [p for p in plans if finished_metrics(_run_folder(folder, p)) is not None]
    callback("plan", {"runs": len(plans), "done": len(done), "folder": str(folder),
                      "estimate_s": estimate_seconds([p for p in plans if p not in done])})

    from .data import load_corpus

    corpus = None
    for v in sorted({p.vocab for p in plans}):
        path = _tokenizer_path(folder, v)
        info = doc["tokenizers"].get(str(v))
        if path.exists() and info:
            callback("shared_tokenizer", {"vocab": v, "tokens_per_char": info["tokens_per_char"], "trained": False})
            continue
        from .tokenizer import train_tokenizer

        corpus = corpus or load_corpus(settings.corpus)
        tok = path if path.exists() else None
        tok = train_tokenizer(corpus.train, v, path) if tok is None else _open_tokenizer(path)
        val_chars = sum(len(t) for t in corpus.val)
        tpc = sum(map(len, tok.encode_batch(corpus.val))) / max(1, val_chars)
        doc["tokenizers"][str(v)] = {"file": str(path.relative_to(folder)), "tokens_per_char": tpc}
        _save(folder, doc)
        callback("shared_tokenizer", {"vocab": v, "tokens_per_char": tpc, "trained": True})
    del corpus

    for i, plan in enumerate(plans):
        run_folder = _run_folder(folder, plan)
        metrics = finished_metrics(run_folder)
        skipped = metrics is not None
        if not skipped:
            tok = _tokenizer_path(folder, plan.vocab)
            metrics = _train_one(plan, run_folder, tok, settings, i, len(plans), callback)
        doc["runs"][plan.name] = {**asdict(plan), **_pick(metrics)}
        _save(folder, doc)
        callback("run_end", {"index": i, "total": len(plans), "run": plan.name, "metrics": _pick(metrics),
                             "skipped": skipped})

    rows = [doc["runs"][p.name] for p in plans]
    tpc = {int(k): v["tokens_per_char"] for k, v in doc["tokenizers"].items()}
    for r in rows:
        r["characters"] = r["tokens"] / tpc[r["vocab"]]
    doc["analysis"] = analyze(rows, tpc)
    _save(folder, doc)
    callback("analysis", doc["analysis"])
    return {"folder": str(folder), **doc}


def _open_tokenizer(path: Path):
    from .tokenizer import Tokenizer

    return Tokenizer(path)


def _pick(metrics: dict) -> dict:
    return {"lu": metrics.get("val_lu"), "ce": metrics.get("val_ce"), "bpc": metrics.get("val_bpc")}


def _save(folder: Path, doc: dict) -> None:
    atomic.write_json(folder / SWEEP_FILE, doc)


def _train_one(plan: RunPlan, run_folder: Path, tokenizer: Path, settings: SweepSettings, index: int, total: int,
               callback) -> dict:
    from .train_lm import LMRunSpec, train_lm
    from .trainer import TrainConfig, has_checkpoint

    spec = LMRunSpec(
        out=str(run_folder.resolve()),
        preset=plan.preset,
        vocab_size=plan.vocab,
        tokenizer=str(tokenizer.resolve()),
        corpus=settings.corpus,
        seq_len=settings.seq_len,
        batch_size=settings.batch_size,
        seed=settings.seed,
        eval_windows=settings.eval_windows,
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
    callback("run_start", {"index": index, "total": total, "run": plan.name, "resume": resume,
                           "steps": plan.steps})

    def forward(event: str, info: dict) -> None:
        callback(event, {**info, "run": plan.name})

    metrics = train_lm(spec, resume=resume, force=not resume, callback=forward)
    if "val_lu" not in metrics:  # resumed from a checkpoint at the last step: the loop had nothing left to do
        from .train_lm import eval_model

        ev = eval_model(str(run_folder.resolve()), settings.corpus, settings.seq_len, settings.eval_windows)
        metrics = {f"val_{k}": v for k, v in ev.items() if k in ("ce", "lu", "bpc")}
        _store_final(run_folder, metrics)
    return metrics


def _store_final(run_folder: Path, metrics: dict) -> None:
    config = json.loads((run_folder / "config.json").read_text())
    config.setdefault("mlxsuite", {})["final"] = metrics
    atomic.write_json(run_folder / "config.json", config)


# ---- analysis (numpy only) --------------------------------------------------------------------------------------


def parabola_optimum(vocab, lu) -> dict:
    """Minimum of L_u ≈ a·ln²V + b·lnV + c over the grid's range of V.

    flag: "interior" (a convex parabola's vertex inside the grid), "low-edge" / "high-edge" (vertex outside: clamped
    to the grid, the true optimum is beyond it), "not-convex" (a ≤ 0: the measured best is taken), "two-points" (too
    few vocabularies for a parabola: the measured best).
    """
    v = np.asarray(vocab, dtype=float)
    y = np.asarray(lu, dtype=float)
    order = np.argsort(v)
    v, y = v[order], y[order]
    best = int(np.argmin(y))
    measured = {"measured_best_vocab": int(v[best]), "measured_best_lu": float(y[best]), "points": int(len(v))}
    if len(np.unique(v)) < 3:
        return {"vocab": float(v[best]), "lu": float(y[best]), "flag": "two-points" if len(v) == 2 else "one-point",
                "coef": None, **measured}
    x = np.log(v)
    a, b, c = np.polyfit(x, y, 2)
    if a <= 0:
        flag, x_opt = "not-convex", x[best]
        if best == 0 or best == len(x) - 1:
            flag = "not-convex-edge"
    else:
        x_opt = -b / (2 * a)
        flag = "interior"
        if x_opt <= x[0]:
            x_opt, flag = x[0], "low-edge"
        elif x_opt >= x[-1]:
            x_opt, flag = x[-1], "high-edge"
    lu_opt = float(a * x_opt**2 + b * x_opt + c) if flag in ("interior", "low-edge", "high-edge") else float(y[best])
    vocab_opt = {"interior": math.exp(x_opt), "low-edge": v[0], "high-edge": v[-1]}.get(flag, v[best])
    return {"vocab": float(vocab_opt), "lu": lu_opt, "flag": flag, "coef": [float(a), float(b), float(c)],
            **measured}


def _tokens_per_char(tpc: dict[int, float], vocab: float) -> float:
    """Measured tokens per character, interpolated linearly in ln V between the trained tokenizers."""
    ks = sorted(tpc)
    return float(np.interp(math.log(vocab), np.log(ks), [tpc[k] for k in ks]))


def analyze(rows: list[dict], tokens_per_char: dict[int, float]) -> dict:
    """Fits on finished runs (dicts with preset, vocab, budget, d, nnv, nv, tokens, lu)."""
    rows = [r for r in rows if r.get("lu") is not None and math.isfinite(r["lu"])]
    budgets = sorted({r["budget"] for r in rows})
    presets = sorted({r["preset"] for r in rows}, key=lambda p: next(r["nnv"] for r in rows if r["preset"] == p))
    vmin, vmax = min(r["vocab"] for r in rows), max(r["vocab"] for r in rows)
    notes = []

    # per (budget, preset): parabola in ln V
    per_model = []
    for c in budgets:
        for p in presets:
            group = [r for r in rows if r["budget"] == c and r["preset"] == p]
            if not group:
                continue
            opt = parabola_optimum([r["vocab"] for r in group], [r["lu"] for r in group])
            g0 = group[0]
            entry = {"budget": c, "preset": p, "nnv": g0["nnv"], "d": g0["d"], **opt}
            if all(r.get("bpc") is not None for r in group):  # the same fit on bits per character, for comparison
                b = parabola_optimum([r["vocab"] for r in group], [r["bpc"] for r in group])
                entry["by_bpc"] = {"vocab": b["vocab"], "bpc": b["lu"], "flag": b["flag"]}
            per_model.append(entry)

    # per budget: the model size with the lowest (fitted) L_u, and its vocabulary
    optimal = []
    for c in budgets:
        cands = [m for m in per_model if m["budget"] == c]
        m = min(cands, key=lambda m: m["lu"])
        nv = m["vocab"] * m["d"]
        tokens = c / (6 * (m["nnv"] + nv))
        by_bpc = None
        if all("by_bpc" in x for x in cands):
            b = min(cands, key=lambda x: x["by_bpc"]["bpc"])
            by_bpc = {"preset": b["preset"], **b["by_bpc"]}
        optimal.append({
            "by_bpc": by_bpc,
            "budget": c, "preset": m["preset"], "nnv": m["nnv"], "d": m["d"], "vocab": m["vocab"], "nv": nv,
            "lu": m["lu"], "flag": m["flag"], "tokens": tokens,
            "characters": tokens / _tokens_per_char(tokens_per_char, m["vocab"]),
            "by_preset": {x["preset"]: {"vocab": x["vocab"], "lu": x["lu"], "flag": x["flag"]} for x in cands},
        })

    fits: dict = {}
    # approach 1: power laws through the per-budget minima
    if len(optimal) >= 2:
        cs = [o["budget"] for o in optimal]
        a1 = {"points": len(optimal)}
        for key in ("nnv", "nv", "characters", "vocab"):
            law = scaling.fit_power_law(cs, [o[key] for o in optimal])
            a1[key] = {"coef": law.coef, "exponent": law.exponent}
        if len({o["nnv"] for o in optimal}) == 1:
            notes.append("approach 1: the same model size wins at every budget, so the N_nv exponent is 0 by "
                         "construction; add a smaller or larger preset")
        if len(optimal) == 2:
            notes.append("approach 1: only 2 budgets, so each power law passes exactly through its 2 points (no "
                         "residual, no error estimate)")
        edges = sum(o["flag"] != "interior" for o in optimal)
        if edges:
            notes.append(f"approach 1: {edges} of {len(optimal)} per-budget optimal V are not interior minima of "
                         "the grid (flag), so the N_v and V exponents are biased")
        fits["isoflops"] = a1
    else:
        fits["isoflops"] = {"points": len(optimal), "skipped": "needs at least 2 budgets"}
        notes.append("approach 1 skipped: it needs at least 2 budgets")

    # per-preset trend of the optimal V with compute (same model size, growing data)
    trend = {}
    for p in presets:
        pts = [(m["budget"], m["vocab"]) for m in per_model if m["preset"] == p]
        if len(pts) >= 2:
            law = scaling.fit_power_law(*zip(*pts))
            trend[p] = {"exponent": law.exponent, "points": len(pts)}
    fits["vocab_vs_compute_by_preset"] = trend

    # approach 3: parametric loss over all runs
    if len(rows) >= 6:
        nnv = np.array([r["nnv"] for r in rows], float)
        nv = np.array([r["nv"] for r in rows], float)
        tok = np.array([r["tokens"] for r in rows], float)
        lu = np.array([r["lu"] for r in rows], float)
        loss = scaling.fit_parametric_loss(nnv, nv, tok, lu, grid=16, rounds=25, nonnegative=True)
        pred = loss(nnv, nv, tok)
        a3 = {"points": len(rows), **loss.to_dict(), "rmse": float(np.sqrt(np.mean((pred - lu) ** 2))),
              "r2": scaling.r_squared(lu, pred), "optimal": []}
        degenerate = min(loss.A2 * loss.alpha2, loss.B * loss.beta) <= 0
        if degenerate:
            a3["degenerate"] = True
            notes.append("approach 3: the fitted loss has no vocabulary or no data term (A2·α2 or B·β ≤ 0), "
                         "so it has no optimal V: the runs are too few or too noisy for this form")
        for c in ([] if degenerate else budgets):
            best = None
            for p in presets:
                m = next(r for r in rows if r["preset"] == p)
                nv_opt = loss.optimal_nv(m["nnv"], c)
                v_opt = nv_opt / m["d"]
                lu_opt = float(loss(m["nnv"], nv_opt, c / (6 * (m["nnv"] + nv_opt))))
                entry = {"budget": c, "preset": p, "vocab": v_opt, "lu": lu_opt,
                         "in_grid": bool(vmin <= v_opt <= vmax)}
                a3["optimal"].append(entry)
                best = entry if best is None or lu_opt < best["lu"] else best
            a3.setdefault("best", []).append(best)
        if len({r["nnv"] for r in rows}) == 1:
            notes.append("approach 3: a single model size, so A1 and E are not separately identifiable")
        if a3["optimal"] and not all(e["in_grid"] for e in a3["optimal"]):
            notes.append("approach 3: some predicted optimal V fall outside the trained grid (extrapolation)")
        fits["parametric"] = a3
    else:
        fits["parametric"] = {"points": len(rows), "skipped": "needs at least 6 runs"}
        notes.append("approach 3 skipped: it needs at least 6 runs")

    grows = None
    if len(optimal) >= 2:
        vs = [o["vocab"] for o in optimal]
        grows = bool(all(b >= a for a, b in zip(vs, vs[1:])) and vs[-1] > vs[0])
    if len(optimal) >= 2 and all(o["by_bpc"] for o in optimal):
        if any(not math.isclose(o["vocab"], o["by_bpc"]["vocab"], rel_tol=0.25) for o in optimal):
            notes.append("the optimal V by L_u and by bits per character differ by more than 25% at some budgets "
                         "(see by_bpc): L_u is per token, and a token of a larger vocabulary carries more text")
    return {"per_model": per_model, "optimal_vocab": optimal, "fits": fits, "vocab_grows_with_compute": grows,
            "notes": notes}


# ---- plot -------------------------------------------------------------------------------------------------------


def plot_sweep(doc: dict, path: str | Path) -> Path:
    """Left: L_u against V for every budget (colour) and preset (marker), the fitted parabolas and their optima.
    Right: the optimal V against compute (parabola minima per preset and per budget, approach 3's prediction)."""
    plt = pyplot()
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    analysis = doc["analysis"]
    runs = list(doc["runs"].values()) if isinstance(doc["runs"], dict) else doc["runs"]
    names = {p["name"] for p in doc["plan"]}
    runs = [r for r in runs if r["name"] in names and r.get("lu") is not None]
    budgets = sorted({r["budget"] for r in runs})
    presets = [m["preset"] for m in analysis["per_model"]]
    presets = list(dict.fromkeys(presets))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(budgets))))
    markers = "osD^v<>p*h"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for ci, c in enumerate(budgets):
        for pi, p in enumerate(presets):
            group = sorted((r for r in runs if r["budget"] == c and r["preset"] == p), key=lambda r: r["vocab"])
            if not group:
                continue
            v = [r["vocab"] for r in group]
            ax1.plot(v, [r["lu"] for r in group], markers[pi % len(markers)], color=colors[ci],
                     label=f"C={c:.2g}, {p}")
            m = next(m for m in analysis["per_model"] if m["budget"] == c and m["preset"] == p)
            if m["coef"]:
                xs = np.linspace(math.log(v[0]), math.log(v[-1]), 100)
                ax1.plot(np.exp(xs), np.polyval(m["coef"], xs), "-" if pi == 0 else "--", color=colors[ci], lw=1)
            ax1.plot([m["vocab"]], [m["lu"]], "*", color=colors[ci], ms=14, mec="k")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("vocabulary size V")
    ax1.set_ylabel("L_u (nats, unigram-normalized)")
    ax1.set_title("L_u against V per budget (★ fitted optimum)")
    ax1.legend(fontsize=7)
    for pi, p in enumerate(presets):
        pts = [(m["budget"], m["vocab"]) for m in analysis["per_model"] if m["preset"] == p]
        ax2.plot(*zip(*pts), markers[pi % len(markers)] + ":", ms=9 - 2 * pi, label=f"parabola optimum, {p}")
    opt = analysis["optimal_vocab"]
    ax2.plot([o["budget"] for o in opt], [o["vocab"] for o in opt], "k*-", ms=12, label="best model per budget")
    a3 = analysis["fits"].get("parametric", {})
    if a3.get("best"):
        ax2.plot([b["budget"] for b in a3["best"]], [b["vocab"] for b in a3["best"]], "r^--",
                 label="approach 3 (fitted parametric loss)")
    by_bpc = [o for o in opt if o.get("by_bpc")]
    if by_bpc:
        ax2.plot([o["budget"] for o in by_bpc], [o["by_bpc"]["vocab"] for o in by_bpc], "s--", color="grey",
                 label="best by bits/char (for comparison)")
    vocabs = sorted({r["vocab"] for r in runs})
    ax2.set_xscale("log")
    ax2.set_yscale("log", base=2)
    ax2.set_ylim(vocabs[0] / 1.3, vocabs[-1] * 1.3)
    ax2.axhspan(vocabs[0], vocabs[-1], color="0.93", zorder=0)  # the trained grid
    ax2.set_xlabel("compute C (FLOPs)")
    ax2.set_ylabel("optimal V")
    ax2.set_title("Optimal vocabulary against compute (shaded: trained V range)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
