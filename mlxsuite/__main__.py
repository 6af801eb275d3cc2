"""`python -m mlxsuite …`: the same entry point as the `mlxsuite` command."""

from mlxsuite.cli import main

main()
