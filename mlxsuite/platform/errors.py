class UserError(Exception):
    """Bad input from the user: the CLI prints the message as one line on stderr and exits with code 2."""
