"""The one exception family grulm raises for bad input.

The CLI turns a :class:`GrulmError` into a one-line message and exit status 2, with no
traceback; anything else is a bug and keeps its traceback.
"""


class GrulmError(Exception):
    """Bad input: the message says what was wrong and what to do.

    ``quiet`` marks a copy that another process prints (in a distributed run, every rank
    raises a set-up error and rank 0 alone shows it).
    """

    quiet: bool = False


class ConfigError(GrulmError, ValueError):
    """An invalid size, rate, choice or combination of options."""


class DataError(GrulmError):
    """A corpus that cannot be found, read, verified or batched."""


class CheckpointError(GrulmError):
    """A checkpoint that cannot be written or does not load."""
