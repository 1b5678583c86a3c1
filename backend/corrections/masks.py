"""The mask regions of an annotation's or a prediction's ``result``, decoded per chain level, bounded.

Every item of one of the schema's mask controls (its ``from_name`` and ``type``) is decoded in its tag's
format (``backend.label_studio.formats``: brush RLE, bitmask PNG alpha, polygons rasterised with
pycocotools at the region's ``original_width`` x ``original_height``); the regions of one chain level are
OR-ed, across regions and across tags. ``MaskBudget`` bounds what one payload may make the web decode,
from the declared sizes, before anything is decoded (a bitmask's data URL is also bounded in bytes and its
PNG header checked against the declared size first).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.corrections.records import CorrectionError
from backend.label_studio.formats.regions import RegionFormatError, decode_value
from backend.label_studio.label_config import SegmentationSchema, label_levels
from backend.label_studio.webhook_payloads import json_object

logger = logging.getLogger(__name__)

DEFAULT_MAX_MASK_PIXELS = 25_000_000
"""Default ``MAX_MASK_PIXELS``: the largest mask region (width x height) a payload may declare."""
TOTAL_MASK_FACTOR = 8
"""One payload decodes at most this many times ``MAX_MASK_PIXELS`` pixels in all."""


@dataclass(frozen=True)
class Region:
    """One chain level's decoded mask, the label it was found under and its best score."""

    mask: np.ndarray
    label: str
    score: float | None = None


class MaskBudget:
    """Bounds the masks one payload may make the web decode: each region at most ``max_pixels``
    (``MAX_MASK_PIXELS``), all of them together at most ``TOTAL_MASK_FACTOR`` times that. Checked from the
    declared size before anything is decoded."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_MASK_PIXELS) -> None:
        self.max_pixels = max_pixels
        self.left = max_pixels * TOTAL_MASK_FACTOR

    def take(self, height: int, width: int, where: str) -> None:
        """Account for one ``height`` x ``width`` mask.

        Raises:
            CorrectionError: the mask, or all masks so far, exceed the bounds.
        """
        pixels = height * width
        if height <= 0 or width <= 0 or pixels > self.max_pixels:
            raise CorrectionError(
                f"{where}: a {width}x{height} mask region is over MAX_MASK_PIXELS={self.max_pixels} "
                "pixels (or not a size at all); not decoded"
            )
        if pixels > self.left:
            raise CorrectionError(
                f"{where}: the payload's mask regions exceed {TOTAL_MASK_FACTOR} x MAX_MASK_PIXELS pixels "
                "in all; not decoded"
            )
        self.left -= pixels


LevelsByControl = Mapping[str, Mapping[str, int]]
"""Per mask control name: which chain level each of its labels stands for (``label_levels``)."""


def control_levels(
    schema: SegmentationSchema, mapping: dict[int, str] | None, n_levels: int | None
) -> dict[str, dict[str, int]]:
    """``label_levels`` of every mask control of ``schema``, by control name."""
    return {control.name: label_levels(control, mapping, n_levels) for control in schema.controls}


def mask_regions(
    items: Any, schema: SegmentationSchema, levels: LevelsByControl, what: str, budget: MaskBudget
) -> dict[int, Region]:
    """Decode the mask regions of ``items`` (a ``result`` list) into one OR-ed mask per chain level: every
    item of one of ``schema``'s mask controls (its ``from_name`` and ``type``), whatever the tag.

    Raises:
        CorrectionError: a region without ``original_height``/``original_width`` or its mask field, a size
            over the ``budget``, a value that does not decode at its size (an RLE of another size, a
            non-PNG or wrongly sized bitmask, polygon points that are not numbers), or regions of one level
            with different sizes.
    """
    if items is None:
        return {}
    if not isinstance(items, list):
        raise CorrectionError(f"expected {what}.result to be a list of regions, got {type(items).__name__}")
    merged: dict[int, Region] = {}
    for i, item in enumerate(items):
        control = (
            schema.control(item.get("from_name"), item.get("type")) if isinstance(item, Mapping) else None
        )
        if control is None:
            continue
        value = json_object(item.get("value"))
        of_control = levels.get(control.name, {})
        names = [lbl for lbl in value.get(control.type) or [] if lbl in of_control]
        if not names:
            logger.debug(
                "%s.result[%d]: labels %s name no chain level; skipped", what, i, value.get(control.type)
            )
            continue
        try:
            height, width = int(item["original_height"]), int(item["original_width"])
            budget.take(height, width, f"{what}.result[{i}]")
            mask = decode_value(control.type, value, height, width)
        except (KeyError, TypeError) as exc:
            raise CorrectionError(
                f"{what}.result[{i}]: a {control.type} region needs original_height and original_width "
                f"({exc!r})"
            ) from exc
        except (RegionFormatError, ValueError) as exc:
            raise CorrectionError(f"{what}.result[{i}]: {exc}") from exc
        score = item.get("score")
        score = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None
        for label in names:
            level = of_control[label]
            old = merged.get(level)
            if old is None:
                merged[level] = Region(mask, label, score)
                continue
            if old.mask.shape != mask.shape:
                raise CorrectionError(
                    f"{what}: level {level} regions have different sizes {old.mask.shape} and {mask.shape}"
                )
            best = max((s for s in (old.score, score) if s is not None), default=None)
            merged[level] = Region(old.mask | mask, old.label, best)
    return merged


def has_masks(prediction: Mapping[str, Any], schema: SegmentationSchema) -> bool:
    """Whether a prediction has a region of one of ``schema``'s mask controls."""
    result = prediction.get("result")
    return isinstance(result, list) and any(
        isinstance(r, Mapping) and schema.control(r.get("from_name"), r.get("type")) is not None
        for r in result
    )
