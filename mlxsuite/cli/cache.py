"""`mlxsuite cache`: what mlxsuite keeps outside the model store (~/.cache/mlxsuite), and clearing it."""

from __future__ import annotations

from typing import Optional

import typer

from mlxsuite.cli.common import out, print_json, print_whole
from mlxsuite.platform.errors import UserError

app = typer.Typer(
    rich_markup_mode=None,
    help="What mlxsuite keeps outside the model store (~/.cache/mlxsuite): list with sizes, clear.",
    no_args_is_help=True,
)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@app.command("list")
def list_caches(json_out: bool = typer.Option(False, "--json", help="Print one JSON document.")):
    """Every cache with its folder, size, what it holds and what bounds it."""
    from rich.table import Table

    from mlxsuite.platform.caches import listing

    rows = listing()
    if json_out:
        print_json(rows)
        return
    table = Table(title="mlxsuite caches (rebuilt when needed; clear with `mlxsuite cache clear NAME`)")
    for col in ("name", "size", "files", "path", "holds", "bound"):
        table.add_column(col, justify="right" if col in ("size", "files") else "left")
    for r in rows:
        table.add_row(r["name"], _mib(r["bytes"]), f"{r['files']:,}", r["path"], r["what"], r["bound"])
    print_whole(table)
    out.print(f"total {_mib(sum(r['bytes'] for r in rows))}", highlight=False)


@app.command("clear")
def clear_caches(
    names: Optional[list[str]] = typer.Argument(None, metavar="NAME...", help="Caches to clear (see `cache list`)."),
    all_caches: bool = typer.Option(False, "--all", help="Clear every cache."),
):
    """Remove caches; each is rebuilt the next time it is needed."""
    from mlxsuite.platform.caches import clear, listing

    if all_caches == bool(names):
        raise UserError("name the caches to clear (see `mlxsuite cache list`), or pass --all")
    freed = clear([r["name"] for r in listing()] if all_caches else names)
    for name, n in freed.items():
        out.print(f"cleared {name}: {_mib(n)}", highlight=False)
