"""Dispatch on the mask control tag: a level's mask -> the result values of that tag, and a result item of
any mask tag -> its mask.

``level_values`` gives, for one level on one control, the ``value``s of its regions (labels not included)
and the notes that go into their ``meta``: one brush or bitmask region per level (an empty mask still gets
its region), one polygon region per connected component (an empty mask gets none), each polygon's meta
holding the IoU between the level's mask and all its polygons rasterised back (``polygon_iou``).
``decode_value`` reads a result ``value`` of any of the three tags back into a mask at the region's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.label_studio.formats import bitmask, brush, polygon

TYPES = (brush.TYPE, bitmask.TYPE, polygon.TYPE)
"""Result types with a mask."""


class RegionFormatError(ValueError):
    """A result value that does not decode into a mask of its declared size."""


@dataclass(frozen=True)
class RegionValue:
    """One region to write: its ``value`` (without labels), extra ``meta`` keys, and a sentence appended to
    its meta text (what the annotator reads beside the chain text)."""

    value: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def level_values(result_type: str, mask: np.ndarray) -> list[RegionValue]:
    """The regions of one level's HxW bool mask in a control of ``result_type``.

    Raises:
        ValueError: an unknown ``result_type`` or a mask that is not 2-D.
    """
    if result_type == brush.TYPE:
        return [RegionValue(brush.brush_value(mask))]
    if result_type == bitmask.TYPE:
        return [RegionValue(bitmask.bitmask_value(mask))]
    if result_type == polygon.TYPE:
        values, iou = polygon.polygon_values(mask)
        note = f"polygons vs mask IoU {iou:.3f}"
        return [RegionValue(value, {"polygon_iou": iou}, note) for value in values]
    raise ValueError(f"expected a mask result type {TYPES}, got {result_type!r}")


def decode_value(result_type: str, value: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The HxW bool mask of a ``brushlabels`` / ``bitmasklabels`` / ``polygonlabels`` result value.

    Raises:
        RegionFormatError: a value without its mask field (``rle``, ``imageDataURL``, ``points``), or one
            that does not decode at ``height`` x ``width`` (the message says why).
        ValueError: an unknown ``result_type``.
    """
    try:
        if result_type == brush.TYPE:
            return brush.decode_brush(value, height, width)
        if result_type == bitmask.TYPE:
            return bitmask.decode_bitmask(value["imageDataURL"], height, width)
        if result_type == polygon.TYPE:
            return polygon.rasterise([value["points"]], width, height)
    except KeyError as exc:
        raise RegionFormatError(f"a {result_type} value needs {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise RegionFormatError(str(exc)) from exc
    raise ValueError(f"expected a mask result type {TYPES}, got {result_type!r}")
