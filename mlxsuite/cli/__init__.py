"""The `mlxsuite` command: a thin typer shell over the library. One module per command group."""

from __future__ import annotations

import os
import signal
import sys
import time

import typer
from rich.text import Text

from mlxsuite import __version__  # loads the fast BLAS before anything imports mlx.core
from mlxsuite.cli import (
    bench,
    cache,
    chat,
    convert,
    doctor,
    evaluate,
    generate,
    kvp,
    moma,
    quickstart,
    tokenizer,
    train,
    vocab,
)
from mlxsuite.cli.common import err
from mlxsuite.cli.flags import with_flags
from mlxsuite.platform.errors import UserError

app = typer.Typer(
    rich_markup_mode=None,
    name="mlxsuite",
    help="Train, convert and profile small language models in MLX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("doctor")(doctor.doctor)
app.add_typer(tokenizer.app, name="tokenizer")
app.command("train")(train.train)
app.command("eval")(evaluate.evaluate)
app.command("generate")(generate.generate)
app.command("chat")(chat.chat)
app.command("cache-prompt")(generate.cache_prompt)
app.command("quickstart")(quickstart.quickstart)
app.add_typer(vocab.app, name="vocab")
app.add_typer(convert.app, name="convert")
app.add_typer(bench.app, name="bench")
app.add_typer(kvp.app, name="kvp")
app.add_typer(moma.app, name="moma")
app.add_typer(cache.app, name="cache")


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
):
    """Eager: `--version` answers before click looks for a command."""


def _is(exc: BaseException, name: str) -> bool:
    """Match click's exceptions by class name: typer >= 0.29 raises its own vendored copies of them."""
    return any(c.__name__ == name for c in type(exc).__mro__)


def _rank() -> int:
    """This process's rank under `mlx.launch` (which sets MLX_RANK), 0 alone."""
    try:
        return int(os.environ.get("MLX_RANK", "0"))
    except ValueError:
        return 0


def _exit_quietly(code: int) -> None:
    """Another rank than 0 leaves the message to rank 0, which checks the same things: it waits a moment first,
    because mlx.launch stops the remaining ranks as soon as one exits with an error."""
    time.sleep(RANK_EXIT_DELAY)
    sys.exit(code)


RANK_EXIT_DELAY = 2.0


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input is one line on stderr and exit code 2, never a traceback. Under `mlx.launch` only
    rank 0 prints it; every rank exits with the same status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="mlxsuite")
    except UserError as e:
        _fail(2, with_flags(str(e)), error=True)
    except KeyboardInterrupt:
        _fail(130, "interrupted")
    except Exception as e:
        if _is(e, "NoArgsIsHelpError"):
            print(e.ctx.get_help())
            sys.exit(0)
        if _is(e, "UsageError"):
            _fail(2, " ".join(e.format_message().split()), error=True)
        if _is(e, "Exit"):
            rv = e.exit_code
        elif _is(e, "Abort"):
            _fail(130, "interrupted")
        else:
            raise
    if rv == 130:  # typer turns a KeyboardInterrupt inside a command into exit status 130, silently
        _fail(130, "interrupted")
    if isinstance(rv, int) and rv:
        sys.exit(rv)


def _fail(code: int, message: str, error: bool = False) -> None:
    """One line on stderr (from rank 0 only under mlx.launch) and exit `code`; the message as it is (a path or
    text in square brackets is not rich markup)."""
    if _rank() != 0:
        _exit_quietly(code)
    err.print(Text.assemble(("error:", "red"), " ", message) if error else message, highlight=False, soft_wrap=True)
    sys.exit(code)
