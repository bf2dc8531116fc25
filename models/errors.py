"""User-facing errors of the model side, importable without torch (the CLI catches them)."""

from __future__ import annotations

__all__ = [
    "DeltagateError",
    "BundleError",
    "DataError",
    "ResumeConflictError",
    "PretrainedUnavailableError",
    "UnknownModelError",
]


class DeltagateError(Exception):
    """Base of the errors a user can fix; the CLI prints their message without a traceback."""


class BundleError(DeltagateError, RuntimeError):
    """A bundle is missing, corrupt or of an unsupported schema; the message names the file."""


class DataError(DeltagateError, ValueError):
    """A data directory lacks what a command needs (a split, images in a class folder, matching classes);
    the message names the folder."""


class ResumeConflictError(DeltagateError, ValueError):
    """A run directory holds a checkpoint of another configuration; the message names the fields that
    differ and the flag that starts over."""


class PretrainedUnavailableError(DeltagateError, RuntimeError):
    """Pretrained weights are neither cached locally nor downloadable."""


class UnknownModelError(DeltagateError, KeyError):
    """Unknown architecture name or pretrained tag."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""
