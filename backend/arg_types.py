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
