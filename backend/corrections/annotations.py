"""Label Studio annotation webhooks -> pending correction records (parsing only, no storage).

``parse_annotation`` turns an ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` payload into a
``PendingRecord``: the annotation's ids and revision (``updated_at``), the query, the image reference, the
prediction the annotator started from (``_find_prediction``), and per chain level the accepted and predicted
masks with their IoU (``backend.corrections.masks``: every brush, bitmask and polygon region of one level,
OR-ed across regions and tags); the masks are packed in the stored form (``correction_records.pack_mask``).
``deleted_ids`` reads the annotation ids of ``ANNOTATION_DELETED`` / ``ANNOTATIONS_DELETED``.

Nothing here imports torch: the web process records webhooks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.corrections.masks import (
    DEFAULT_MAX_MASK_PIXELS,
    MaskBudget,
    Region,
    control_levels,
    has_masks,
    mask_regions,
)
from backend.corrections.records import CorrectionError, pack_mask, unpack_mask, utc_iso
from backend.label_studio.label_config import SegmentationSchema
from backend.label_studio.webhook_payloads import annotation_task, json_object
from backend.operations.ids import id_or_none
from cores.evaluation.metrics import mask_iou

logger = logging.getLogger(__name__)

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETE_ACTIONS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
BRUSH_TYPE = "brushlabels"
PROMPT_TYPE = "textarea"


@dataclass(frozen=True)
class PendingRecord:
    """A record parsed from a webhook, not yet stored.

    ``values``: the ``corrections`` row by column name (without ``id``, ``received_at``, ``deleted_at``);
    ``levels``: one ``correction_levels`` row per level, without ``record_id``.
    """

    values: dict[str, Any]
    levels: list[tuple[Any, ...]]


def _find_prediction(
    annotation: Mapping[str, Any], task: Mapping[str, Any], schema: SegmentationSchema
) -> tuple[Mapping[str, Any] | None, int | None]:
    """The prediction an annotation started from, and its id.

    Order: the task's prediction whose id is ``annotation.parent_prediction`` (or ``annotation.prediction``'s
    id); else ``annotation.prediction`` when it carries a result; else, when the annotation names no
    prediction, the newest of ``task.predictions`` with regions of this schema's mask controls.
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
    if isinstance(embedded, Mapping) and has_masks(embedded, schema):
        return embedded, pred_id
    if pred_id is None:
        usable = [p for p in listed if has_masks(p, schema)]
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
        CorrectionError: no ``annotation`` object, no annotation id, task id or ``updated_at``, or a mask
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

    levels = control_levels(schema, mapping, n_levels)
    budget = MaskBudget(max_mask_pixels)
    accepted = mask_regions(annotation.get("result"), schema, levels, f"annotation {annotation_id}", budget)
    source, prediction_id = (
        (prediction, id_or_none(prediction.get("id")))
        if prediction is not None
        else (_find_prediction(annotation, task, schema))
    )
    predicted: dict[int, Region] = {}
    if source is not None:
        try:
            predicted = mask_regions(
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
    accepted: Mapping[int, Region], predicted: Mapping[int, Region], annotation_id: int
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
        prediction: the prediction the annotation started from (``result`` with mask regions).
        annotation_id: for messages.

    Returns:
        The new ``correction_levels`` rows (without ``record_id``) and the final level's IoU.

    Raises:
        CorrectionError: a prediction region that does not decode.
    """
    accepted = {
        level: Region(unpack_mask(blob, height, width), label)
        for level, label, height, width, blob in stored
        if blob is not None
    }
    levels = control_levels(schema, mapping, n_levels)
    predicted = mask_regions(
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
