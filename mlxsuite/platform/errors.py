"""The one error type for bad input.

A message names the setting it is about by its field name in backticks (`seq_len`, `force`): the library never
names a command-line flag. `mlxsuite.cli` renders such a name as the flag that sets it (`--seq-len`), through its
one table (`cli/flags.py`); a library caller reads the field name.
"""

import re

FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")


class UserError(Exception):
    """Bad input from the user: the CLI prints the message as one line on stderr and exits with code 2."""


def field_names(message: str) -> list[str]:
    """The fields a message names (`name` in backticks)."""
    return FIELD.findall(message)
