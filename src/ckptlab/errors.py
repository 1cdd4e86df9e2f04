"""Errors a user can act on.

A `UserError` is bad input (a missing file, a malformed line, an unknown config key). The CLI prints
its message as one line and exits with code 2, never with a traceback.
"""


class UserError(Exception):
    """Bad input: printed as one line by the CLI, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config key that is unknown, mistyped or out of range."""


class DataError(UserError):
    """A data file that is missing, empty, not UTF-8, or has a malformed record."""


class CheckpointError(UserError):
    """A checkpoint that is incomplete, corrupt, or does not match the run being resumed."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; nothing is written after the step that produced it."""

    exit_code = 3
