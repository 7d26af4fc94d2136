"""The one exception type users see: a bad input, reported as one line and exit status 2."""

from __future__ import annotations

from pathlib import Path


class CloudpipeError(Exception):
    """A problem with the user's input (file, line, value), not a bug.

    The command-line layer prints ``error: <message>`` on one line and exits with status 2.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)


class SharedError(CloudpipeError):
    """An error every ``torchrun`` rank raises together (:meth:`~cloudpipe.engine.dist.Dist.together`):
    rank 0 alone reports it."""


class RLEError(CloudpipeError, ValueError):
    """A run-length encoded mask that is not valid Kaggle RLE for the given shape."""


class BadValue(CloudpipeError, ValueError):
    """A value a library function refuses, quoted in the message: a ``ValueError`` to Python
    code, one ``error:`` line to a command."""


class BadType(BadValue, TypeError):
    """A value of the wrong kind (e.g. float probabilities where uint8 ones are documented):
    a ``TypeError`` (and a :class:`BadValue`)."""
