"""mlxsuite: train, convert and profile small language models in MLX.

Importing the package loads an optimized BLAS for MLX's CPU backend on Linux before `mlx.core` is imported
(`mlxsuite.platform.blas`; MLX binds `cblas_sgemm` when `mlx.core` loads, so the library must be in the global
symbol scope first): `import mlxsuite` must come before `import mlx.core` in scripts. Within the `mlxsuite` command
only, it first takes Ctrl-C (one line, exit 130): the command's imports take seconds, and its console script
imports this package before anything of the CLI runs. See ARCHITECTURE.md ("What `import mlxsuite` does").
"""

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_while_starting(signum, frame):
    _sys.stderr.write("interrupted\n")
    _os._exit(130)


if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "mlxsuite":
    # `cli.main` hands Ctrl-C back to Python (KeyboardInterrupt, caught there) once the commands are loaded.
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)

from mlxsuite.platform import __version__, load_fast_blas  # noqa: E402

load_fast_blas()
