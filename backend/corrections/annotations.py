"""Label Studio annotation webhooks -> pending correction records (parsing only, no storage).

``parse_annotation`` turns an ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` payload into a
``PendingRecord``: the annotation's ids and revision (``updated_at``), the query, the image reference, the
prediction the annotator started from (``_find_prediction``), and per chain level the accepted and predicted
masks (brush regions of one level OR-ed, ``_brush_regions``) with their IoU; the masks are packed in the
stored form (``correction_records.pack_mask``). ``deleted_ids`` reads the
annotation ids of ``ANNOTATION_DELETED`` / ``ANNOTATIONS_DELETED``.

Nothing here imports torch: the web process records webhooks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.corrections.records import CorrectionError, pack_mask, unpack_mask, utc_iso
from backend.label_studio.label_config import SegmentationSchema, label_levels
from backend.label_studio.rle import decode_mask
from backend.label_studio.webhook_payloads import annotation_task, json_object
from backend.operations.ids import id_or_none
from cores.evaluation.metrics import mask_iou

logger = logging.getLogger(__name__)

DEFAULT_MAX_MASK_PIXELS = 25_000_000
"""Default ``MAX_MASK_PIXELS``: the largest brush region (width x height) a payload may declare."""
TOTAL_MASK_FACTOR = 8
"""One payload decodes at most this many times ``MAX_MASK_PIXELS`` pixels in all."""

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_ACTIONS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
BRUSH_TYPE = "brushlabels"
PROMPT_TYPE = "textarea"


@dataclass(frozen=True)
class _Region:
    mask: np.ndarray
    label: str
    score: float | None = None


@dataclass(frozen=True)
class PendingRecord:
    """A record parsed from a webhook, not yet stored.

    ``values``: the ``corrections`` row by column name (without ``id``, ``received_at``, ``deleted_at``);
    ``levels``: one ``correction_levels`` row per level, without ``record_id``.
    """

    values: dict[str, Any]
    levels: list[tuple[Any, ...]]


class MaskBudget:
    """Bounds the brush masks one payload may make the web decode: each region at most ``max_pixels``
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
                f"{where}: a {width}x{height} brush region is over MAX_MASK_PIXELS={self.max_pixels} "
                "pixels (or not a size at all); not decoded"
            )
        if pixels > self.left:
            raise CorrectionError(
                f"{where}: the payload's brush regions exceed {TOTAL_MASK_FACTOR} x MAX_MASK_PIXELS pixels "
                "in all; not decoded"
            )
        self.left -= pixels


def _brush_regions(
    items: Any, schema: SegmentationSchema, levels: Mapping[str, int], what: str, budget: MaskBudget
) -> dict[int, _Region]:
    """Decode the brush regions of ``items`` (a ``result`` list) into one OR-ed mask per chain level.

    Raises:
        CorrectionError: a region without ``original_height``/``original_width``/``value.rle``, a size over
            the ``budget``, an RLE that does not match its size, or regions of one level with different
            sizes.
    """
    if items is None:
        return {}
    if not isinstance(items, list):
        raise CorrectionError(f"expected {what}.result to be a list of regions, got {type(items).__name__}")
    merged: dict[int, _Region] = {}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or str(item.get("type", "")).lower() != BRUSH_TYPE:
            continue
        if item.get("from_name") != schema.brush_from_name:
            continue
        value = json_object(item.get("value"))
        names = [lbl for lbl in value.get("brushlabels") or [] if lbl in levels]
        if not names:
            logger.debug(
                "%s.result[%d]: labels %s name no chain level; skipped", what, i, value.get("brushlabels")
            )
            continue
        try:
            height, width = int(item["original_height"]), int(item["original_width"])
            budget.take(height, width, f"{what}.result[{i}]")
            mask = decode_mask(value["rle"], height, width)
        except (KeyError, TypeError) as exc:
            raise CorrectionError(
                f"{what}.result[{i}]: a brush region needs original_height, original_width and "
                f"value.rle ({exc!r})"
            ) from exc
        except ValueError as exc:
            raise CorrectionError(f"{what}.result[{i}]: {exc}") from exc
        score = item.get("score")
        score = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None
        for label in names:
            level = levels[label]
            old = merged.get(level)
            if old is None:
                merged[level] = _Region(mask, label, score)
                continue
            if old.mask.shape != mask.shape:
                raise CorrectionError(
                    f"{what}: level {level} regions have different sizes {old.mask.shape} and {mask.shape}"
                )
            best = max((s for s in (old.score, score) if s is not None), default=None)
            merged[level] = _Region(old.mask | mask, old.label, best)
    return merged


def _has_brush(prediction: Mapping[str, Any], schema: SegmentationSchema) -> bool:
    result = prediction.get("result")
    return isinstance(result, list) and any(
        isinstance(r, Mapping) and r.get("from_name") == schema.brush_from_name for r in result
    )


