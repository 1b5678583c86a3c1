"""Fill in the predictions that correction records name only by id, from Label Studio's API.

Label Studio 1.23's annotation webhook names a stored prediction the annotator started from only by id
(``annotation.parent_prediction``). When the backend's own prediction memory
(``backend.corrections.prediction_memory``) does not know the prediction either, the webhook records the
annotation with that ``prediction_id`` and no predicted masks, answers Label Studio, and then
(``CorrectionWebhooks``, a small thread pool in the web process) fetches ``GET /api/predictions/<id>/`` and
updates the record (``CorrectionStore.update_prediction``). Records still missing their prediction (the web
was stopped, Label Studio was unreachable) are resolved later by ``python -m backend corrections enrich``
(``enrich_missing``), so nothing depends on the web process surviving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backend.label_studio.connection import LabelStudioConnection
from backend.label_studio.label_config import LabelConfigError, SegmentationSchema, parse_label_config

if TYPE_CHECKING:
    from backend.corrections.store import CorrectionStore

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10.0
"""Seconds per Label Studio API call when fetching a prediction or a labeling config."""


class EnrichError(RuntimeError):
    """A prediction or labeling config could not be read from Label Studio; the message says why."""


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def fetch_prediction(ls: LabelStudioConnection, prediction_id: int) -> dict[str, Any] | None:
    """Prediction ``prediction_id`` in Label Studio form (``id``, ``model_version``, ``score``, ``result``),
    or None when Label Studio has no such prediction (404: deleted since).

    Raises:
        EnrichError: Label Studio cannot be reached or refuses the token.
    """
    from label_studio_sdk.core.api_error import ApiError

    try:
        found = ls.client(timeout=FETCH_TIMEOUT_S).predictions.get(id=prediction_id)
    except ApiError as exc:
        if exc.status_code == 404:
            return None
        raise EnrichError(
            f"Label Studio at {ls.url} answered HTTP {exc.status_code} for prediction {prediction_id}"
        ) from exc
    except Exception as exc:  # httpx transport errors, pydantic errors
        raise EnrichError(
            f"cannot fetch prediction {prediction_id} from Label Studio at {ls.url}: {_describe(exc)}"
        ) from exc
    return {
        "id": found.id if found.id is not None else prediction_id,
        "model_version": found.model_version,
        "score": found.score,
        "result": list(found.result or []),
    }


def fetch_schema(ls: LabelStudioConnection, project: int) -> SegmentationSchema:
    """The parsed labeling config of ``project``.

    Raises:
        EnrichError: Label Studio cannot be reached, or the config is not usable by this backend.
    """
    try:
        config = ls.client(timeout=FETCH_TIMEOUT_S).projects.get(id=project).label_config
    except Exception as exc:  # ApiError, httpx transport errors
        raise EnrichError(
            f"cannot read project {project}'s labeling config from Label Studio at {ls.url}: {_describe(exc)}"
        ) from exc
    try:
        return parse_label_config(config or "")
    except LabelConfigError as exc:
        raise EnrichError(f"project {project}'s labeling config is not usable: {exc}") from exc


@dataclass
class EnrichSummary:
    """What ``enrich_missing`` did: records checked, updated, whose prediction is gone from Label Studio
    (record id -> prediction id), and failures (record id -> reason)."""

    checked: int = 0
    updated: list[int] = field(default_factory=list)
    gone: dict[int, int] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "updated": self.updated,
            "gone": {str(k): v for k, v in self.gone.items()},
            "failed": {str(k): v for k, v in self.failed.items()},
        }


def enrich_missing(
    store: CorrectionStore,
    connection_for: Callable[[int | None], LabelStudioConnection | None],
    *,
    project: int | None = None,
    mapping: dict[int, str] | None = None,
) -> EnrichSummary:
    """Resolve every record that names a prediction but holds none of its masks
    (``CorrectionStore.missing_predictions``) through Label Studio's API.

    Args:
        store: the correction store.
        connection_for: the Label Studio connection for a project id (None when unknown).
        project: only this project's records.
        mapping: explicit level -> label overrides (``CORES_LEVEL_LABELS``).
    """
    from backend.corrections.store import CorrectionError

    summary = EnrichSummary()
    schemas: dict[int | None, SegmentationSchema | EnrichError] = {}
    for record in store.missing_predictions(project):
        summary.checked += 1
        assert record.prediction_id is not None
        ls = connection_for(record.project_id)
        if ls is None:
            summary.failed[record.id] = (
                f"no Label Studio connection for project {record.project_id}: pass --label-studio-url and "
                "--api-key (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)"
            )
            continue
        try:
            if record.project_id not in schemas:
                try:
                    if record.project_id is None:
                        raise EnrichError("the record has no project id, so no labeling config")
                    schemas[record.project_id] = fetch_schema(ls, record.project_id)
                except EnrichError as exc:
                    schemas[record.project_id] = exc
            schema = schemas[record.project_id]
            if isinstance(schema, EnrichError):
                raise schema
            prediction = fetch_prediction(ls, record.prediction_id)
            if prediction is None:
                summary.gone[record.id] = record.prediction_id
                logger.warning(
                    "record %s: prediction %s no longer exists in Label Studio",
                    record.id,
                    record.prediction_id,
                )
                continue
            store.update_prediction(record.id, prediction, schema=schema, mapping=mapping)
            summary.updated.append(record.id)
        except (EnrichError, CorrectionError) as exc:
            summary.failed[record.id] = str(exc)
            logger.warning("record %s: prediction %s not resolved: %s", record.id, record.prediction_id, exc)
    return summary
