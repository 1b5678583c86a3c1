"""``CORES_LEVEL_LABELS``: an operator's explicit chain level -> label mapping, parsed once.

By default chain level k is written with the k-th ``<Label>`` of a mask control
(``backend.label_studio.label_config``); this mapping names the label of some or all levels instead.
"""

from __future__ import annotations

import json
from typing import Any

LEVEL_LABELS_ENV = "CORES_LEVEL_LABELS"


class LevelMappingError(ValueError):
    """A level mapping that cannot be read; the message says which item and why."""


def parse_level_mapping(text: str | None) -> dict[int, str]:
    """Parse an explicit chain-level -> label mapping, e.g. from ``CORES_LEVEL_LABELS``.

    Accepted forms: ``"1=Context,2=Target"`` (whitespace around items is ignored; a label may contain
    ``=`` but not ``,``) or a JSON object ``{"1": "Context", "2": "Target"}`` (for labels with commas).
    An empty or blank string means no mapping.

    Returns:
        ``{level: label}`` with 1-based levels.

    Raises:
        LevelMappingError: for items without ``=``, levels that are not integers >= 1, empty labels, or a
            level given twice.
    """
    if text is None or not text.strip():
        return {}
    stripped = text.strip()
    pairs: list[tuple[str, Any]]
    if stripped.startswith("{"):
        try:
            loaded = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise LevelMappingError(
                f"expected a JSON object level mapping, found invalid JSON: {exc}"
            ) from exc
        if not isinstance(loaded, dict):
            raise LevelMappingError(f"expected a JSON object level mapping, found {type(loaded).__name__}")
        pairs = [(str(k), v) for k, v in loaded.items()]
    else:
        pairs = []
        for item in stripped.split(","):
            if not item.strip():
                continue
            level_text, sep, label = item.partition("=")
            if not sep:
                raise LevelMappingError(
                    f'expected level mapping items like "1=Context", found "{item.strip()}"'
                )
            pairs.append((level_text, label))

    mapping: dict[int, str] = {}
    for level_text, label in pairs:
        try:
            level = int(level_text.strip())
        except ValueError:
            level = 0
        if level < 1:
            raise LevelMappingError(
                f'expected a chain level as an integer >= 1, found "{level_text.strip()}"'
            )
        if not isinstance(label, str) or not label.strip():
            raise LevelMappingError(f"expected a non-empty label for level {level}, found {label!r}")
        if level in mapping:
            raise LevelMappingError(
                f"expected each level once in the level mapping, found level {level} twice"
            )
        mapping[level] = label.strip()
    return mapping
