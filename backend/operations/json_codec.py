"""One fast JSON codec for rq job payloads and results and for the web's responses (orjson).

orjson encodes and decodes the large prediction payloads (RLE lists, task data) several times faster
than the standard library, which matters because the web's CPU time per interactive request is mostly
JSON. The output is plain JSON: jobs written by a process using rq's stock ``JSONSerializer`` read back
here and the other way round.

Where orjson refuses a value the standard library accepts, the standard library handles that one call,
so the codec accepts exactly what ``json`` accepts and nothing is lost:

- integers beyond 64 bits, non-string dict keys, strings holding lone surrogates (as ``json.loads`` makes
  of a ``"\\ud800"`` escape in a Label Studio task), ``NaN``/``Infinity`` tokens in input text;
- types neither knows still raise ``TypeError`` (encoding) or ``ValueError`` (decoding), as ``json`` does.

One difference is on purpose: orjson writes ``NaN`` and infinities as ``null`` (valid JSON), where
``json.dumps`` would write the non-standard ``NaN`` token that strict parsers (browsers) reject.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["QueueSerializer", "dumps", "dumps_text", "loads"]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON bytes (numpy scalars and arrays included)."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        # orjson's TypeError covers "unknown type", "int too big / non-str key" and "lone surrogate in a
        # str"; the standard library settles which (it encodes the last two -- surrogates as \\ud800
        # escapes in ASCII output -- and raises TypeError for the first).
        return json.dumps(value, separators=(",", ":"), default=_numpy_default).encode()


def dumps_text(value: Any) -> str:
    """``dumps`` as ``str``."""
    return dumps(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text or UTF-8 bytes; accepts exactly what ``json.loads`` accepts."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        if isinstance(data, memoryview):
            data = data.tobytes()
        return json.loads(data)


def _numpy_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__ == "numpy":
        return tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class QueueSerializer:
    """rq's serializer protocol (``dumps``/``loads``) on this codec; a drop-in for ``JSONSerializer``."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        return dumps(value)

    @staticmethod
    def loads(data: bytes) -> Any:
        return loads(data)
