"""What every command shares: stderr console for progress, stdout for results, one-line errors."""

from __future__ import annotations

import json
import math

from rich.console import Console

from ..errors import UserError

err = Console(stderr=True)  # progress, notes and errors
out = Console()  # results (tables, or one JSON document with --json)


def print_json(obj) -> None:
    """One JSON document on stdout, nothing else."""
    print(json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def positive(name: str, value: float | int | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise UserError(f"{name} must be a positive number, got {value}")


def generation_prompt(prompt: str, max_tokens: int, temperature: float) -> str:
    """Check the sampling options shared by the generate commands; '-' reads the prompt from stdin."""
    import sys

    if max_tokens <= 0:
        raise UserError(f"max-tokens must be positive, got {max_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    return sys.stdin.read() if prompt == "-" else prompt


def parse_int_list(name: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"{name} must list positive integers, got {text!r}")
    return values


class TrainProgress:
    """Renders the trainer's callback events: a progress bar with loss, tokens/s and ETA; eval and save lines."""

    def __init__(self, quiet: bool = False, label: str = "train"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.quiet = quiet
        self.progress = Progress(
            TextColumn(f"[bold]{label}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            disable=quiet,
            transient=False,
        )
        self.task = None
        self.started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started:  # the live display starts with the first event, so an early error prints only itself
            self.progress.stop()

    def __call__(self, event: str, info: dict) -> None:
        if self.quiet:
            return
        if not self.started:
            self.progress.start()
            self.started = True
        if event == "start":
            self.task = self.progress.add_task("train", total=info["steps"], completed=info["step"], stats="")
            if info["step"]:
                self.progress.console.print(f"resumed at step {info['step']}")
        elif event == "step" and self.task is not None:
            stats = f"loss {info['loss']:.3f}  {info['tokens_per_s']:,.0f} tok/s"
            self.progress.update(self.task, completed=info["step"], stats=stats)
        elif event == "eval":
            parts = [f"{k} {v:.4f}" for k, v in info.items() if k in ("ce", "lu", "bpc", "ppl") or k.startswith("loss")]
            self.progress.console.print(f"step {info['step']}: val " + "  ".join(parts))
        elif event in ("corpus", "tokenizer", "model"):
            text = "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in info.items())
            self.progress.console.print(f"[dim]{event}: {text}[/dim]")
