"""The one error an operator command ends with (exit 1, one line on stderr)."""


class OperatorError(Exception):
    """What an operator command could not do, in one line for the terminal."""
