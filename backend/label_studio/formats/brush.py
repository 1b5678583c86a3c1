"""BrushLabels: a level's mask as Label Studio brush RLE (``value = {"format": "rle", "rle": [...]}``).

The RLE codec is ``backend.label_studio.rle`` (byte-identical to label-studio-sdk's ``mask2rle``); a pixel
of a decoded region is foreground where its alpha is at least 1, as in the SDK's COCO export (strokes drawn
in the editor have anti-aliased edges).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from backend.label_studio.rle import decode_mask, encode_mask

TYPE = "brushlabels"


def brush_value(mask: np.ndarray) -> dict[str, Any]:
    """The ``value`` of a brushlabels result for an HxW bool mask (labels not included)."""
    return {"format": "rle", "rle": encode_mask(mask)}


def decode_brush(value: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """An HxW bool mask from a brushlabels ``value``.

    Raises:
        KeyError: no ``rle``.
        ValueError: an RLE that does not hold a ``height`` x ``width`` RGBA bitmap.
    """
    return decode_mask(value["rle"], height, width)