def _find_prediction(
    annotation: Mapping[str, Any], task: Mapping[str, Any], schema: SegmentationSchema
) -> tuple[Mapping[str, Any] | None, int | None]:
    """The prediction an annotation started from, and its id.

    Order: the task's prediction whose id is ``annotation.parent_prediction`` (or ``annotation.prediction``'s
    id); else ``annotation.prediction`` when it carries a result; else, when the annotation names no
    prediction, the newest of ``task.predictions`` with regions for this BrushLabels tag.
    """
    embedded = annotation.get("prediction")
    pred_id = id_or_none(annotation.get("parent_prediction"))
    if pred_id is None:
        pred_id = id_or_none(embedded)
    listed = [p for p in task.get("predictions") or [] if isinstance(p, Mapping)]
    if pred_id is not None:
        for candidate in listed:
            if id_or_none(candidate.get("id")) == pred_id:
                return candidate, pred_id
    if isinstance(embedded, Mapping) and _has_brush(embedded, schema):
        return embedded, pred_id
    if pred_id is None:
        usable = [p for p in listed if _has_brush(p, schema)]
        if usable:
            newest = max(usable, key=lambda p: (str(p.get("created_at") or ""), id_or_none(p.get("id")) or 0))
            return newest, id_or_none(newest.get("id"))
    return None, pred_id


def _query(annotation: Mapping[str, Any], task: Mapping[str, Any], schema: SegmentationSchema) -> str | None:
    """The prompt TextArea's first non-empty text in the annotation, else the task's query field."""
    for item in annotation.get("result") or [] if schema.prompt_from_name else []:
        if not isinstance(item, Mapping) or item.get("from_name") != schema.prompt_from_name:
            continue
        if str(item.get("type", "")).lower() != PROMPT_TYPE:
            continue
        texts = (item.get("value") or {}).get("text") or []
        for text in [texts] if isinstance(texts, str) else texts:
            if isinstance(text, str) and text.strip():
                return text.strip()
    data = json_object(task.get("data"))
    if (
        schema.query_field
        and isinstance(data.get(schema.query_field), str)
        and data[schema.query_field].strip()
    ):
        return str(data[schema.query_field]).strip()
    return None


