"""`mlxsuite eval`: validation cross-entropy, bits per character and unigram-normalized loss of a model."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from mlxsuite.cli.common import model_argument, positive, print_json, print_whole, task_progress
from mlxsuite.train.lm import eval_model


def evaluate(
    model: str = model_argument(),
    corpus: Optional[str] = typer.Option(
        None,
        "--corpus",
        help="Text file, folder or JSONL, or 'stdlib' (default: the corpus the model was trained on, as its "
        "config records it; else the Python stdlib).",
    ),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per validation window."),
    windows: int = typer.Option(64, "--windows", help="Validation windows of seq-len tokens."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (tokens, ce, ppl, bpc, lu)."),
):
    """Evaluate a stored model on a corpus's validation split."""
    positive("seq-len", seq_len)
    positive("windows", windows)
    with task_progress("eval") as progress:
        result = eval_model(model, corpus, seq_len, windows, progress=progress)
    if json_out:
        print_json(result)
        return
    via = f", through {result['implementation']}" if result["implementation"].startswith("mlx-lm") else ""
    table = Table(title=f"{result['model']} on {result['corpus']} (validation{via})")
    for col in ("tokens", "CE (nats/token)", "perplexity", "bits/char", "L_u (nats/token)"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{result['tokens']:,}",
        f"{result['ce']:.4f}",
        f"{result['ppl']:.2f}",
        f"{result['bpc']:.4f}",
        f"{result['lu']:.4f}",
    )
    print_whole(table)
