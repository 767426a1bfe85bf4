"""Every exception driftrank raises on purpose derives from :class:`DriftrankError`."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "DriftrankError",
    "ModelFileError",
    "NotFittedError",
    "OverlapWarning",
    "UnknownIdError",
]


class DriftrankError(Exception):
    """Base class of all driftrank errors."""


class DataError(DriftrankError, ValueError):
    """Input data is malformed: a missing column, an unparsable value, an empty file, ..."""


class DataNotFoundError(DriftrankError, FileNotFoundError):
    """A named data set could be found neither locally nor through its download."""


class ConfigError(DriftrankError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class UnknownIdError(DriftrankError, KeyError):
    """A raw user or item id is not in the vocabulary the model was fitted on."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NotFittedError(DriftrankError, RuntimeError):
    """A model was asked to serve before ``fit`` was called."""


class ModelFileError(DriftrankError, OSError):
    """A saved model is missing, tampered with or written by an incompatible version."""


class OverlapWarning(UserWarning):
    """An off-policy estimate rests on actions the logging policy never took: the evaluation
    policy puts probability on (action, slot) pairs absent from the log, whose rewards no
    importance weight can recover, so the estimate is biased and its interval too narrow."""
