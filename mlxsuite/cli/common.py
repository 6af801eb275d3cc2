"""What every command shares: stderr console for progress, stdout for results, one-line errors."""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal, Optional

import rich.progress
import typer
from rich.console import Console
from rich.text import Text

from mlxsuite.platform.errors import UserError
from mlxsuite.train.trainer import TrainConfig

# markup off: paths, names and messages print as they are ("[plot]" stays); styled parts are Text objects, or
# `markup=True` with the user's text escaped
# soft_wrap: a line is never broken at the console's width (80 columns in a file or a pipe)
err = Console(stderr=True, markup=False, soft_wrap=True)  # progress, notes and errors
out = Console(markup=False, soft_wrap=True)  # results (tables, or one JSON document with --json)


def print_whole(renderable) -> None:
    """A table (or tables) on stdout: as rich fits it on a terminal; in a pipe or a file at its natural width, so
    that every cell, header and title is there in full (never squeezed to 80 columns or cut to "…")."""
    if out.is_terminal:
        out.print(renderable)
        return
    Console(width=natural_width(renderable), markup=False, highlight=False).print(renderable)


def natural_width(renderable) -> int:
    wide = Console(file=io.StringIO(), width=10_000, markup=False, highlight=False)
    wide.print(renderable)
    return max((len(line.rstrip()) for line in wide.file.getvalue().splitlines()), default=1)


def print_note(note: str) -> None:
    """`note: …` on stderr, the text as it is."""
    err.print(Text.assemble(("note:", "yellow"), " ", note), highlight=False, soft_wrap=True)


# ---- shared declarations: the model argument, device and dtype choices (validated by the parser) ----------------

Device = Optional[Literal["cpu", "gpu"]]
Dtype = Optional[Literal["float32", "bfloat16", "float16"]]


def model_argument(help: str = "A model: store name, folder, Hugging Face repo id or .gguf file.", **kw):
    return typer.Argument(..., metavar="MODEL", help=help, **kw)


def device_option():
    return typer.Option(None, "--device", help="cpu or gpu (default: MLX's default device).")


def dtype_option():
    return typer.Option(None, "--dtype", help="Weights' dtype (default: float32 on the CPU, bfloat16 on a GPU).")


# ---- progress -----------------------------------------------------------------------------------------------

PLAIN_EVERY = 5.0  # seconds between plain progress lines when stderr is not a terminal


