"""What every ``python -m backend`` command line shares: argument types and its settings.

The ``type=`` converters reject bad values with argparse's usage error; ``command_settings`` reads the
settings from the environment and configures logging as they say.
"""

from __future__ import annotations

import argparse

from backend.operations.logs import configure_logging
from backend.operations.settings import Settings


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
    """A Label Studio id (``backend.operations.ids.parse_id``: ASCII digits, at most 2**63 - 1)."""
    from backend.operations.ids import IdError, parse_id

    try:
        return parse_id(text, "the id")
    except IdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def command_settings() -> Settings:
    """The settings from the environment, with logging configured by them.

    Raises:
        backend.operations.settings.SettingsError: a variable holds a value the backend cannot use.
    """
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return settings
