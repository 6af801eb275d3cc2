"""`mlxsuite vocab sweep`: the IsoFLOPs sweep: parse, run (`mlxsuite.vocab.sweep`), render."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import mlx.core as mx
import typer
from rich.table import Table

from mlxsuite.cli.common import Progress, err, out, parse_int_list, positive, print_json, print_whole
from mlxsuite.platform.errors import UserError
from mlxsuite.platform.plots import check_path
from mlxsuite.vocab import scaling
from mlxsuite.vocab import sweep as sw


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
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=err,
            disable=quiet,
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
            spread = f", {info['mine']} of them in this process of {info['ranks']}" if info["ranks"] > 1 else ""
            p.console.print(
                f"sweep in {info['folder']}: {info['runs']} runs, {info['done']} already finished, {todo} left"
                f"{spread}; estimated ~{info['estimate_s'] / 60:.0f} min",
                highlight=False,
            )
            if self.overall is not None:
                p.remove_task(self.overall)
            self.overall = p.add_task("[bold]runs[/bold]", total=info["runs"], completed=info["done"], stats="")
        elif event == "extend":
            p.console.print(f"optimum on the grid's edge: adding {', '.join(info['runs'])}", highlight=False)
        elif event == "shared_tokenizer":
            how = f"trained in {info['seconds']:.0f} s" if info["trained"] else "reused"
            p.console.print(
                f"tokenizer V={info['vocab']:,} {how}: {info['tokens_per_char']:.4f} tokens/char", style="dim"
            )
        elif event == "run_start":
            if self.run_task is not None:
                p.remove_task(self.run_task)
            self.run_task = p.add_task(f"{info['run']}", total=info["steps"], completed=0, stats="")
            if info["resume"]:
                p.console.print(f"{info['run']}: resuming from its checkpoint", highlight=False)
        elif event == "start" and self.run_task is not None:
            p.update(self.run_task, completed=info["step"])
        elif event == "step" and self.run_task is not None:
            p.update(
                self.run_task,
                completed=info["step"],
                stats=f"loss {info['loss']:.3f}  {info['tokens_per_s']:,.0f} tok/s",
            )
        elif event == "run_end":
            m = info["metrics"]
            if self.run_task is not None:
                p.remove_task(self.run_task)
                self.run_task = None
            if not info["skipped"]:
                p.advance(self.overall)
            took = "  (already finished)" if info["skipped"] else f"  ({info['seconds']:.0f} s)"
            p.console.print(
                f"{info['run']}: L_u {m['lu']:.4f}  CE {m['ce']:.4f}  bits/char {m['bpc']:.4f}{took}", highlight=False
            )


def _e(x: float) -> str:
    """An exponent to 3 decimals, without "-0.000"."""
    return f"{round(x, 3) + 0.0:.3f}"


def _moves(fit: dict) -> str:
    if "ratio" not in fit:
        return ""
    return f"; V_opt ×{fit['ratio']:.2f} over the budgets (V ∝ C^{_e(fit['exponent'])})"


def _spread(value: float, a: dict, key: str) -> str:
    """An exponent with its bootstrap interval (the analysis's spread of `key`_exponent), when there is one."""
    s = a.get("spread", {}).get(f"{key}_exponent")
    return _e(value) + (f" [{_e(s['low'])}, {_e(s['high'])}]" if s else "")


def _print_across_sizes(a: dict) -> None:
    """The paper's claim across sizes: the optimal V against N_nv at each budget."""
    across = a.get("vocab_vs_nnv")
    if not across or across["sizes"] < 2:
        return
    presets = list(dict.fromkeys(p for e in across["per_budget"] for p in e["presets"]))
    table = Table(title="optimal V against N_nv at a fixed budget (the paper: larger models, larger V)")
    table.add_column("budget", justify="right")
    for p in presets:
        table.add_column(p, justify="right")
    for col in ("V ∝ N_nv^x", "N_v ∝ N_nv^γ", "paper's approach 3: γ"):
        table.add_column(col, justify="right")
    for e in across["per_budget"]:
        v = dict(zip(e["presets"], e["vocab"]))
        flags = dict(zip(e["presets"], e["flags"]))
        cells = [f"{v[p]:,.0f}" + ("" if flags[p] == "interior" else " (edge)") if p in v else "" for p in presets]
        slopes = [_e(e[k]) if k in e else "" for k in ("vocab_exponent", "nv_exponent", "paper_nv_exponent")]
        table.add_row(f"{e['budget']:.3g}", *cells, *slopes)
    print_whole(table)
    if across["vocab_exponent"] is not None:
        out.print(
            "at a fixed budget (pooled over budgets): optimal V ∝ "
            f"N_nv^{_spread(across['vocab_exponent'], a, 'vocab_vs_nnv')}, "
            f"N_v ∝ N_nv^{_spread(across['nv_exponent'], a, 'nv_vs_nnv')} (bootstrap 5-95 % over runs); the paper's "
            f"approach 3 at the same points γ = {_e(across['paper_nv_exponent_at_fixed_c'])}, its compute-optimal "
            f"γ = {_e(across['paper_gamma_compute_optimal'])} (0.42 / 0.5)",
            highlight=False,
        )
    both = across.get("with_data")
    if both is not None:
        out.print(
            f"at equal tokens trained ({both['points']} interior optima): optimal V ∝ "
            f"N_nv^{_spread(both['nnv_exponent'], a, 'vocab_vs_nnv_at_equal_data')} · "
            f"D^{_spread(both['data_exponent'], a, 'vocab_vs_data')}",
            highlight=False,
        )


def _print_sweep(doc: dict) -> None:
    a = doc["analysis"]
    _print_runs(doc)
    _print_optimal_vocab(a)
    _print_fits(a)


def _print_runs(doc: dict) -> None:
    table = Table(title="runs")
    for col in ("preset", "V", "budget", "steps", "tokens", "L_u", "CE", "bits/char"):
        table.add_column(col, justify="left" if col == "preset" else "right")
    for p in doc["plan"]:
        r = doc["runs"][p["name"]]
        table.add_row(
            r["preset"],
            f"{r['vocab']:,}",
            f"{r['budget']:.3g}",
            f"{r['steps']:,}",
            f"{r['tokens']:,}",
            f"{r['lu']:.4f}",
            f"{r['ce']:.4f}",
            f"{r['bpc']:.4f}",
        )
    print_whole(table)


def _print_optimal_vocab(a: dict) -> None:
    table = Table(title="optimal V per budget and size (parabola of L_u in ln V)")
    for col in ("budget", "preset", "V_opt", "L_u at V_opt", "flag", "measured best V", "V_opt by bits/char"):
        table.add_column(col, justify="left" if col in ("preset", "flag") else "right")
    best = {(o["budget"], o["preset"]) for o in a["optimal_vocab"]}
    for m in a["per_model"]:
        mark = " ★" if (m["budget"], m["preset"]) in best else ""
        bpc = m.get("by_bpc")
        table.add_row(
            f"{m['budget']:.3g}",
            m["preset"] + mark,
            f"{m['vocab']:,.0f}",
            f"{m['lu']:.4f}",
            m["flag"],
            f"{m['measured_best_vocab']:,}",
            f"{bpc['vocab']:,.0f}" if bpc else "",
        )
    print_whole(table)
    out.print(
        "★ = the model size with the lowest L_u at that budget; flag other than interior: the minimum is at the "
        "grid's edge (low/high-edge) or the parabola is not convex (the measured best is shown)",
        highlight=False,
    )

    fits = a["fits"]
    by_approach = {
        "measured": a["measured"],
        "approach 1": fits["isoflops"],
        "approach 2": fits["derivative"],
        "approach 3": fits["parametric"],
    }
    table = Table(title="optimal V per budget, by approach")
    table.add_column("budget", justify="right")
    for name in by_approach:
        table.add_column(name, justify="right")
    for o in a["optimal_vocab"]:
        cells = []
        for fit in by_approach.values():
            v = next((x["vocab"] for x in fit.get("vocab", []) if x["budget"] == o["budget"]), None)
            cells.append("" if v is None else f"{v:,.0f}")
        table.add_row(f"{o['budget']:.3g}", *cells)
    print_whole(table)


def _print_free(a: dict) -> None:
    """Approach 1 with the N_nv and H exponents free too, with their bootstrap spreads."""
    a1f = a["fits"].get("isoflops_free", {})
    if "laws" in a1f:
        out.print(
            f"approach 1 with free exponents: N_nv ∝ C^{_spread(a1f['laws']['nnv']['exponent'], a, 'a1_free_nnv')}, "
            f"N_v ∝ C^{_spread(a1f['laws']['nv']['exponent'], a, 'a1_free_nv')}, "
            f"H ∝ C^{_spread(a1f['laws']['characters']['exponent'], a, 'a1_free_characters')} "
            f"(points on the envelope from {len({p['nnv'] for p in a1f['selected_points']})} size(s))",
            highlight=False,
        )


def _print_fits(a: dict) -> None:
    """The exponents of the three approaches, at fixed size, across sizes; the grows verdict; the notes."""
    fits = a["fits"]
    out.print(f"measured (lowest L_u per budget){_moves(a['measured'])}", highlight=False)
    a1 = fits["isoflops"]
    if "skipped" in a1:
        out.print(f"approach 1 (IsoFLOPs): skipped, {a1['skipped']}", highlight=False)
    else:
        laws, paper = a1["laws"], scaling.PAPER_ISOFLOPS
        how = "free exponents" if a1["free_exponents"] else "N_nv and H exponents fixed at 0.5"
        out.print(
            f"approach 1 (IsoFLOPs, lower envelope of {a1['points']} points → {len(a1['selected'])}, Huber, {how}): "
            f"N_nv ∝ C^{_e(laws['nnv']['exponent'])}, "
            f"N_v ∝ C^{_spread(laws['nv']['exponent'], a, 'a1_free_nv' if a1['free_exponents'] else 'a1_nv')}, "
            f"H ∝ C^{_e(laws['characters']['exponent'])} (paper: {paper.nnv.exponent:.2f}, "
            f"{paper.nv.exponent:.3f}, {paper.characters.exponent:.2f}){_moves(a1)}",
            highlight=False,
        )
    a2 = fits["derivative"]
    if "skipped" in a2:
        out.print(f"approach 2 (derivative): skipped, {a2['skipped']}", highlight=False)
    else:
        anchor = a2["anchor"]
        out.print(
            f"approach 2 (derivative): γ = {_e(a2['gamma'])} (paper {scaling.PAPER_DERIVATIVE.gamma:.3f}) on the "
            f"∂C/∂V roots of {len(a2['roots'])} shapes with f(V) from these tokenizers; anchored at {anchor['preset']}"
            f", V = {anchor['vocab']:,.0f} (C = {anchor['budget']:.3g}){_moves(a2)}",
            highlight=False,
        )
    _print_free(a)
    for p, t in fits["vocab_vs_compute_by_preset"].items():
        out.print(
            f"  {p} at fixed size: optimal V ∝ C^{_spread(t['exponent'], a, f'vocab_vs_c_{p}')}, "
            f"×{t['ratio']:.2f} over {len(t['vocab'])} budgets",
            highlight=False,
        )
    a3 = fits["parametric"]
    if "skipped" in a3:
        out.print(f"approach 3 (parametric loss): skipped, {a3['skipped']}", highlight=False)
    else:
        paper = scaling.PAPER_PARAMETRIC
        out.print(
            f"approach 3 (parametric loss, {a3['points']} runs): L_u = -{a3['E']:.3f} + {a3['A1']:.3g}/N_nv^"
            f"{a3['alpha1']:.3f} + {a3['A2']:.3g}/N_v^{a3['alpha2']:.3f} + {a3['B']:.3g}/D^{a3['beta']:.3f} "
            f"(N in millions, D in billions; paper α1 = β = {paper.beta:.3f}, α2 = {paper.alpha2:.3f}); "
            f"RMSE {a3['rmse']:.4f}{_moves(a3)}",
            highlight=False,
        )
    _print_across_sizes(a)
    grows = a["vocab_grows_with_compute"]
    if grows is not None:
        out.print(
            f"measured optimal V {'grows' if grows else 'does not grow monotonically'} with compute across the "
            "budgets here",
            highlight=False,
        )
    for n in a["notes"]:
        out.print(f"note: {n}", highlight=False)


RUN_KEYS = ("preset", "vocab", "budget", "steps", "tokens", "flops", "nnv", "nv", "d", "lu", "ce", "bpc", "seconds")
ANALYSIS_KEYS = ("fits", "per_model", "vocab_vs_nnv", "spread", "optimal_vocab", "measured", "vocab_grows_with_compute")


def _json_doc(doc: dict, plot: Optional[Path]) -> dict:
    a = doc["analysis"]
    return {
        "folder": doc["folder"],
        "settings": doc["settings"],
        "runs": [{k: doc["runs"][p["name"]][k] for k in RUN_KEYS} for p in doc["plan"]],
        **{k: a[k] for k in (*ANALYSIS_KEYS, "notes")},
        **({"plot": str(plot)} if plot else {}),
    }


def _print_plan(plans: list, settings, json_out: bool) -> None:
    est = sw.estimate_seconds(plans)
    if json_out:
        print_json({"runs": [vars(p) for p in plans], "estimate_s": est})
        return
    table = Table(title=f"{len(plans)} runs, {settings.tokens_per_step} tokens per step")
    for col in ("run", "N_nv", "N_v", "steps", "tokens", "FLOPs"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for p in plans:
        table.add_row(p.name, f"{p.nnv:,}", f"{p.nv:,}", f"{p.steps:,}", f"{p.tokens:,}", f"{p.flops:.3g}")
    print_whole(table)
    out.print(
        f"estimated time: ~{est / 60:.0f} min in one process (training at {sw.ASSUMED_FLOPS_PER_S:.0e} FLOPs/s, "
        "run start-up and tokenizers included; `mlx.launch -n N` divides it by about N)",
        highlight=False,
    )


def sweep(
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Text file, folder or .jsonl (default: the stdlib)."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="FLOPs budgets C (C = 6·(N_nv + V·d)·D)."),
    presets: Optional[str] = typer.Option(None, "--presets", help="Model sizes (N_nv) to train at every budget."),
    vocab_sizes: Optional[str] = typer.Option(None, "--vocab-sizes", help="Vocabulary sizes (>= 128)."),
    out_name: str = typer.Option("vocab-sweep", "--out", help="Sweep folder: a store name or a path."),
    seq_len: int = typer.Option(64, "--seq-len", help="Tokens per training sequence."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per step."),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate of every run."),
    seed: int = typer.Option(0, "--seed", help="Seed of every run's initialization and data order."),
    eval_chars: int = typer.Option(
        32_000, "--eval-chars", help="Validation characters for the final L_u (the same text for every V)."
    ),
    free_exponents: bool = typer.Option(
        False, "--free-exponents", help="Approach 1: fit the N_nv and H exponents too (the reference fixes 0.5)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A smaller grid: budgets 4e10, 8e10 × V = 128, 205, 328, 524 (24 runs at 3 sizes)."
    ),
    extend_edges: int = typer.Option(
        0, "--extend-edges", help="Rounds adding one V beyond every (size, budget) optimum on the grid's edge."
    ),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Write L_u vs V, optimal V vs N_nv and optimal V vs compute (PNG)."
    ),
    force: bool = typer.Option(False, "--force", help="Delete the sweep folder and start over."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (steps per run, time estimate) and stop."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
):
    """IsoFLOPs sweep (Tao et al. 2024): train every preset × vocabulary size at every FLOPs budget, then fit.

    Each run trains D = C / (6(N_nv + V·d)) tokens, so all runs of a budget spend the same FLOPs. Per budget and
    model size, L_u is fitted with a parabola in ln V. Then the paper's three approaches, each giving an optimal V
    per budget: 1, power laws of N_nv, N_v and H against C on the lower envelope (as the reference code); 2, γ from
    the roots of ∂C/∂V = 0 with f(V) from these tokenizers; 3, the parametric loss over all runs. One tokenizer per
    V (without byte fallback, so V can start at 128) is trained once and shared. Rerunning the same command continues
    an interrupted sweep (finished runs are kept, a half-finished run resumes from its checkpoint) and redoes the
    analysis, e.g. with --free-exponents.

    Default: budgets 1e11, 1.8e11, 3.2e11, 5.6e11 × micro, mini, midi (N_nv 0.1M-1.55M) × V = 128, 205, 328, 524,
    839 (60 runs), about 45 minutes in one process on 2 cores (20 under `mlx.launch -n 2`); --quick 24 runs.
    Besides the optimal V against compute, the optimal V against N_nv at each budget (the paper: larger models want
    larger vocabularies) and against N_nv and tokens together, every exponent with a bootstrap spread over the runs.
    --extend-edges N adds up to N vocabularies beyond an optimum that sits on the grid's edge. --dry-run prints the
    plan and a time estimate for any grid.

    Under `mlx.launch -n N -- mlxsuite vocab sweep …` (several machines: a hostfile) every process trains its share
    of the runs and rank 0 fits, prints and plots when all are done: the same result as one process.
    """
    if quick and (budgets or vocab_sizes):
        raise UserError("--quick sets the budgets and vocabulary sizes: drop --budgets and --vocab-sizes, or --quick")
    if extend_edges < 0:
        raise UserError(f"--extend-edges must be >= 0, got {extend_edges}")
    if quick:
        budgets = ",".join(str(c) for c in sw.QUICK_BUDGETS)
        vocab_sizes = ",".join(str(v) for v in sw.QUICK_VOCAB_SIZES)
    rank = mx.distributed.init().rank()
    positive("--lr", lr)
    for name, v in (("--seq-len", seq_len), ("--batch-size", batch_size), ("--eval-chars", eval_chars)):
        if v <= 0:
            raise UserError(f"{name} must be a positive integer, got {v}")
    grid = sw.SweepGrid(
        budgets=_parse_float_list("--budgets", budgets) if budgets else list(sw.DEFAULT_BUDGETS),
        presets=[p.strip() for p in presets.split(",") if p.strip()] if presets else list(sw.DEFAULT_PRESETS),
        vocab_sizes=parse_int_list("--vocab-sizes", vocab_sizes) if vocab_sizes else list(sw.DEFAULT_VOCAB_SIZES),
    )
    settings = sw.SweepSettings(
        corpus=corpus, seq_len=seq_len, batch_size=batch_size, lr=lr, seed=seed, eval_chars=eval_chars
    )
    if plot is not None:
        check_path(plot)
    if dry_run:
        if rank == 0:
            _print_plan(sw.plan_runs(grid, settings), settings, json_out)
        return
    with _SweepProgress(quiet or json_out or rank != 0) as progress:
        doc = sw.run_sweep(
            out_name,
            grid,
            settings,
            force=force,
            callback=progress,
            free_exponents=free_exponents,
            extend_edges=extend_edges,
        )
    if rank != 0:
        return
    if plot is not None:
        sw.plot_sweep(doc, plot)
    if json_out:
        print_json(_json_doc(doc, plot))
        return
    _print_sweep(doc)
    if plot is not None:
        out.print(f"plot: {plot}", highlight=False)
