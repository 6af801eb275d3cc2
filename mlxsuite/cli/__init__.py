"""The `mlxsuite` command: a thin typer shell over the library. One module per command group."""

from __future__ import annotations

import sys

import typer

from .. import __version__  # loads the fast BLAS before anything imports mlx.core
from ..errors import UserError
from . import bench, convert, doctor, evaluate, generate, kvp, moma, quickstart, tokenizer, train, vocab
from .common import err

app = typer.Typer(
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
app.command("quickstart")(quickstart.quickstart)
app.add_typer(vocab.app, name="vocab")
app.add_typer(convert.app, name="convert")
app.add_typer(bench.app, name="bench")
app.add_typer(kvp.app, name="kvp")
app.add_typer(moma.app, name="moma")


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="mlxsuite")
    except UserError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        if _is(e, "NoArgsIsHelpError"):
            print(e.ctx.get_help())
            sys.exit(0)
        if _is(e, "UsageError"):
            err.print(f"[red]error:[/red] {' '.join(e.format_message().split())}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if _is(e, "Exit"):
            sys.exit(e.exit_code)
        if _is(e, "Abort"):
            err.print("interrupted")
            sys.exit(130)
        raise
    if isinstance(rv, int) and rv:
        sys.exit(rv)
