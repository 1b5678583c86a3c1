"""Exceptions raised by the ``cores`` package; each message says what was expected and what was found."""

from __future__ import annotations


class CoresError(Exception):
    """Base class of every error the ``cores`` package raises on bad input."""


class CheckpointError(CoresError):
    """A checkpoint folder is missing files, has an unknown layout or keys that do not fit the model."""


class ImageError(CoresError):
    """An image cannot be read or decoded."""


class QueryError(CoresError):
    """A query is empty or does not fit the language model's context."""


class ChainError(CoresError):
    """The model produced a chain whose special tokens do not match the expected chain."""


class DeviceError(CoresError):
    """The requested device or dtype is not available on this machine."""


class PromptError(CoresError):
    """Clicks or boxes that cannot refine a chain (no such level, outside the image, a malformed box)."""
