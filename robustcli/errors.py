"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations


class RobustError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The CLI prints ``str(error)`` as a single line and exits with code 2, without a traceback.
    """


class ModelNotFoundError(RobustError, KeyError):
    """An unknown model name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(RobustError):
    """A missing, corrupt, truncated or mismatched checkpoint."""


class DataError(RobustError):
    """Missing data, or data of the wrong shape, dtype or range."""


class OutputExistsError(RobustError):
    """An output that exists and would be overwritten without ``--force``."""
