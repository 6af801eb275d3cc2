"""mlxsuite: train, convert and profile small language models in MLX.

Importing the package loads an optimized BLAS for MLX's CPU backend on Linux before `mlx.core` is imported
(see `mlxsuite.platform`), so `import mlxsuite` must come before `import mlx.core` in scripts.
"""

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_at_start(signum, frame):
    _sys.stderr.write("interrupted\n")
    _os._exit(130)


if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "mlxsuite":
    # The `mlxsuite` command: Ctrl-C while it imports is one line and exit 130, not an import traceback; the CLI's
    # `main` restores Python's handler (KeyboardInterrupt, caught there) once it starts.
    _signal.signal(_signal.SIGINT, _interrupted_at_start)

from mlxsuite.platform import load_fast_blas  # noqa: E402

load_fast_blas()

__version__ = "0.1.0"
