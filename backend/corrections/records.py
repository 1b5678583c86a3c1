"""What the correction log stores and returns: records, their levels, outcomes, and the stored forms.

Masks are stored as ``zlib.compress(bytes(rle))`` of the canonical Label Studio brush RLE of the binary
mask (``backend.label_studio.rle.encode_mask``: every pixel is four RGBA bytes of 0 or 255) with the level's
height and width. Brush RLE is what the export manifest and Label Studio speak, and it already run-length
codes the mask; zlib takes off another ~40 % (a 1024x768 blob: 2.8 KB of RLE, 1.7 KB stored). The annotator's
own RLE is not kept byte for byte: regions of one level are OR-ed and anti-aliased alpha is binarised (alpha
>= 1 is foreground, as in the SDK's COCO export).

Times are fixed-width UTC ISO 8601 strings (``utc_iso``), so they sort as text.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from backend.label_studio.rle import decode_mask, encode_mask

Status = Literal["created", "duplicate", "deleted", "ignored"]


class CorrectionError(ValueError):
    """A webhook payload or a store the correction log cannot use; the message says what was expected."""


@dataclass(frozen=True)
class RecordOutcome:
    """What ``CorrectionStore.record_webhook`` did.

    ``status``: ``created`` (a new record, ``record_id``), ``duplicate`` (that revision was already stored,
    ``record_id`` is the stored one), ``deleted`` (the annotation's records are marked deleted) or ``ignored``
    (an action that carries no correction). ``detail`` is a short message for logs and HTTP answers.
    """

    status: Status
    record_id: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class LevelCorrection:
    """One chain level of a record.

    Attributes:
        level: 1-based chain level (1: where the target usually is; the highest: the target).
        label: the BrushLabels label of that level.
        height: mask height in pixels (the image's ``original_height``).
        width: mask width in pixels.
        accepted: the accepted mask as stored (zlib of brush RLE), None when the annotation has no region
            for this level.
        predicted: the predicted mask as stored, None when no prediction is known for this level.
        predicted_score: the predicted region's score, if any.
        iou: IoU between the predicted and the accepted mask (a missing accepted region counts as an empty
            mask); None without a prediction for this level.
    """

    level: int
    label: str
    height: int
    width: int
    accepted: bytes | None
    predicted: bytes | None
    predicted_score: float | None
    iou: float | None

    def accepted_rle(self) -> list[int] | None:
        """The accepted mask as Label Studio brush RLE (``value.rle``), or None."""
        return None if self.accepted is None else list(zlib.decompress(self.accepted))

    def predicted_rle(self) -> list[int] | None:
        """The predicted mask as Label Studio brush RLE, or None."""
        return None if self.predicted is None else list(zlib.decompress(self.predicted))

    def accepted_mask(self) -> np.ndarray | None:
        """The accepted mask as an HxW bool array, or None."""
        return None if self.accepted is None else unpack_mask(self.accepted, self.height, self.width)

    def predicted_mask(self) -> np.ndarray | None:
        """The predicted mask as an HxW bool array, or None."""
        return None if self.predicted is None else unpack_mask(self.predicted, self.height, self.width)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe summary without the masks (sizes and pixel counts only)."""
        accepted = self.accepted_mask()
        return {
            "level": self.level,
            "label": self.label,
            "height": self.height,
            "width": self.width,
            "accepted_pixels": None if accepted is None else int(accepted.sum()),
            "has_prediction": self.predicted is not None,
            "predicted_score": self.predicted_score,
            "iou": self.iou,
        }


@dataclass(frozen=True)
class CorrectionRecord:
    """One stored revision of one annotation (see ``backend.corrections.store``). Times are UTC ISO 8601
    strings."""

    id: int
    project_id: int | None
    task_id: int
    annotation_id: int
    revision: str
    action: str
    annotator: str | None
    annotation_created_at: str | None
    received_at: str
    query: str | None
    image_ref: str | None
    image_sha256: str | None
    prediction_id: int | None
    model_version: str | None
    final_level: int | None
    final_iou: float | None
    deleted_at: str | None
    levels: tuple[LevelCorrection, ...] = field(default=())

    @property
    def correction(self) -> float:
        """How much the annotator changed the final level: ``1 - IoU``; 1.0 without a prediction."""
        return 1.0 if self.final_iou is None else 1.0 - self.final_iou

    def level(self, index: int) -> LevelCorrection | None:
        """The record's level ``index`` (1-based), or None."""
        return next((lvl for lvl in self.levels if lvl.level == index), None)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe summary of the record (masks summarised, not included)."""
        return {
            "id": self.id,
            "project": self.project_id,
            "task": self.task_id,
            "annotation": self.annotation_id,
            "revision": self.revision,
            "action": self.action,
            "annotator": self.annotator,
            "annotation_created_at": self.annotation_created_at,
            "received_at": self.received_at,
            "query": self.query,
            "image": self.image_ref,
            "image_sha256": self.image_sha256,
            "prediction_id": self.prediction_id,
            "model_version": self.model_version,
            "final_level": self.final_level,
            "final_iou": self.final_iou,
            "correction": self.correction,
            "deleted_at": self.deleted_at,
            "levels": [lvl.to_json() for lvl in self.levels],
        }


def utc_iso(value: datetime | str) -> str:
    """A time as a fixed-width UTC ISO 8601 string (``2025-03-01T10:00:00.000000Z``), sortable as text.

    Naive datetimes and strings without an offset are taken as UTC.

    Raises:
        CorrectionError: a string that is not an ISO 8601 time.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise CorrectionError(
                f"expected an ISO 8601 time like 2025-03-01T10:00:00Z, got {value!r}"
            ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pack_mask(mask: np.ndarray) -> bytes:
    """HxW bool mask -> stored form: zlib of its canonical brush RLE bytes."""
    return zlib.compress(bytes(encode_mask(mask)))


def unpack_mask(blob: bytes, height: int, width: int) -> np.ndarray:
    """Stored form -> HxW bool mask."""
    return decode_mask(zlib.decompress(blob), height, width)
