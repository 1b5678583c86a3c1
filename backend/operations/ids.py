"""Label Studio ids (tasks, projects, annotations, predictions): the one parser every module uses.

An id is a non-negative integer that fits SQLite's and Redis's signed 64-bit integers (at most
``MAX_ID``). It arrives as a JSON number, or as text of ASCII digits (``"42"``; Label Studio's project
strings are ``"<id>.<creation time>"``, read by ``project_id``). Anything else (a bool, a float, Unicode
digits such as ``"٤٢"``, thousands of digits, a negative number, text that is not valid UTF-8) is not an id:
``parse_id`` raises ``IdError`` with a message naming the field, and callers turn that into a 4xx or a
per-task error, never a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_ID = 2**63 - 1
_MAX_DIGITS = len(str(MAX_ID))


class IdError(ValueError):
    """A value that is not a Label Studio id; the message names the field and what was found."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + f"... ({len(text)} characters)"


def parse_id(value: Any, what: str = "id") -> int:
    """``value`` as an id (see the module docstring).

    Raises:
        IdError: not an id; the message names ``what``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
            raise IdError(f"expected {what} to be an integer id, got {_describe(value)}")
        number = int(text)
    else:
        raise IdError(f"expected {what} to be an integer id, got {_describe(value)}")
    if not 0 <= number <= MAX_ID:
        raise IdError(f"expected {what} to be an integer id in 0..{MAX_ID}, got {_describe(value)}")
    return number


def id_or_none(value: Any) -> int | None:
    """``parse_id(value)``, or None when it is not an id (an object's ``{"id": ...}`` is read too)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    try:
        return parse_id(value)
    except IdError:
        return None


def project_id(value: Any) -> int | None:
    """The numeric project id from Label Studio's ``"1.1795672559"`` project string (or an id), else None."""
    if isinstance(value, str):
        value = value.split(".", 1)[0]
    return id_or_none(value) if not isinstance(value, Mapping) else None