def _annotator(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("email") or value.get("id")
    if value is None or isinstance(value, bool):
        return None
    return str(value)


def parse_annotation(
    payload: Mapping[str, Any],
    schema: SegmentationSchema,
    *,
    image_sha256: str | None,
    prediction: Mapping[str, Any] | None,
    mapping: dict[int, str] | None,
    n_levels: int | None,
    max_mask_pixels: int = DEFAULT_MAX_MASK_PIXELS,
) -> PendingRecord:
    """Turn an ANNOTATION_CREATED/UPDATED payload into a pending record (all decoding happens here).

    The keyword arguments mean what ``CorrectionStore.record_webhook``'s do.

    Raises:
        CorrectionError: no ``annotation`` object, no annotation id, task id or ``updated_at``, or a brush
            region that does not decode (an unreadable prediction found in the payload is only logged).
    """
    annotation = payload.get("annotation")
    if not isinstance(annotation, Mapping):
        raise CorrectionError(f"{payload.get('action')} payload has no 'annotation' object")
    task = json_object(payload.get("task"))
    annotation_id = id_or_none(annotation.get("id"))
    if annotation_id is None:
        raise CorrectionError("annotation.id is missing or not an integer")
    project_id, task_id = annotation_task(payload)
    if task_id is None:
        raise CorrectionError(f"annotation {annotation_id}: no task id (annotation.task or task.id)")
    updated_at = annotation.get("updated_at")
    if not isinstance(updated_at, str) or not updated_at.strip():
        raise CorrectionError(f"annotation {annotation_id}: updated_at is missing (it is the revision)")

    levels = label_levels(schema, mapping, n_levels)
    budget = MaskBudget(max_mask_pixels)
    accepted = _brush_regions(annotation.get("result"), schema, levels, f"annotation {annotation_id}", budget)
    source, prediction_id = (
        (prediction, id_or_none(prediction.get("id")))
        if prediction is not None
        else (_find_prediction(annotation, task, schema))
    )
    predicted: dict[int, _Region] = {}
    if source is not None:
        try:
            predicted = _brush_regions(
                source.get("result"), schema, levels, f"prediction {prediction_id}", budget
            )
        except CorrectionError as exc:
            if prediction is not None:
                raise
            logger.warning("annotation %s: ignoring an unreadable prediction: %s", annotation_id, exc)
    embedded = json_object(annotation.get("prediction"))
    model_version = (source or {}).get("model_version") or embedded.get("model_version") or None

    rows, final_iou = _level_rows(accepted, predicted, annotation_id)
    data = json_object(task.get("data"))
    image_ref = data.get(schema.image_field)
    created_at = annotation.get("created_at")
    values = {
        "project_id": project_id,
        "task_id": task_id,
        "annotation_id": annotation_id,
        "revision": utc_iso(updated_at),
        "action": str(payload.get("action")),
        "annotator": _annotator(annotation.get("completed_by")),
        "annotation_created_at": utc_iso(created_at) if isinstance(created_at, str) and created_at else None,
        "query": _query(annotation, task, schema),
        "image_ref": image_ref if isinstance(image_ref, str) else None,
        "image_sha256": image_sha256,
        "prediction_id": prediction_id,
        "model_version": str(model_version) if model_version is not None else None,
        "final_level": rows[-1][0] if rows else None,
        "final_iou": final_iou,
    }
    return PendingRecord(values, rows)


def _level_rows(
    accepted: Mapping[int, _Region], predicted: Mapping[int, _Region], annotation_id: int
) -> tuple[list[tuple[Any, ...]], float | None]:
    """One ``correction_levels`` row (without ``record_id``) per level with an accepted or a predicted mask,
    in level order, and the IoU of the last level (None when it has no prediction)."""
    rows: list[tuple[Any, ...]] = []
    final_iou: float | None = None
    for level in sorted(set(accepted) | set(predicted)):
        acc, pred = accepted.get(level), predicted.get(level)
        if acc is not None and pred is not None and acc.mask.shape != pred.mask.shape:
            logger.warning(
                "annotation %s level %d: predicted mask %s and accepted mask %s differ in size; "
                "prediction dropped",
                annotation_id,
                level,
                pred.mask.shape,
                acc.mask.shape,
            )
            pred = None
        ref = acc if acc is not None else pred
        assert ref is not None
        iou = None
        if pred is not None:
            iou = mask_iou(pred.mask, acc.mask if acc is not None else np.zeros_like(pred.mask))
        height, width = ref.mask.shape
        rows.append(
            (
                level,
                ref.label,
                height,
                width,
                None if acc is None else pack_mask(acc.mask),
                None if pred is None else pack_mask(pred.mask),
                None if pred is None else pred.score,
                iou,
            )
        )
        final_iou = iou
    return rows, final_iou


def payload_prediction(
    payload: Mapping[str, Any], schema: SegmentationSchema
) -> tuple[Mapping[str, Any] | None, int | None]:
    """The prediction an annotation webhook carries itself (``task.predictions`` / ``annotation.prediction``;
    None when it carries none, as Label Studio 1.23's do) and the prediction id the annotation names
    (``annotation.parent_prediction``), as ``parse_annotation`` finds them."""
    return _find_prediction(json_object(payload.get("annotation")), json_object(payload.get("task")), schema)


def annotation_query(payload: Mapping[str, Any], schema: SegmentationSchema) -> str | None:
    """The query of an annotation webhook (the prompt text, else the task's query field), as stored."""
    return _query(json_object(payload.get("annotation")), json_object(payload.get("task")), schema)


def rows_with_prediction(
    stored: Sequence[tuple[int, str, int, int, bytes | None]],
    prediction: Mapping[str, Any],
    schema: SegmentationSchema,
    *,
    annotation_id: int,
    mapping: dict[int, str] | None = None,
    n_levels: int | None = None,
    max_mask_pixels: int = DEFAULT_MAX_MASK_PIXELS,
) -> tuple[list[tuple[Any, ...]], float | None]:
    """A stored record's level rows redone with ``prediction`` (Label Studio form) as the predicted masks.

    Args:
        stored: the record's ``(level, label, height, width, accepted)`` rows (``accepted`` in stored form).
        prediction: the prediction the annotation started from (``result`` with brushlabels regions).
        annotation_id: for messages.

    Returns:
        The new ``correction_levels`` rows (without ``record_id``) and the final level's IoU.

    Raises:
        CorrectionError: a prediction region that does not decode.
    """
    accepted = {
        level: _Region(unpack_mask(blob, height, width), label)
        for level, label, height, width, blob in stored
        if blob is not None
    }
    levels = label_levels(schema, mapping, n_levels)
    predicted = _brush_regions(
        prediction.get("result"),
        schema,
        levels,
        f"prediction {id_or_none(prediction.get('id'))}",
        MaskBudget(max_mask_pixels),
    )
    return _level_rows(accepted, predicted, annotation_id)


def deleted_ids(payload: Mapping[str, Any]) -> list[int]:
    """Annotation ids of an ANNOTATION_DELETED (``annotation``) or ANNOTATIONS_DELETED (``annotations``)."""
    items = payload.get("annotations")
    if not isinstance(items, list):
        items = [payload.get("annotation")]
    ids = [id_or_none(item) for item in items]
    if not ids or any(i is None for i in ids):
        raise CorrectionError(
            f"{payload.get('action')} payload names no annotation id (annotation.id or annotations[].id)"
        )
    return [i for i in ids if i is not None]
