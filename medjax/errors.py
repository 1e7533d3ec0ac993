"""Errors medjax raises on purpose. Each message says what is wrong, where (file, key) and what to do."""

from __future__ import annotations


class MedjaxError(Exception):
    """Base class of errors that the CLI reports as one line (no traceback)."""


class DataError(MedjaxError):
    """A data file or dataset is invalid. ``path`` names the file; ``reason`` says what is wrong."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # survive the trip from a data-loading worker process
        return (type(self), (self.path, self.reason))


class StaleCacheError(MedjaxError):
    """A prepared cache was built with other settings or from other files; rebuild it with `medjax data prepare`."""


class CheckpointError(MedjaxError):
    """A checkpoint is missing, incomplete or does not match the model."""


class TrainingDivergedError(MedjaxError):
    """Too many consecutive non-finite steps; the last good checkpoint was kept."""



class ConfigError(MedjaxError, ValueError):
    """A config key or value is invalid. The message names the key and what to do."""
