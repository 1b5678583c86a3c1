"""Correction log: what annotators accepted for each chain level, kept durably in SQLite.

Every ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` webhook from Label Studio becomes one record per
(annotation id, revision), the revision being the annotation's ``updated_at`` (normalised to UTC). A record
holds the query, the image reference, the prediction the annotator started from (id, model version, the
predicted mask and score of every level), the accepted mask of every level, and the IoU between the two.
``ANNOTATION_DELETED`` / ``ANNOTATIONS_DELETED`` mark every record of the annotation deleted; deleted records
are kept for audit but left out of listings, statistics and exports. A record whose webhook named its
prediction only by id (``annotation.parent_prediction``, as Label Studio 1.23 sends it) gets the predicted
masks later (``update_prediction``; ``missing_predictions`` lists those still waiting,
``backend.corrections.enrich``).

Decisions: an annotation with no mask region for the schema is still recorded (its levels are the
predicted ones, accepted empty, or none at all): "the annotator removed every mask" is a correction. A
skipped task (``was_cancelled``) is ignored. A replayed webhook for a stored revision is a duplicate and
changes nothing, even if its content differs (the first delivery wins).

The parts: ``annotation_payload`` parses webhooks into pending records, ``correction_records`` holds the
record types and the stored mask form, ``correction_db`` the SQLite schema, connections and transactions;
this module holds ``CorrectionStore``, the API on top of them. Nothing here imports torch: the web process
records webhooks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.corrections.annotations import (
    ANNOTATION_ACTIONS,
    BRUSH_TYPE,
    DEFAULT_MAX_MASK_PIXELS,
    DELETE_ACTIONS,
    PROMPT_TYPE,
    PendingRecord,
    deleted_ids,
    parse_annotation,
    rows_with_prediction,
)
from backend.corrections.database import (
    BUSY_TIMEOUT_S,
    LEVEL_COLUMNS,
    SCHEMA_VERSION,
)
from backend.corrections.reading import CorrectionReader
from backend.corrections.records import (
    CorrectionError,
    CorrectionRecord,
    LevelCorrection,
    RecordOutcome,
    Status,
    utc_iso,
)
from backend.label_studio.label_config import SegmentationSchema
from backend.label_studio.rle import (
    decode_mask as decode_brush_rle,  # its name before it moved to backend.label_studio.rle
)
from backend.operations.ids import id_or_none
from backend.operations.settings import Settings

__all__ = [
    "ANNOTATION_ACTIONS",
    "BRUSH_TYPE",
    "BUSY_TIMEOUT_S",
    "DEFAULT_FILENAME",
    "DELETE_ACTIONS",
    "PROMPT_TYPE",
    "SCHEMA_VERSION",
    "CorrectionError",
    "CorrectionRecord",
    "CorrectionStore",
    "LevelCorrection",
    "RecordOutcome",
    "Status",
    "decode_brush_rle",
    "default_store_path",
    "utc_iso",
]

logger = logging.getLogger(__name__)

DEFAULT_FILENAME = "corrections.sqlite3"


def correction_store_path(settings: Settings) -> Path:
    """Where the web records corrections and training reads them: ``MODEL_DIR/corrections.sqlite3``."""
    return settings.model_dir / DEFAULT_FILENAME


def default_store_path() -> Path:
    """``$MODEL_DIR/corrections.sqlite3`` (``MODEL_DIR`` defaults to ``models``, as in the settings)."""
    return Path(os.environ.get("MODEL_DIR") or "models") / DEFAULT_FILENAME


class CorrectionStore(CorrectionReader):
    """The correction log in one SQLite file; safe to share between threads and processes.

    Example::

        store = CorrectionStore(Path("models/corrections.sqlite3"))
        outcome = store.record_webhook(payload, schema=parse_label_config(payload["project"]["label_config"]))
        store.list(project=3, min_correction=0.2)
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        busy_timeout: float = BUSY_TIMEOUT_S,
        max_mask_pixels: int = DEFAULT_MAX_MASK_PIXELS,
    ) -> None:
        """Open (and on first use create) the store at ``path`` (default ``default_store_path()``).
        ``max_mask_pixels``: the largest brush region a payload may declare (``MAX_MASK_PIXELS``).

        Raises:
            CorrectionError: the file is not a correction store, was written by a newer schema version,
                or the file system refuses WAL mode.
        """
        super().__init__(Path(path) if path is not None else default_store_path(), busy_timeout=busy_timeout)
        self.max_mask_pixels = max_mask_pixels

    # ---- writing ----------------------------------------------------------------------------------------

    def record_webhook(
        self,
        payload: Mapping[str, Any],
        *,
        schema: SegmentationSchema | None,
        image_sha256: str | None = None,
        prediction: Mapping[str, Any] | None = None,
        mapping: dict[int, str] | None = None,
        n_levels: int | None = None,
    ) -> RecordOutcome:
        """Store what one Label Studio webhook says about an annotation; idempotent and atomic.

        Args:
            payload: the webhook body (``action``, ``annotation``, ``task``, ``project``).
            schema: the project's parsed labeling config (which tags hold the masks and the prompt); a
                deletion needs none.
            image_sha256: hex digest of the task image's bytes, when the caller knows it.
            prediction: the prediction the annotation started from, in Label Studio form (``id``,
                ``model_version``, ``result`` with brushlabels regions); by default it is looked up in the
                payload (``task.predictions`` by ``annotation.parent_prediction``; ``annotation_payload``).
            mapping: explicit level -> label overrides (``CORES_LEVEL_LABELS``), as for predictions.
            n_levels: chain length of the model; labels past it are not levels. None: every label is.

        Returns:
            The ``RecordOutcome``. Actions other than annotation create/update/delete, and skipped tasks
            (``was_cancelled``), are ``ignored``.

        Raises:
            CorrectionError: a payload that is not an object, an annotation without ``id``, task id or
                ``updated_at``, a delete without annotation ids, a brush region that does not decode, or
                no ``schema`` for a created/updated annotation.
        """
        start = time.perf_counter()
        if not isinstance(payload, Mapping):
            raise CorrectionError(f"expected a webhook payload object, got {type(payload).__name__}")
        action = payload.get("action")
        if action in DELETE_ACTIONS:
            project = payload.get("project")
            return self._mark_deleted(
                deleted_ids(payload),
                id_or_none(project.get("id") if isinstance(project, Mapping) else project),
            )
        if action not in ANNOTATION_ACTIONS:
            return RecordOutcome("ignored", detail=f"action {action!r} carries no correction")
        annotation = payload.get("annotation")
        if isinstance(annotation, Mapping) and annotation.get("was_cancelled"):
            return RecordOutcome("ignored", detail=f"annotation {annotation.get('id')} is a skipped task")
        if schema is None:
            raise CorrectionError(f"{action} needs the project's labeling config (schema) to read the masks")
        pending = parse_annotation(
            payload,
            schema,
            image_sha256=image_sha256,
            prediction=prediction,
            mapping=mapping,
            n_levels=n_levels,
            max_mask_pixels=self.max_mask_pixels,
        )
        outcome = self._insert(pending)
        logger.info(
            "webhook %s annotation %s revision %s: %s record %s (%d level(s), %.1f ms)",
            action,
            pending.values["annotation_id"],
            pending.values["revision"],
            outcome.status,
            outcome.record_id,
            len(pending.levels),
            (time.perf_counter() - start) * 1000,
        )
        return outcome

    def _insert(self, pending: PendingRecord) -> RecordOutcome:
        values = dict(pending.values, received_at=utc_iso(datetime.now(UTC)))
        with self._write() as conn:
            tomb = conn.execute(
                "SELECT deleted_at FROM deleted_annotations WHERE annotation_id = ?",
                (values["annotation_id"],),
            ).fetchone()
            values["deleted_at"] = tomb[0] if tomb else None
            names = ", ".join(values)
            row = conn.execute(
                f"INSERT INTO corrections ({names}) VALUES ({', '.join('?' * len(values))}) "
                "ON CONFLICT (annotation_id, revision) DO NOTHING RETURNING id",
                tuple(values.values()),
            ).fetchone()
            if row is None:
                existing = conn.execute(
                    "SELECT id FROM corrections WHERE annotation_id = ? AND revision = ?",
                    (values["annotation_id"], values["revision"]),
                ).fetchone()
                return RecordOutcome("duplicate", existing[0], "this revision is already stored")
            record_id = int(row[0])
            conn.executemany(
                f"INSERT INTO correction_levels ({LEVEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(record_id, *level) for level in pending.levels],
            )
        detail = "stored (annotation already deleted)" if values["deleted_at"] else "stored"
        return RecordOutcome("created", record_id, detail)

    def _mark_deleted(self, annotation_ids: list[int], project: int | None) -> RecordOutcome:
        """Mark the annotations' records deleted; with ``project`` (the event's), only that project's
        records, and no tombstone for an annotation another project's records hold (a project's webhook
        secret must not reach other projects' corrections)."""
        now = utc_iso(datetime.now(UTC))
        marked = 0
        scope, extra = ("", ()) if project is None else (" AND project_id = ?", (project,))
        with self._write() as conn:
            for annotation_id in annotation_ids:
                if project is not None:
                    foreign = conn.execute(
                        "SELECT 1 FROM corrections WHERE annotation_id = ? AND project_id != ? LIMIT 1",
                        (annotation_id, project),
                    ).fetchone()
                    if foreign is not None:
                        continue
                conn.execute(
                    "INSERT INTO deleted_annotations (annotation_id, deleted_at) VALUES (?, ?) "
                    "ON CONFLICT (annotation_id) DO NOTHING",
                    (annotation_id, now),
                )
                marked += conn.execute(
                    "UPDATE corrections SET deleted_at = ? WHERE annotation_id = ? AND deleted_at IS NULL"
                    + scope,
                    (now, annotation_id, *extra),
                ).rowcount
        logger.info("annotations %s deleted: %d record(s) marked", annotation_ids, marked)
        return RecordOutcome(
            "deleted", None, f"annotation(s) {annotation_ids}: {marked} record(s) marked deleted"
        )

    def update_prediction(
        self,
        record_id: int,
        prediction: Mapping[str, Any],
        *,
        schema: SegmentationSchema,
        mapping: dict[int, str] | None = None,
        n_levels: int | None = None,
    ) -> bool:
        """Set the prediction a stored record started from, after the fact; atomic.

        For records whose webhook named the prediction only by id (``annotation.parent_prediction``): the
        prediction, fetched later from Label Studio (``GET /api/predictions/<id>``), replaces the record's
        predicted masks, scores and IoUs and sets its ``prediction_id`` and ``model_version``; the accepted
        masks stay as stored.

        Args:
            record_id: the record to update.
            prediction: Label Studio form (``id``, ``model_version``, ``result`` with brushlabels regions).
            schema: the project's labeling config (which tag and labels hold the levels).
            mapping, n_levels: as for ``record_webhook``.

        Returns:
            False when there is no such record, True when it was updated.

        Raises:
            CorrectionError: a prediction region that does not decode.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT annotation_id, prediction_id, model_version FROM corrections WHERE id = ?",
                (record_id,),
            ).fetchone()
            if row is None:
                return False
            annotation_id, old_prediction_id, old_version = row
            stored = conn.execute(
                "SELECT level, label, height, width, accepted FROM correction_levels WHERE record_id = ? "
                "ORDER BY level",
                (record_id,),
            ).fetchall()
            rows, final_iou = rows_with_prediction(
                stored,
                prediction,
                schema,
                annotation_id=annotation_id,
                mapping=mapping,
                n_levels=n_levels,
                max_mask_pixels=self.max_mask_pixels,
            )
            prediction_id = id_or_none(prediction.get("id"))
            version = str(prediction.get("model_version") or "") or old_version
            conn.execute("DELETE FROM correction_levels WHERE record_id = ?", (record_id,))
            conn.executemany(
                f"INSERT INTO correction_levels ({LEVEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(record_id, *level) for level in rows],
            )
            conn.execute(
                "UPDATE corrections SET prediction_id = ?, model_version = ?, final_level = ?, final_iou = ? "
                "WHERE id = ?",
                (
                    prediction_id if prediction_id is not None else old_prediction_id,
                    version,
                    rows[-1][0] if rows else None,
                    final_iou,
                    record_id,
                ),
            )
        logger.info(
            "record %s (annotation %s): prediction %s set (%s, %d predicted level(s), final IoU %s)",
            record_id,
            annotation_id,
            prediction_id if prediction_id is not None else old_prediction_id,
            version,
            sum(1 for level in rows if level[5] is not None),
            None if final_iou is None else round(final_iou, 4),
        )
        return True
