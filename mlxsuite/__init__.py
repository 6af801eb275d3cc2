"""mlxsuite: train, convert and profile small language models in MLX.

Importing the package loads an optimized BLAS for MLX's CPU backend on Linux before `mlx.core` is imported
(see `mlxsuite.platform`), so `import mlxsuite` must come before `import mlx.core` in scripts.
"""

from .platform import load_fast_blas

load_fast_blas()

__version__ = "0.1.0"
