"""Reading the correction log: listings, single records, statistics, records still lacking their prediction.

``CorrectionReader`` holds the queries; ``backend.corrections.store.CorrectionStore`` adds recording on top
of it. Deleted records are left out unless asked for; ``latest_only`` keeps each annotation's newest revision.
"""

from __future__ import annotations

import builtins
import sqlite3
from datetime import datetime
from typing import Any

from backend.corrections.database import LEVEL_COLUMNS, RECORD_COLUMNS, CorrectionDatabase
from backend.corrections.records import CorrectionRecord, LevelCorrection, utc_iso

_IN_CHUNK = 500  # ids per "IN (...)" query, far below SQLite's variable limit
_MIN_CORRECTION_EPS = 1e-9


class CorrectionReader(CorrectionDatabase):
    """The read side of the correction log (see the module docstring); safe to share between threads."""

    def missing_predictions(self, project: int | None = None) -> builtins.list[CorrectionRecord]:
        """Records (not deleted) that name a prediction (``prediction_id``) but hold none of its masks: the
        ones ``python -m backend corrections enrich`` resolves through Label Studio. Oldest first."""
        where = "" if project is None else " AND project_id = ?"
        params = [] if project is None else [project]
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM corrections WHERE prediction_id IS NOT NULL "
                "AND deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM correction_levels l "
                f"WHERE l.record_id = corrections.id AND l.predicted IS NOT NULL){where} "
                "ORDER BY revision, id",
                params,
            ).fetchall()
            return self._with_levels(conn, rows)

    def _select(
        self,
        conn: sqlite3.Connection,
        *,
        project: int | None,
        since: datetime | str | None,
        until: datetime | str | None,
        min_correction: float | None,
        include_deleted: bool,
        latest_only: bool,
    ) -> list[tuple[Any, ...]]:
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if project is not None:
            where.append("project_id = ?")
            params.append(project)
        if since is not None:
            where.append("revision >= ?")
            params.append(utc_iso(since))
        if until is not None:
            where.append("revision < ?")
            params.append(utc_iso(until))
        if not include_deleted:
            where.append("deleted_at IS NULL")
        sql = f"SELECT {RECORD_COLUMNS} FROM corrections WHERE {' AND '.join(where) or '1'}"
        if latest_only:
            sql = (
                f"SELECT {RECORD_COLUMNS} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY annotation_id "
                f"ORDER BY revision DESC, id DESC) AS rn FROM ({sql})) WHERE rn = 1"
            )
        if min_correction is not None:
            sql = f"SELECT * FROM ({sql}) WHERE 1.0 - COALESCE(final_iou, 0.0) >= ?"
            params.append(float(min_correction) - _MIN_CORRECTION_EPS)
        return conn.execute(f"{sql} ORDER BY revision, id", params).fetchall()

    def _with_levels(
        self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]], *, masks: bool = True
    ) -> list[CorrectionRecord]:
        columns = LEVEL_COLUMNS if masks else LEVEL_COLUMNS.replace("accepted, predicted", "NULL, NULL")
        levels: dict[int, list[LevelCorrection]] = {}
        ids = [row[0] for row in rows]
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            for lvl in conn.execute(
                f"SELECT {columns} FROM correction_levels WHERE record_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY record_id, level",
                chunk,
            ):
                levels.setdefault(lvl[0], []).append(LevelCorrection(*lvl[1:]))
        names = [name.strip() for name in RECORD_COLUMNS.split(",")]
        return [
            CorrectionRecord(**dict(zip(names, row, strict=True)), levels=tuple(levels.get(row[0], ())))
            for row in rows
        ]

    def list(
        self,
        project: int | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        min_correction: float | None = None,
        include_deleted: bool = False,
        *,
        latest_only: bool = False,
        masks: bool = True,
    ) -> list[CorrectionRecord]:
        """Records, oldest revision first, with their levels.

        Args:
            project: only this Label Studio project id.
            since: only revisions (``updated_at``) at or after this time (ISO string or datetime; a
                time without an offset is UTC).
            until: only revisions before this time.
            min_correction: only records whose final level changed at least this much:
                ``1 - IoU(predicted, accepted) >= min_correction`` (records without a prediction count 1.0).
            include_deleted: also records of deleted annotations.
            latest_only: only the newest revision of each annotation (within the project/time window);
                ``min_correction`` then applies to that revision.
            masks: False leaves the levels' ``accepted`` and ``predicted`` masks out (None), for readers of
                the IoUs and scores only (``get`` a record for its masks).

        Raises:
            CorrectionError: ``since``/``until`` strings that are not ISO 8601 times.
        """
        with self._read() as conn:
            rows = self._select(
                conn,
                project=project,
                since=since,
                until=until,
                min_correction=min_correction,
                include_deleted=include_deleted,
                latest_only=latest_only,
            )
            return self._with_levels(conn, rows, masks=masks)

    def get(self, record_id: int) -> CorrectionRecord | None:
        """The record with this id (deleted or not), or None."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {RECORD_COLUMNS} FROM corrections WHERE id = ?", (record_id,)
            ).fetchall()
            records = self._with_levels(conn, rows)
        return records[0] if records else None

    def stats(self, project: int | None = None) -> dict[str, Any]:
        """Counts and agreement, JSON-safe.

        ``records`` / ``deleted_records`` count stored revisions; everything else describes the newest
        non-deleted revision of each annotation: ``annotations``, ``with_prediction``, ``mean_correction``,
        ``levels`` (per level: ``count``, ``accepted``, ``with_prediction``, ``mean_iou``), ``annotators``
        and ``model_versions`` (counts; ``"none"`` for records without a model version).
        """
        scope, params = ("WHERE project_id = ?", [project]) if project is not None else ("", [])
        latest = (
            "WITH latest AS (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY annotation_id "
            "ORDER BY revision DESC, id DESC) AS rn FROM corrections WHERE deleted_at IS NULL"
            f"{' AND project_id = ?' if project is not None else ''}) WHERE rn = 1) "
        )
        with self._read() as conn:
            records, deleted = conn.execute(
                f"SELECT COUNT(*) - COUNT(deleted_at), COUNT(deleted_at) FROM corrections {scope}", params
            ).fetchone()
            annotations, mean_correction = conn.execute(
                latest + "SELECT COUNT(*), AVG(1.0 - COALESCE(final_iou, 0.0)) FROM latest", params
            ).fetchone()
            with_prediction = conn.execute(
                latest + "SELECT COUNT(*) FROM latest WHERE EXISTS (SELECT 1 FROM correction_levels l "
                "WHERE l.record_id = latest.id AND l.predicted IS NOT NULL)",
                params,
            ).fetchone()[0]
            levels = conn.execute(
                latest + "SELECT level, COUNT(*), COUNT(accepted), COUNT(predicted), AVG(iou) "
                "FROM correction_levels JOIN latest ON record_id = latest.id GROUP BY level ORDER BY level",
                params,
            ).fetchall()
            labels: dict[int, builtins.list[str]] = {}
            for level, label in conn.execute(
                latest + "SELECT DISTINCT level, label FROM correction_levels JOIN latest "
                "ON record_id = latest.id ORDER BY level, label",
                params,
            ):
                labels.setdefault(level, []).append(label)
            annotators = conn.execute(
                latest + "SELECT annotator, COUNT(*) FROM latest GROUP BY annotator ORDER BY annotator",
                params,
            ).fetchall()
            versions = conn.execute(
                latest
                + "SELECT model_version, COUNT(*) FROM latest GROUP BY model_version ORDER BY model_version",
                params,
            ).fetchall()
        return {
            "project": project,
            "records": records,
            "deleted_records": deleted,
            "annotations": annotations,
            "with_prediction": with_prediction,
            "mean_correction": mean_correction,
            "levels": [
                {
                    "level": level,
                    "labels": labels.get(level, []),
                    "count": count,
                    "accepted": accepted,
                    "with_prediction": predicted,
                    "mean_iou": mean_iou,
                }
                for level, count, accepted, predicted, mean_iou in levels
            ],
            "annotators": {str(name) if name is not None else "unknown": n for name, n in annotators},
            "model_versions": {str(name) if name is not None else "none": n for name, n in versions},
        }
