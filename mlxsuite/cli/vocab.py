"""`mlxsuite vocab`: Vocabulary scaling laws: predict, plan, fit compression, sweep."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import scaling
from ..errors import UserError
from .common import err, out, parse_int_list, positive, print_json

app = typer.Typer(help="Vocabulary scaling laws: predict, plan, fit compression, sweep.", no_args_is_help=True)


class Approach(str, Enum):
    isoflops = "isoflops"
    derivative = "derivative"
    parametric = "parametric"


COMPRESSION_HELP = "f(V) constants from `mlxsuite vocab fit-compression --save` (default: the paper's)."


def _compression(path: Optional[str]) -> scaling.Compression:
    return scaling.PAPER_COMPRESSION if path is None else scaling.Compression.load(path)


def _derivative_law(compression: scaling.Compression) -> scaling.DerivativeLaw:
    """The paper's γ, or γ refitted on the ∂C/∂V roots when the user brings their own f(V)."""
    if compression == scaling.PAPER_COMPRESSION:
        return scaling.PAPER_DERIVATIVE
    return scaling.derivative_law(compression)


def _resolve_model(name: str) -> scaling.ModelShape:
    shape = scaling.KNOWN_MODELS.get(name.lower())
    if shape is None:
        raise UserError(f"unknown model {name!r}; known: {', '.join(scaling.KNOWN_MODELS)}")
    return shape


