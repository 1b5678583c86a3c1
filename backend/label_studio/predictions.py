"""Format a CoReS chain result as a Label Studio prediction: every chain level in every mask control.

A prediction for one task looks like (the shipped config: one BrushLabels tag)::

    {"model_version": "cores-v1", "score": 0.62,              # the review score (backend.review.score)
     "result": [{"id": "k3J9x0aQ2c", "from_name": "tag", "to_name": "image", "type": "brushlabels",
                 "original_width": 640, "original_height": 480, "image_rotation": 0,
                 "value": {"format": "rle", "rle": [...], "brushlabels": ["Context (level 1)"]},
                 "score": 0.91, "readonly": False,
                 "meta": {"text": ["a kitchen counter"],
                          "review": {"level": 1, "iou_head": 0.91, ...}}}, ...]}

Each mask control of the config (``BrushLabels``, ``BitmaskLabels``, ``PolygonLabels``, in document order)
gets every level, labelled by the level rule applied to that control (``label_config.level_labels``), in
its own format (``backend.label_studio.formats``): one brush or bitmask region per level, one polygon region
per connected component. Each level's chain text goes into its regions' ``meta``: Label Studio keeps a
region's free-text note (the "Meta" box of the region panel) as ``"meta": {"text": ["..."]}`` on the result
item, so the annotator sees the reasoning beside each mask and it survives into the submitted annotation.
Polygon regions add the level's polygons-vs-mask IoU to that text and as ``meta.polygon_iou``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from backend.label_studio.formats.regions import TYPES, decode_value, level_values
from backend.label_studio.label_config import SegmentationSchema, level_labels

logger = logging.getLogger(__name__)

_ID_BYTES = 8  # 8 random bytes -> 11 url-safe characters


def new_region_id(taken: set[str] | None = None) -> str:
    """Return a short random region id (url-safe, 11 characters) not in ``taken``."""
    taken = taken or set()
    while True:
        region_id = secrets.token_urlsafe(_ID_BYTES)
        if region_id not in taken:
            return region_id


def stable_region_id(seed: str, control: str, level: int, part: int) -> str:
    """A region id (11 url-safe characters) that depends only on its arguments."""
    digest = hashlib.sha256(f"{seed}\n{control}\n{level}\n{part}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:_ID_BYTES]).decode().rstrip("=")


def _level_mask(level: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """Return a level's mask as an HxW bool array, checking its shape against the image size."""
    mask = np.asarray(level["mask"])
    if mask.shape != (height, width):
        raise ValueError(
            f"level {level.get('index')} mask has shape {mask.shape}, expected (height, width) = "
            f"({height}, {width}) of the original image"
        )
    if mask.dtype != np.bool_:
        mask = mask != 0
    return mask


def build_prediction(
    levels: Sequence[Mapping[str, Any]],
    schema: SegmentationSchema,
    width: int,
    height: int,
    model_version: str,
    mapping: dict[int, str] | None = None,
    *,
    id_seed: str | None = None,
    score: float | None = None,
) -> dict[str, Any]:
    """Build the Label Studio prediction for one task from a CoReS chain result.

    Args:
        levels: one dict per chain level with ``mask`` (HxW bool array at the original image size, or
            anything ``np.asarray`` turns into one; nonzero = foreground), ``score`` (float), ``text``
            (the chain's text for that level), ``index`` (1-based level) and ``token`` (the segmentation
            token that produced it; not written to Label Studio), optionally ``meta`` (a dict merged into
            its regions' ``meta``, e.g. the review parts of ``backend.review.score``).
        schema: the parsed labeling config (``backend.label_studio.label_config.parse_label_config``).
        width: original image width in pixels.
        height: original image height in pixels.
        model_version: written to the prediction (Label Studio compares it with the backend's version).
        mapping: explicit level -> label overrides (``parse_level_mapping``); by default level k gets the
            k-th label of each mask control.
        id_seed: region ids derived from it (and the control, level and part) instead of random: an
            interactive answer refined by clicks keeps its region ids, so Label Studio replaces the regions.
        score: the prediction's top-level ``score`` (the review score); None: the final level's score.

    Returns:
        A JSON-safe prediction dict: ``model_version``, ``score`` (``score``, else the score of the
        highest level, the chain's final answer) and ``result``: per mask control (document order),
        the regions of every level in level order, each with a unique id. A level with an empty mask
        still gets its (empty) brush or bitmask region, so every level is accounted for; it has no polygon
        region.

    Raises:
        ValueError: no levels, duplicate or non-positive level indices, a mask not of shape (height, width).
        backend.label_studio.label_config.LabelConfigError: a level without a label (see ``level_labels``).
    """
    if not levels:
        raise ValueError("expected at least one chain level, got none")
    if width <= 0 or height <= 0:
        raise ValueError(f"expected a positive image size, got width={width} height={height}")
    ordered = sorted(levels, key=lambda level: int(level["index"]))
    indices = [int(level["index"]) for level in ordered]
    if indices[0] < 1 or len(set(indices)) != len(indices):
        raise ValueError(f"expected distinct 1-based level indices, got {indices}")
    masks = [_level_mask(level, height, width) for level in ordered]

    taken: set[str] = set()
    regions = []
    for control in schema.controls:
        labels = level_labels(control, indices[-1], mapping)
        for level, index, mask in zip(ordered, indices, masks, strict=True):
            text = str(level.get("text") or "").strip()
            for number, part in enumerate(level_values(control.type, mask)):
                region_id = (
                    stable_region_id(id_seed, control.name, index, number)
                    if id_seed
                    else new_region_id(taken)
                )
                taken.add(region_id)
                value = dict(part.value)
                value[control.type] = [labels[index - 1]]
                region: dict[str, Any] = {
                    "id": region_id,
                    "from_name": control.name,
                    "to_name": schema.image_name,
                    "type": control.type,
                    "original_width": int(width),
                    "original_height": int(height),
                    "image_rotation": 0,
                    "value": value,
                    "score": float(level["score"]),
                    "readonly": False,
                }
                note = " ".join(t for t in (text, f"({part.note})" if part.note and text else part.note) if t)
                extra = dict(level.get("meta") or {})
                if note or part.meta or extra:
                    region["meta"] = ({"text": [note]} if note else {}) | extra | part.meta
                regions.append(region)
            logger.debug(
                "level %d -> %s %r: %d pixels", index, control.describe(), labels[index - 1], mask.sum()
            )

    top = float(ordered[-1]["score"]) if score is None else float(score)
    return {"model_version": model_version, "score": top, "result": regions}


def decode_prediction(result_items: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Decode the mask regions (brush, bitmask, polygon) of a prediction's or annotation's ``result`` into
    one mask per label.

    Items of other types (e.g. the textarea prompt) are skipped. Several regions with the same label, of
    any mask type, are merged with a logical OR.

    Returns:
        ``{label: HxW bool mask}`` at each region's ``original_height`` x ``original_width``.

    Raises:
        ValueError: a region whose value does not decode at its size, or same-label regions of
            different sizes.
    """
    masks: dict[str, np.ndarray] = {}
    for item in result_items:
        kind = str(item.get("type", "")).lower()
        if kind not in TYPES:
            continue
        value = item["value"]
        mask = decode_value(kind, value, int(item["original_height"]), int(item["original_width"]))
        for label in value.get(kind, []):
            if label in masks:
                if masks[label].shape != mask.shape:
                    raise ValueError(
                        f'regions labelled "{label}" have different sizes: '
                        f"{masks[label].shape} and {mask.shape}"
                    )
                masks[label] = masks[label] | mask
            else:
                masks[label] = mask
    return masks
