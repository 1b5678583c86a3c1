"""Clicks and boxes of Label Studio's smart tools in an interactive /predict context.

With smart ``<KeyPointLabels>`` / ``<RectangleLabels>`` on the image (``backend/label_config_refine.xml``),
Label Studio's interactive call carries the placed region in ``params.context.result``::

    {"from_name": "click", "to_name": "image", "type": "keypointlabels", "is_positive": false,
     "original_width": 640, "original_height": 480,
     "value": {"x": 12.5, "y": 40.0, "width": 0.6, "keypointlabels": ["Target (level 2)"]}}
    {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
     "value": {"x": 10, "y": 20, "width": 30, "height": 15, "rectanglelabels": ["Target (level 2)"]}}

Coordinates are percent of the original image; smart regions may carry their label in ``value.labels``.
``is_positive`` (default true) marks a point as part of the target; false (Label Studio's negative keypoint,
Alt+click) as not part of it. Which chain level a click or box refines, from its label, first rule that
applies:

1. a label that says ``level N`` (``"Target (level 2)"``, ``"level 1"``; any case) refines level N;
2. a label equal to the N-th label of the config's first mask control (BrushLabels, ...) refines level N;
3. otherwise the final level (the target).

``interactive_prompts`` groups them per level in JSON form (percent kept; the worker converts with the image
size): ``[{"level": 2 | null, "points": [[x%, y%, 1 | 0], ...], "boxes": [[x%, y%, w%, h%], ...]}]`` where
``null`` means the final level.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from backend.label_studio.label_config import SegmentationSchema
from backend.label_studio.task_errors import TaskError

KEYPOINT = "keypointlabels"
RECTANGLE = "rectanglelabels"
MAX_CLICKS = 64
"""Points plus boxes accepted in one interactive call (SAM was trained with a handful)."""
_LEVEL = re.compile(r"\blevel\s*(\d+)\b", re.IGNORECASE)


def click_level(label: str | None, schema: SegmentationSchema) -> int | None:
    """The chain level a smart tool's label refines (module docstring rules), None for the final level."""
    if not label:
        return None
    found = _LEVEL.search(label)
    if found and int(found.group(1)) >= 1:
        return int(found.group(1))
    if schema.controls and label in schema.labels:
        return schema.labels.index(label) + 1
    return None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TaskError("bad_prompt", f"the smart tool's {what} is {value!r}, expected a finite number")
    return float(value)


def _percent(value: Any, what: str) -> float:
    number = _number(value, what)
    if not -0.5 <= number <= 100.5:
        raise TaskError("bad_prompt", f"the smart tool's {what} is {number}%, outside the image (0-100%)")
    return min(max(number, 0.0), 100.0)


def interactive_prompts(
    context: Mapping[str, Any] | None, schema: SegmentationSchema
) -> list[dict[str, Any]]:
    """The smart keypoints and rectangles on the schema's image in an interactive context, per level.

    Raises:
        TaskError: ``bad_prompt`` for a malformed coordinate, or more than ``MAX_CLICKS`` clicks and boxes.
    """
    results = context.get("result") if isinstance(context, Mapping) else None
    if not isinstance(results, list):
        return []
    levels: dict[int | None, dict[str, Any]] = {}
    count = 0
    for item in results:
        if not isinstance(item, Mapping) or item.get("to_name") != schema.image_name:
            continue
        kind = str(item.get("type") or "").lower()
        value = item.get("value")
        if kind not in (KEYPOINT, RECTANGLE) or not isinstance(value, Mapping):
            continue
        count += 1
        if count > MAX_CLICKS:
            raise TaskError("bad_prompt", f"more than {MAX_CLICKS} clicks and boxes in one call")
        labels = value.get(kind) or value.get("labels")  # smart regions also carry ``labels``
        label = str(labels[0]) if isinstance(labels, list) and labels else None
        level = click_level(label, schema)
        entry = levels.setdefault(level, {"level": level, "points": [], "boxes": []})
        x, y = _percent(value.get("x"), "x"), _percent(value.get("y"), "y")
        if kind == KEYPOINT:
            entry["points"].append([x, y, 0 if item.get("is_positive") is False else 1])
        else:
            width, height = _percent(value.get("width"), "width"), _percent(value.get("height"), "height")
            if _number(value.get("rotation", 0) or 0, "rotation") != 0:
                raise TaskError("bad_prompt", "a rotated box cannot prompt SAM; draw it without rotation")
            entry["boxes"].append([x, y, min(width, 100.0 - x), min(height, 100.0 - y)])
    return list(levels.values())
