"""`mlxsuite quickstart`: the end-to-end demonstration on the embedded corpus."""

from __future__ import annotations

import typer

from ..quickstart import run_quickstart
from .common import TrainProgress, err, out, print_json


def quickstart(
    name: str = typer.Option("quickstart-lm", help="Store name of the model to train (reused when already trained)."),
    steps: int = typer.Option(300, help="Training steps."),
    fresh: bool = typer.Option(False, help="Retrain even if a finished model is in the store."),
    json_out: bool = typer.Option(False, "--json"),
):
    """Train a tokenizer and a tiny LM on the Python stdlib, report validation loss, print a sample."""
    with TrainProgress(quiet=json_out) as progress:
        result = run_quickstart(name, steps, fresh, callback=progress)
    if json_out:
        print_json(result)
        return
    val = result["eval"]
    err.print("")
    out.print(f"[bold]model[/bold] {result['folder']} ({'reused' if result['reused'] else 'trained'})")
    out.print(f"[bold]validation[/bold] CE {val['ce']:.4f} nats/token, {val['bpc']:.4f} bits/char, L_u {val['lu']:.4f}")
    out.print("[bold]sample[/bold] (greedy):")
    out.print(result["prompt"] + result["sample"], markup=False, highlight=False)
