"""matplotlib is the optional `plot` extra: one place to import it headless, or fail with one clear line."""

from __future__ import annotations

import importlib.util

from .errors import UserError

MISSING = "--plot needs matplotlib: pip install 'mlxsuite[plot]'"


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
