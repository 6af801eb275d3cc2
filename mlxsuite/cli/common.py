"""What every command shares: stderr console for progress, stdout for results, one-line errors."""

from __future__ import annotations

import functools
from dataclasses import dataclass
import inspect
import json
import math
from typing import Callable, Optional

import typer
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
        elif event in ("corpus", "tokenizer", "model", "baseline"):
            text = "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in info.items())
            self.progress.console.print(f"[dim]{event}: {text}[/dim]")


# The options of every training command (`train`, `kvp train`, `moma train`), declared once. The trainer's (name →
# flag, help) reach the command as one `train: TrainConfig`, with defaults from `TrainConfig` or from the command
# (`train_options(lr=1e-3)`); the run's as one `run: RunFlags`.
TRAIN_OPTIONS = {
    "steps": ("--steps", "Optimizer steps."),
    "lr": ("--lr", "Peak learning rate, reached after the warm-up."),
    "warmup": ("--warmup", "Linear warm-up steps."),
    "schedule": ("--lr-schedule", "Decay after the warm-up: cosine (the vocabulary paper's) or linear (MoMa's)."),
    "min_lr_ratio": ("--min-lr-ratio", "The decay ends at lr × this."),
    "grad_accum": ("--grad-accum", "Split each batch into this many micro-batches (same result, less memory)."),
    "grad_clip": ("--grad-clip", "Clip the global gradient norm to this (0: no clipping)."),
    "weight_decay": ("--weight-decay", "AdamW weight decay (never on norms and biases)."),
    "save_every": ("--save-every", "Checkpoint every N steps (and at the end): what --resume continues from."),
    "eval_every": ("--eval-every", "Validate every N steps (and at the end)."),
    "log_every": ("--log-every", "Log the training loss every N steps."),
    "compile": ("--compile/--no-compile", "Compile the training step (mx.compile)."),
}
RUN_OPTIONS = {
    "device": (None, "--device", "cpu or gpu (default: MLX's default device)."),
    "resume": (False, "--resume", "Continue the run in --out from its last checkpoint, with the settings it began with."),
    "force": (False, "--force", "Start over, replacing an existing --out."),
    "json_out": (False, "--json", "Print the final metrics as one JSON document on stdout."),
    "quiet": (False, "--quiet", "No progress output."),
}


@dataclass
class RunFlags:
    device: Optional[str] = None
    resume: bool = False
    force: bool = False
    json_out: bool = False
    quiet: bool = False
    given: frozenset = frozenset()  # the options given on the command line (a resumed run refuses changed ones)


def train_options(**defaults):
    """Add the training options to a typer command (see TRAIN_OPTIONS and RUN_OPTIONS)."""
    from ..trainer import TrainConfig

    base = TrainConfig()

    def option(name, default, flag, text):
        kind = Optional[str] if default is None else type(default)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                 default=typer.Option(default, flag, help=text))

    def decorate(command):
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name not in ("train", "run")]
        context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        added = [option(n, defaults.get(n, getattr(base, n)), flag, text) for n, (flag, text) in TRAIN_OPTIONS.items()]
        added += [option(n, default, flag, text) for n, (default, flag, text) in RUN_OPTIONS.items()]

        @functools.wraps(command)
        def wrapper(ctx: typer.Context, *args, **kwargs):
            config = TrainConfig(**{name: kwargs.pop(name) for name in TRAIN_OPTIONS})
            given = frozenset(n for n in ctx.params if ctx.get_parameter_source(n).name not in ("DEFAULT", "DEFAULT_MAP"))
            flags = RunFlags(**{name: kwargs.pop(name) for name in RUN_OPTIONS}, given=given)
            return command(*args, train=config, run=flags, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[context] + own + added)
        wrapper.__annotations__ = {"ctx": typer.Context,
                                   **{k: v for k, v in command.__annotations__.items() if k in {p.name for p in own}},
                                   **{p.name: p.annotation for p in added}}
        return wrapper

    return decorate


def run_training(train_fn, spec, run: RunFlags, label: str, summary: Callable[[dict], str],
                 progress_class=None) -> None:
    """Run a recipe's training function with progress on stderr (rank 0 only), then print its result."""
    import mlx.core as mx

    rank = mx.distributed.init().rank()
    with (progress_class or TrainProgress)(quiet=run.quiet or run.json_out or rank != 0, label=label) as progress:
        result = train_fn(spec, resume=run.resume, force=run.force, callback=progress, given=run.given)
    if rank != 0:
        return
    if run.json_out:
        print_json(result)
    else:
        out.print(summary(result), highlight=False, soft_wrap=True)
