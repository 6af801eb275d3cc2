"""mlxsuite: train, convert and profile small language models in MLX.

Importing the package loads an optimized BLAS for MLX's CPU backend on Linux before `mlx.core` is imported
(`mlxsuite.platform.blas`; MLX binds `cblas_sgemm` when `mlx.core` loads, so the library must be in the global
symbol scope first): `import mlxsuite` must come before `import mlx.core` in scripts. Nothing else happens on import.
"""

from mlxsuite.platform import __version__, load_fast_blas

load_fast_blas()
