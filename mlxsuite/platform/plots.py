"""matplotlib is the optional `plot` extra: one place to import it headless, or fail with one clear line."""

from __future__ import annotations

import importlib.util

from mlxsuite.platform import atomic
from mlxsuite.platform.errors import UserError

MISSING = "`plot` needs matplotlib: pip install 'mlxsuite[plot]'"


def require_matplotlib() -> None:
    """Fail early (before long work) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(MISSING)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_path(path) -> None:
    """Fail before the work a plot comes after: matplotlib missing, not a .png, a folder that does not exist, or a
    path that is a folder."""
    from pathlib import Path

    require_matplotlib()
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"`plot` writes a PNG: give a file name ending in .png, got {path}")
    if path.is_dir():
        raise UserError(f"`plot` {path} is a folder: give a file name")
    if not path.parent.resolve().is_dir():
        raise UserError(f"`plot` {path}: folder {path.parent} does not exist")


def save(fig, path, dpi: int = 120) -> None:
    """Write the figure atomically (a temporary sibling, then renamed) and close it."""
    from pathlib import Path

    try:
        atomic.write_file(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        pyplot().close(fig)