class Progress(rich.progress.Progress):
    """rich's live bars on a terminal. Elsewhere (a file, a pipe, a CI log) no bar: a plain line per task when it
    starts, then at most every PLAIN_EVERY seconds and when it finishes — `label  done/total  fields  elapsed
    ETA` on stderr (the fields: what the task's `stats`, `what` or `name` field holds, e.g. loss and tok/s)."""

    def __init__(self, *columns, console: Console = err, disable: bool = False, **kw):
        self.plain = not disable and not console.is_terminal
        super().__init__(*columns, console=console, disable=disable or self.plain, **kw)
        self._printed: dict = {}  # task id -> time of its last plain line

    def update(self, task_id, **kw) -> None:
        super().update(task_id, **kw)
        if self.plain:
            self._line(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self.plain:
            self._line(task_id)

    def _line(self, task_id) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        now, last = time.monotonic(), self._printed.get(task_id)
        finished = task.total is not None and task.completed >= task.total
        if last is not None and now - last < PLAIN_EVERY and not (finished and last != -1):
            return
        self._printed[task_id] = -1 if finished else now  # -1: its last line is printed
        parts = [Text.from_markup(task.description).plain]
        parts.append(f"{task.completed:,.0f}/{task.total:,.0f}" if task.total is not None else f"{task.completed:,.0f}")
        parts += [str(task.fields[k]) for k in ("stats", "what", "name") if task.fields.get(k)]
        parts.append(f"elapsed {_clock(task.elapsed)}")
        if not finished and task.time_remaining is not None:
            parts.append(f"ETA {_clock(task.time_remaining)}")
        self.console.print("  ".join(parts), markup=False, highlight=False, soft_wrap=True)


STATUS_DELAY = 2.0  # seconds of work before `status` prints its line when stderr is not a terminal


@contextlib.contextmanager
def status(text: str):
    """A spinner with `text` on a terminal; elsewhere the text as one line on stderr once the work has taken
    STATUS_DELAY seconds (a spinner there shows nothing; bad input found at once stays a one-line error)."""
    if err.is_terminal:
        with err.status(text):
            yield
        return
    import threading

    timer = threading.Timer(STATUS_DELAY, lambda: err.print(text, highlight=False))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def task_progress(label: str):
    """Progress of a measurement on stderr, with or without --json (a bar on a terminal, a plain line every few
    seconds elsewhere), fed by the library's `progress(done, total, what)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(label, style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}", style="dim", markup=False),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, what="")

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, what=what)

        yield update


def _clock(seconds: Optional[float]) -> str:
    s = int(seconds or 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


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


def generation_prompt(prompt: str, max_tokens: int, temperature: float, top_k: int = 0) -> str:
    """Check the sampling options shared by the generate commands; '-' reads the prompt from stdin."""
    import sys

    if max_tokens <= 0:
        raise UserError(f"max-tokens must be positive, got {max_tokens}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise UserError(f"top-k must be >= 0 (0: all tokens), got {top_k}")
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
    """Renders the trainer's callback events on stderr: a progress bar with loss, tokens/s and ETA (plain lines
    every few seconds when stderr is not a terminal); eval and save lines."""

    def __init__(self, quiet: bool = False, label: str = "train"):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.quiet, self.label = quiet, label
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
            self.task = self.progress.add_task(
                f"{self.label} step", total=info["steps"], completed=info["step"], stats=""
            )
            if info["step"]:
                self.progress.console.print(f"resumed at step {info['step']}")
        elif event == "step" and self.task is not None:
            stats = f"loss {info['loss']:.3f}  {info['tokens_per_s']:,.0f} tok/s"
            self.progress.update(self.task, completed=info["step"], stats=stats)
        elif event == "eval":  # every metric the recipe reports (ce, lu, bpc; kvp_ce, aux_ce, k_l1; loss_text…)
            parts = [f"{k} {v:.4f}" for k, v in info.items() if isinstance(v, Real) and not isinstance(v, Integral)]
            if parts:
                self.progress.console.print(f"step {info['step']}: val " + "  ".join(parts), highlight=False)
        elif event in ("corpus", "tokenizer", "model", "baseline"):
            text = "  ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in info.items())
            self.progress.console.print(f"{event}: {text}", style="dim", highlight=False, soft_wrap=True)


# The options of every training command (`train`, `kvp train`, `moma train`), declared once. The trainer's (name →
# flag, help) reach the command as one `train: TrainConfig`, with defaults from `TrainConfig` or from the command
# (`train_options(lr=1e-3)`); the run's as one `run: RunFlags`.
TRAIN_OPTIONS = {
    "steps": ("--steps", "Optimizer steps."),
    "lr": ("--lr", "Peak learning rate, reached after the warm-up."),
    "warmup": ("--warmup", "Linear warm-up steps, at most --steps (a tenth of --steps when the default is longer)."),
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
    "resume": (
        False,
        "--resume",
        "Continue the run in --out from its last checkpoint, with the settings it began with.",
    ),
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
    base = TrainConfig()

    kinds = {"device": Device, "schedule": Literal["cosine", "linear"]}

    def option(name, default, flag, text):
        kind = kinds.get(name) or (Optional[str] if default is None else type(default))
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=typer.Option(default, flag, help=text)
        )

    def decorate(command):
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name not in ("train", "run")]
        context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        added = [option(n, defaults.get(n, getattr(base, n)), flag, text) for n, (flag, text) in TRAIN_OPTIONS.items()]
        added += [option(n, default, flag, text) for n, (default, flag, text) in RUN_OPTIONS.items()]

        @functools.wraps(command)
        def wrapper(ctx: typer.Context, *args, **kwargs):
            config = TrainConfig(**{name: kwargs.pop(name) for name in TRAIN_OPTIONS})
            given = frozenset(
                n for n in ctx.params if ctx.get_parameter_source(n).name not in ("DEFAULT", "DEFAULT_MAP")
            )
            _fit_warmup(config, given)
            flags = RunFlags(**{name: kwargs.pop(name) for name in RUN_OPTIONS}, given=given)
            return command(*args, train=config, run=flags, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[context] + own + added)
        wrapper.__annotations__ = {
            "ctx": typer.Context,
            **{k: v for k, v in command.__annotations__.items() if k in {p.name for p in own}},
            **{p.name: p.annotation for p in added},
        }
        return wrapper

    return decorate


def _fit_warmup(config, given: frozenset) -> None:
    """A warm-up longer than the run never reaches the peak learning rate: refused when given, and the default
    shortened to a tenth of a run shorter than it."""
    if config.warmup <= config.steps or "steps" not in given:  # without --steps: the default, or the resumed run's
        return
    if "warmup" in given:
        raise UserError(
            f"--warmup {config.warmup} is longer than --steps {config.steps}: the learning rate would never reach "
            "--lr (give a warm-up of at most --steps)"
        )
    config.warmup = config.steps // 10


def run_training(
    train_fn, spec, run: RunFlags, label: str, summary: Callable[[dict], str], progress_class=None
) -> None:
    """Run a recipe's training function with progress on stderr (rank 0 only), then print its result."""
    import mlx.core as mx

    rank = mx.distributed.init().rank()
    with (progress_class or TrainProgress)(quiet=run.quiet or rank != 0, label=label) as progress:
        result = train_fn(spec, resume=run.resume, force=run.force, callback=progress, given=run.given)
    if rank != 0:
        return
    if run.json_out:
        print_json(result)
    else:
        out.print(summary(result), highlight=False, soft_wrap=True)
