"""`mlxsuite vocab`: Vocabulary scaling laws: predict, plan, fit compression (and `sweep`, in `vocab_sweep`)."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mlxsuite.cli import vocab_sweep
from mlxsuite.cli.common import err, out, parse_int_list, positive, print_json, print_whole
from mlxsuite.platform.atomic import write_json
from mlxsuite.platform.errors import UserError
from mlxsuite.vocab import scaling
from mlxsuite.vocab.sweep import closest_preset, measure_compression

app = typer.Typer(
    rich_markup_mode=None, help="Vocabulary scaling laws: predict, plan, fit compression, sweep.", no_args_is_help=True
)


class Approach(StrEnum):
    isoflops = "isoflops"
    derivative = "derivative"
    parametric = "parametric"


COMPRESSION_HELP = "f(V) constants from `mlxsuite vocab fit-compression --save` (default: the paper's)."


def _compression(path: Optional[str]) -> scaling.Compression:
    return scaling.PAPER_COMPRESSION if path is None else scaling.Compression.load(path)


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
    law = scaling.derivative_law_for(f)
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
    print_whole(table)
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
    result = scaling.plan_budget(flops, approach.value, d, f, scaling.derivative_law_for(f))
    result["preset"] = closest_preset(result["nnv"], flops, f)
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
    print_whole(table)
    if p["vocab"] < 320:
        out.print("Note: the preset's vocabulary is below 320, the smallest tokenizer mlxsuite trains.")


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
    vocab_sizes = parse_int_list("--sizes", sizes)
    if save is not None and not save.parent.is_dir():
        raise UserError(f"cannot write {save}: folder {save.parent} does not exist")

    def progress(info: dict) -> None:
        err.print(
            f"V = {info['vocab']:>7,}: {info['tokens_per_char']:.5f} tokens/char ({info['seconds']:.1f} s)",
            highlight=False,
        )

    doc = measure_compression(corpus, vocab_sizes, progress)
    if save is not None:
        write_json(save, doc)
    if json_out:
        print_json(doc)
        return

    out.print(f"Tokens per character on {doc['corpus']} ({doc['val_chars']:,} held-out characters)", highlight=False)
    table = Table()
    for col in ("V", "measured", "fitted", "error"):
        table.add_column(col, justify="right")
    fit = scaling.Compression.from_dict(doc)
    for v, m, y in zip(doc["sizes"], doc["tokens_per_char"], doc["fitted"]):
        table.add_row(f"{v:,}", f"{m:.5f}", f"{y:.5f}", f"{(y - m) / m:+.2%}")
    print_whole(table)
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


app.command()(vocab_sweep.sweep)