def _human(x: float) -> str:
    """1234 → 1,234; 6.476e9 → 6.476B."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.4g}{suffix}"
    return f"{x:,.0f}"


@app.command()
def predict(
    nnv: Optional[float] = typer.Option(None, "--nnv", help="Non-vocabulary parameters N_nv, e.g. 7e9."),
    flops: Optional[float] = typer.Option(
        None,
        "--flops",
        help="Training budget in FLOPs for the parametric approach (default: compute-optimal; the other two "
        "approaches always assume the compute-optimal budget).",
    ),
    d: Optional[int] = typer.Option(None, "--d", help="Embedding dimension (default: the model's, or from N_nv)."),
    model: Optional[str] = typer.Option(
        None, "--model", help=f"Take N_nv and d from a known model: {', '.join(scaling.KNOWN_MODELS)}."
    ),
    compression: Optional[str] = typer.Option(None, "--compression", help=COMPRESSION_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
):
    """Predict the optimal vocabulary size for N_nv non-vocabulary parameters with the paper's three approaches.

    Approaches 1 (IsoFLOPs) and 2 (derivative) assume compute-optimal training, C = C_opt(N_nv); approach 3
    (parametric loss) also takes any budget with --flops.
    """
    if (nnv is None) == (model is None):
        raise UserError("give exactly one of --nnv or --model")
    positive("--nnv", nnv)
    positive("--flops", flops)
    positive("--d", d)
    shape = _resolve_model(model) if model else None
    if shape:
        nnv = shape.nnv
        d = d or shape.d
    d = d or scaling.embedding_dim(nnv)
    f = _compression(compression)
    law = _derivative_law(f)
    if f.clamp < scaling.PAPER_COMPRESSION.clamp:
        err.print(f"note: f(V) is flat above V = {f.clamp:,.0f}, which caps the derivative roots γ is fitted on")
    preds = {
        "isoflops": scaling.predict_isoflops(nnv, d),
        "derivative": scaling.predict_derivative(nnv, d, law),
        "parametric": scaling.predict_parametric(nnv, flops, d),
    }
    if json_out:
        print_json({"nnv": nnv, "d": d, "approaches": {k: vars(p) for k, p in preds.items()}})
        return

    c_opt = scaling.compute_optimal_flops(nnv)
    title = f"Optimal vocabulary for N_nv = {_human(nnv)} non-vocabulary parameters, d = {d}"
    if model:
        title += f" ({model}: V = {shape.vocab:,} today)"
    out.print(title, highlight=False)
    table = Table()
    for col in ("approach", "V", "N_v = V·d", "budget (FLOPs)"):
        table.add_column(col, justify="left" if col == "approach" else "right")
    for name, p in preds.items():
        budget = f"{p.flops:.4g}" + (" (optimal)" if math.isclose(p.flops, c_opt, rel_tol=1e-12) else "")
        table.add_row(name, f"{p.vocab:,}", f"{p.nv:,}", budget)
    out.print(table)
    root = scaling.derivative_root(nnv, d, f)
    out.print(
        f"Approach 2 scales N_v ∝ N_nv^{law.gamma:.4f} (the scaling of the roots of ∂C/∂V = 0) from the paper's "
        f"33M-parameter experiment (best V = 6144); the raw root here is V* = {root:,.0f}.",
        highlight=False,
    )


@app.command()
def plan(
    flops: float = typer.Option(..., "--flops", help="Training budget in FLOPs, e.g. 1e21."),
    approach: Approach = typer.Option(Approach.parametric, "--approach", help="Which approach picks the vocabulary."),
    d: Optional[int] = typer.Option(None, "--d", help="Embedding dimension (default: from N_nv by the paper's table)."),
    compression: Optional[str] = typer.Option(None, "--compression", help=COMPRESSION_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
):
    """Compute-optimal allocation of a FLOPs budget: N_nv, N_v, V, training characters and tokens.

    N_nv comes from the IsoFLOPs law N_nv = 0.0834·C^0.5; the vocabulary from --approach; then D = C / (6(N_nv + V·d))
    tokens spend the budget exactly and H = D / f(V) characters. The closest trainable preset (by N_nv) gets the
    parametric approach's vocabulary for the same budget, since only that approach handles a non-optimal N_nv.
    """
    positive("--flops", flops)
    positive("--d", d)
    f = _compression(compression)
    nnv = float(scaling.compute_optimal_nnv(flops))
    d = d or scaling.embedding_dim(nnv)
    if approach is Approach.isoflops:
        nv = scaling.PAPER_ISOFLOPS.nv(flops)
    elif approach is Approach.derivative:
        nv = _derivative_law(f)(nnv)
    else:
        nv = scaling.PAPER_PARAMETRIC.optimal_nv(nnv, flops)
    result = {"flops": flops, "approach": approach.value, **_allocation(nnv, d, nv, flops, f)}
    result["preset"] = _closest_preset(nnv, flops, f)
    if json_out:
        print_json(result)
        return

    p = result["preset"]
    out.print(f"Compute-optimal plan for C = {flops:.4g} FLOPs (vocabulary by the {approach.value} approach)")
    table = Table()
    table.add_column("")
    table.add_column("scaling law", justify="right")
    table.add_column(f"closest preset: {p['name']}", justify="right")
    rows = [
        ("N_nv (non-vocabulary parameters)", "nnv"),
        ("d (embedding dimension)", "d"),
        ("V (vocabulary size)", "vocab"),
        ("N_v = V·d (vocabulary parameters)", "nv"),
        ("D (training tokens)", "tokens"),
        ("H (training characters)", "characters"),
    ]
    for label, key in rows:
        table.add_row(label, _human(result[key]), _human(p[key]))
    out.print(table)
    if p["vocab"] < 320:
        out.print("Note: the preset's vocabulary is below 320, the smallest tokenizer mlxsuite trains.")


def _allocation(nnv: float, d: int, nv: float, flops: float, f: scaling.Compression) -> dict:
    """Spend the budget: V = N_v // d, D = C / (6(N_nv + V·d)) tokens, H = D / f(V) characters."""
    vocab = max(1, int(nv // d))
    tokens = flops / (6 * (nnv + vocab * d))
    return {
        "nnv": nnv,
        "d": d,
        "nv": vocab * d,
        "vocab": vocab,
        "tokens": tokens,
        "characters": float(scaling.characters_from_tokens(tokens, vocab, f)),
    }


def _closest_preset(nnv: float, flops: float, f: scaling.Compression) -> dict:
    from ..models.lm import PRESETS, preset_args  # MLX only when a plan is asked for

    shapes = {name: preset_args(name, vocab_size=4096) for name in PRESETS}
    name = min(shapes, key=lambda k: abs(math.log(shapes[k].n_nonvocab_params / nnv)))
    p_nnv, p_d = shapes[name].n_nonvocab_params, shapes[name].hidden_size
    nv = scaling.PAPER_PARAMETRIC.optimal_nv(p_nnv, flops)
    return {"name": name, **_allocation(p_nnv, p_d, nv, flops, f)}


@app.command("fit-compression")
def fit_compression(
    sizes: str = typer.Option(..., "--sizes", help="Vocabulary sizes to train, e.g. 1024,2048,4096,8192."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text file, folder or .jsonl (default: the stdlib)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the fit as JSON, for --compression."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
):
    """Fit tokens per character f(V) = a·ln²V + b·lnV + c on tokenizers trained at the given sizes.

    Each tokenizer trains on the corpus' training split; tokens per character are measured on its held-out split.
    """
    from ..data import load_corpus
    from ..tokenizer import train_tokenizer

    vocab_sizes = sorted(set(parse_int_list("--sizes", sizes)))
    if len(vocab_sizes) < 3:
        raise UserError("--sizes needs at least 3 different vocabulary sizes to fit a, b and c")
    if save is not None and not save.parent.is_dir():
        raise UserError(f"cannot write {save}: folder {save.parent} does not exist")
    texts = load_corpus(corpus)
    val_chars = sum(len(t) for t in texts.val)
    measured = []
    with tempfile.TemporaryDirectory(prefix="mlxsuite-fit-compression-") as tmp:
        for v in vocab_sizes:
            start = time.perf_counter()
            tok = train_tokenizer(texts.train, v, Path(tmp) / f"tokenizer-{v}.model")
            measured.append(sum(map(len, tok.encode_batch(texts.val))) / val_chars)
            seconds = time.perf_counter() - start
            err.print(f"V = {v:>7,}: {measured[-1]:.5f} tokens/char ({seconds:.1f} s)", highlight=False)
    fit = scaling.fit_compression(vocab_sizes, measured)
    fitted = [float(x) for x in fit(vocab_sizes)]
    doc = {
        **fit.to_dict(),
        "r2": scaling.r_squared(measured, fitted),
        "relative_mse": scaling.relative_mse(measured, fitted),
        "corpus": texts.name,
        "val_chars": val_chars,
        "sizes": vocab_sizes,
        "tokens_per_char": measured,
        "fitted": fitted,
    }
    if save is not None:
        _write_json(save, doc)
    if json_out:
        print_json(doc)
        return

    out.print(f"Tokens per character on {texts.name} ({val_chars:,} held-out characters)", highlight=False)
    table = Table()
    for col in ("V", "measured", "fitted", "error"):
        table.add_column(col, justify="right")
    for v, m, y in zip(vocab_sizes, measured, fitted):
        table.add_row(f"{v:,}", f"{m:.5f}", f"{y:.5f}", f"{(y - m) / m:+.2%}")
    out.print(table)
    out.print(
        f"f(V) = {fit.a:.8g}·ln²V {fit.b:+.8g}·lnV {fit.c:+.8g}  (V clamped at {fit.clamp:,.0f}); "
        f"R² = {doc['r2']:.5f}, relative MSE = {doc['relative_mse']:.3g}",
        highlight=False,
    )
    if fit.clamp < scaling.PAPER_COMPRESSION.clamp:
        out.print(
            f"The fitted quadratic turns at V = {fit.clamp:,.0f}: f is held there for larger V. "
            "Fit on sizes that span the vocabularies you want to predict.",
            highlight=False,
        )
    if save is not None:
        out.print(f"saved to {save}; use it with --compression {save}", highlight=False)


def _write_json(path: Path, doc: dict) -> None:
    """Write whole or not at all: a temporary file next to the target, then an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def _parse_float_list(name: str, text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise UserError(f"{name} must list positive numbers, got {text!r}")
    return values


class _SweepProgress:
    """Renders sweep events: an overall bar (runs done / remaining) and one bar per training run."""

    def __init__(self, quiet: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), console=err, disable=quiet,
        )
        self.overall = self.run_task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, event: str, info: dict) -> None:
        if self.quiet:
            return
        p = self.progress
        if event == "plan":
            todo = info["runs"] - info["done"]
            p.console.print(
                f"sweep in {info['folder']}: {info['runs']} runs, {info['done']} already finished; "
                f"estimated ~{info['estimate_s'] / 60:.0f} min for the {todo} left",
                highlight=False,
            )
            self.overall = p.add_task("[bold]runs[/bold]", total=info["runs"], completed=info["done"], stats="")
        elif event == "shared_tokenizer":
            how = "trained" if info["trained"] else "reused"
            tpc = info["tokens_per_char"]
            p.console.print(f"[dim]tokenizer V={info['vocab']:,} {how}: {tpc:.4f} tokens/char[/dim]")
        elif event == "run_start":
            if self.run_task is not None:
                p.remove_task(self.run_task)
            self.run_task = p.add_task(f"{info['run']}", total=info["steps"], completed=0, stats="")
            if info["resume"]:
                p.console.print(f"{info['run']}: resuming from its checkpoint", highlight=False)
        elif event == "start" and self.run_task is not None:
            p.update(self.run_task, completed=info["step"])
        elif event == "step" and self.run_task is not None:
            p.update(self.run_task, completed=info["step"],
                     stats=f"loss {info['loss']:.3f}  {info['tokens_per_s']:,.0f} tok/s")
        elif event == "run_end":
            m = info["metrics"]
            if self.run_task is not None:
                p.remove_task(self.run_task)
                self.run_task = None
            if not info["skipped"]:
                p.advance(self.overall)
            p.console.print(
                f"{info['run']}: L_u {m['lu']:.4f}  CE {m['ce']:.4f}  bits/char {m['bpc']:.4f}"
                + ("  (already finished)" if info["skipped"] else ""),
                highlight=False,
            )


def _e(x: float) -> str:
    """An exponent to 3 decimals, without "-0.000"."""
    return f"{round(x, 3) + 0.0:.3f}"


def _print_sweep(doc: dict) -> None:
    a = doc["analysis"]
    table = Table(title="runs")
    for col in ("preset", "V", "budget", "steps", "tokens", "L_u", "CE", "bits/char"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for p in doc["plan"]:
        r = doc["runs"][p["name"]]
        table.add_row(r["preset"], f"{r['vocab']:,}", f"{r['budget']:.3g}", f"{r['steps']:,}", f"{r['tokens']:,}",
                      f"{r['lu']:.4f}", f"{r['ce']:.4f}", f"{r['bpc']:.4f}")
    out.print(table)

    table = Table(title="optimal V per budget and size (parabola of L_u in ln V)")
    for col in ("budget", "preset", "V_opt", "L_u at V_opt", "flag", "measured best V", "V_opt by bits/char"):
        table.add_column(col, justify="left" if col in ("preset", "flag") else "right")
    best = {(o["budget"], o["preset"]) for o in a["optimal_vocab"]}
    for m in a["per_model"]:
        mark = " ★" if (m["budget"], m["preset"]) in best else ""
        bpc = m.get("by_bpc")
        table.add_row(f"{m['budget']:.3g}", m["preset"] + mark, f"{m['vocab']:,.0f}", f"{m['lu']:.4f}", m["flag"],
                      f"{m['measured_best_vocab']:,}", f"{bpc['vocab']:,.0f}" if bpc else "")
    out.print(table)
    out.print("★ = the model size with the lowest L_u at that budget; flag other than interior: the minimum is at the "
              "grid's edge (low/high-edge) or the parabola is not convex (the measured best is shown)", highlight=False)

    fits = a["fits"]
    a1 = fits["isoflops"]
    if "skipped" in a1:
        out.print(f"approach 1 (IsoFLOPs): skipped, {a1['skipped']}", highlight=False)
    else:
        out.print(
            f"approach 1 (IsoFLOPs power laws through {a1['points']} per-budget minima): "
            f"N_nv ∝ C^{_e(a1['nnv']['exponent'])}, N_v ∝ C^{_e(a1['nv']['exponent'])}, "
            f"H ∝ C^{_e(a1['characters']['exponent'])}, V ∝ C^{_e(a1['vocab']['exponent'])}  "
            "(paper: 0.50, 0.42, 0.50)",
            highlight=False,
        )
    for p, t in fits["vocab_vs_compute_by_preset"].items():
        out.print(f"  {p}: optimal V ∝ C^{_e(t['exponent'])} at fixed size ({t['points']} budgets)", highlight=False)
    a3 = fits["parametric"]
    if "skipped" in a3:
        out.print(f"approach 3 (parametric loss): skipped, {a3['skipped']}", highlight=False)
    else:
        out.print(
            f"approach 3 (parametric loss, {a3['points']} runs): L_u = -{a3['E']:.3f} + {a3['A1']:.3g}/N_nv^"
            f"{a3['alpha1']:.3f} + {a3['A2']:.3g}/N_v^{a3['alpha2']:.3f} + {a3['B']:.3g}/D^{a3['beta']:.3f} "
            f"(N in millions, D in billions; paper α1 = β = 0.447, α2 = 0.671); RMSE {a3['rmse']:.4f}, "
            f"R² {a3['r2']:.3f}",
            highlight=False,
        )
        for b in a3.get("best", []):
            out.print(f"  C = {b['budget']:.3g}: best {b['preset']}, V_opt ≈ {b['vocab']:,.0f}"
                      + ("" if b["in_grid"] else " (outside the grid)"), highlight=False)
    grows = a["vocab_grows_with_compute"]
    if grows is not None:
        out.print(f"optimal V {'grows' if grows else 'does not grow monotonically'} with compute across the "
                  "budgets here", highlight=False)
    for n in a["notes"]:
        out.print(f"note: {n}", highlight=False)


@app.command()
def sweep(
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text file, folder or .jsonl (default: the stdlib)."),
    budgets: Optional[str] = typer.Option(
        None, "--budgets", help="FLOPs budgets C (C = 6·(N_nv + V·d)·D), default 3e10,1e11,3e11."
    ),
    presets: str = typer.Option("micro,tiny", "--presets", help="Model sizes (N_nv) to train at every budget."),
    vocab_sizes: str = typer.Option("512,1024,2048,4096", "--vocab-sizes", help="Vocabulary sizes (>= ~400)."),
    out_name: str = typer.Option("vocab-sweep", "--out", "-o", help="Sweep folder: a store name or a path."),
    seq_len: int = typer.Option(64, "--seq-len"),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per step."),
    lr: float = typer.Option(3e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    eval_windows: int = typer.Option(64, "--eval-windows", help="Validation windows for the final L_u."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write L_u vs V and optimal V vs compute (PNG)."),
    force: bool = typer.Option(False, "--force", help="Delete the sweep folder and start over."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (steps per run, time estimate) and stop."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
):
    """IsoFLOPs sweep (Tao et al. 2024): train every preset × vocabulary size at every FLOPs budget, then fit.

    Each run trains D = C / (6(N_nv + V·d)) tokens, so all runs of a budget spend the same FLOPs. Per budget and
    model size, L_u is fitted with a parabola in ln V; its minimum is the optimal V (flagged when at the grid's
    edge). Then approach 1's power laws (N_nv, N_v, H against C through the per-budget minima) and approach 3's
    parametric loss over all runs. One tokenizer per V is trained once and shared. The folder keeps sweep.json and
    every run: rerunning the same command continues an interrupted sweep (finished runs are kept, a half-finished
    run resumes from its checkpoint).

    The default sweep (3 budgets × micro,tiny × 4 vocabularies = 24 runs on the stdlib, 7 to 732 steps of 512
    tokens) took 23.5 minutes on 2 CPU cores shared with other jobs (about 3e9 FLOPs/s); an idle machine is faster.
    --dry-run prints the plan and a time estimate for any grid.
    """
    from .. import sweep as sw

    positive("--lr", lr)
    for name, v in (("--seq-len", seq_len), ("--batch-size", batch_size), ("--eval-windows", eval_windows)):
        if v <= 0:
            raise UserError(f"{name} must be a positive integer, got {v}")
    grid = sw.SweepGrid(
        budgets=_parse_float_list("--budgets", budgets) if budgets else list(sw.DEFAULT_BUDGETS),
        presets=[p.strip() for p in presets.split(",") if p.strip()],
        vocab_sizes=parse_int_list("--vocab-sizes", vocab_sizes),
    )
    settings = sw.SweepSettings(corpus=corpus, seq_len=seq_len, batch_size=batch_size, lr=lr, seed=seed,
                                eval_windows=eval_windows)
    if plot is not None and not plot.parent.is_dir():
        raise UserError(f"cannot write {plot}: folder {plot.parent} does not exist")
    if dry_run:
        plans = sw.plan_runs(grid, settings)
        est = sw.estimate_seconds(plans)
        if json_out:
            print_json({"runs": [vars(p) for p in plans], "estimate_s": est})
            return
        table = Table(title=f"{len(plans)} runs, {settings.tokens_per_step} tokens per step")
        for col in ("run", "N_nv", "N_v", "steps", "tokens", "FLOPs"):
            table.add_column(col, justify="left" if col == "run" else "right")
        for p in plans:
            table.add_row(p.name, f"{p.nnv:,}", f"{p.nv:,}", f"{p.steps:,}", f"{p.tokens:,}", f"{p.flops:.3g}")
        out.print(table)
        out.print(f"estimated time: ~{est / 60:.0f} min at {sw.ASSUMED_FLOPS_PER_S:.0e} FLOPs/s, plus tokenizers",
                  highlight=False)
        return
    with _SweepProgress(quiet or json_out) as progress:
        doc = sw.run_sweep(out_name, grid, settings, force=force, callback=progress)
    if plot is not None:
        sw.plot_sweep(doc, plot)
    if json_out:
        a = doc["analysis"]
        print_json({
            "folder": doc["folder"],
            "settings": doc["settings"],
            "runs": [
                {k: doc["runs"][p["name"]][k] for k in
                 ("preset", "vocab", "budget", "steps", "tokens", "flops", "nnv", "nv", "d", "lu", "ce", "bpc")}
                for p in doc["plan"]
            ],
            "fits": a["fits"],
            "per_model": a["per_model"],
            "optimal_vocab": a["optimal_vocab"],
            "vocab_grows_with_compute": a["vocab_grows_with_compute"],
            "notes": a["notes"],
            **({"plot": str(plot)} if plot else {}),
        })
        return
    _print_sweep(doc)
    if plot is not None:
        out.print(f"plot: {plot}", highlight=False)
