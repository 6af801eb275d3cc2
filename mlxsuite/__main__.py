"""`python -m mlxsuite …`: the same entry point as the `mlxsuite` command."""

from .cli import main

main()
