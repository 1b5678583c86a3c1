"""``argparse`` argument types shared by the command lines (``type=`` converters that reject bad values)."""

from __future__ import annotations

import argparse


def fraction(text: str) -> float:
    """A number between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def label_studio_id(text: str) -> int:
    """A Label Studio id (``backend.label_studio.ids.parse_id``: ASCII digits, at most 2**63 - 1)."""
    from backend.label_studio.ids import IdError, parse_id

    try:
        return parse_id(text, "the id")
    except IdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
