"""What a model load raises and warns: one error class per thing a user can do about it."""

from __future__ import annotations

__all__ = [
    "ModelChangedError",
    "ModelLoadError",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "NoDefaultModelError",
    "ProtocolMismatchError",
    "ProtocolWarning",
]


class ModelLoadError(ValueError):
    """A model folder or repo could not be loaded; the message says why and what to do."""


class ModelNotFoundError(ModelLoadError):
    """No such folder, Hub repo, revision or file."""


class ModelChangedError(ModelLoadError):
    """A save is replacing the model folder: it changed while it was read, on every attempt, or
    it was still missing while its writer ran; loading again later succeeds."""


class ModelNotCachedError(ModelLoadError):
    """The model is not in the local Hub cache and the Hub cannot be reached (or is disabled)."""


class ProtocolMismatchError(ModelLoadError):
    """The model's protocol or library versions do not fit what the caller asked for."""


class NoDefaultModelError(ModelLoadError):
    """A game has no bundled weights and no configured default repo."""


class ProtocolWarning(UserWarning):
    """A model was loaded although its protocol or versions do not fit what was asked for."""
