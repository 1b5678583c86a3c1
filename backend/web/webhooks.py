"""Label Studio webhooks: which actions the backend handles, and the handlers that get them.

Label Studio sends every project event to ``<backend>/webhook`` once the backend is connected. The web
accepts all of them; the ones in ``HANDLED_ACTIONS`` (annotation changes, the "Start training" button)
go to a ``WebhookHandler``, the rest are answered ``{"status": "ignored"}``. Handlers must be quick (the
request is Label Studio's): record the event, enqueue work, return.

``CorrectionWebhooks`` is the backend's handler:

- ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` / ``ANNOTATION_DELETED`` (and the bulk
  ``ANNOTATIONS_DELETED``) are written to the correction
  store (``MODEL_DIR/corrections.sqlite3``, ``backend.corrections.store``) inside the request: SQLite on local
  disk, no network, no model. The labeling config comes from the payload's ``project.label_config``
  (parsed schemas are cached by the config's hash). The prediction the annotator started from is found in
  the payload (``task.predictions`` / ``annotation.prediction``) by the store; Label Studio 1.23's payloads
  carry none, so it is then looked up in the backend's prediction memory
  (``backend.corrections.prediction_memory``: one Redis ``LRANGE``; what the workers predicted for the task,
  preferring the annotation's query), and when that knows nothing and the annotation names a stored prediction
  (``annotation.parent_prediction``), the record is stored with that id and, off the request path, a small
  thread pool fetches the prediction from Label Studio and updates the record (``backend.corrections.enrich``;
  ``python -m backend corrections enrich`` resolves what is left). The answer's ``status`` is
  what the store did: ``created``, ``duplicate`` (a replayed webhook: that revision is already stored),
  ``deleted`` or ``ignored`` (e.g. a skipped task, or a project whose config has no mask control), with
  ``record`` (the record id) and ``detail``.
- ``START_TRAINING`` enqueues one fine-tune job for the project (``backend.training.requests``): ``queued``
  with the new ``job`` id, or ``already_queued`` with the id of the training job that is still waiting or
  running for that project.

A body the handler cannot read (no annotation object, no annotation id or ``updated_at``, no
``project.label_config``, a mask region that does not decode) raises ``WebhookPayloadError``: the web
answers 400 with its message and nothing is recorded.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import redis

from backend.corrections.annotations import annotation_query, payload_prediction
from backend.corrections.prediction_memory import recall
from backend.corrections.store import correction_store_path
from backend.label_studio.connection import resolve
from backend.label_studio.label_config import LabelConfigError, SegmentationSchema, cached_label_config
from backend.label_studio.webhook_payloads import annotation_task
from backend.operations.ids import id_or_none, project_id
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

DELETE_ACTIONS = frozenset({"ANNOTATION_DELETED", "ANNOTATIONS_DELETED"})
ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}) | DELETE_ACTIONS
TRAIN_ACTION = "START_TRAINING"
HANDLED_ACTIONS = ANNOTATION_ACTIONS | {TRAIN_ACTION}
FETCH_THREADS = 2
"""Threads of the web's pool that fetch predictions named only by id (``CorrectionWebhooks``)."""


class WebhookPayloadError(ValueError):
    """A handled webhook whose body cannot be read; the message says what is missing (answered 400)."""


class WebhookHandler(Protocol):
    """Called with a handled action and the whole webhook body; may return extra JSON-safe fields for
    the answer (e.g. ``{"job": "<id>"}``; a ``status`` replaces the default ``accepted``)."""

    def __call__(self, action: str, payload: Mapping[str, Any]) -> Mapping[str, Any] | None: ...


class CorrectionWebhooks:
    """The backend's webhook handler (see the module docstring). One per web app; thread-safe.

    Args:
        settings: ``MODEL_DIR`` (store location), ``CORES_LEVEL_LABELS`` (level -> label mapping).
        connection: Redis, for ``START_TRAINING``.
        store_path: the correction store (default ``correction_store_path(settings)``); opened on first use.
    """

    def __init__(self, settings: Settings, connection: redis.Redis, store_path: Path | None = None) -> None:
        self.settings = settings
        self.connection = connection
        self.store_path = store_path or correction_store_path(settings)
        self._store: Any = None
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: set[concurrent.futures.Future[None]] = set()

    def store(self) -> Any:
        """The ``CorrectionStore`` (opened, and on first use created, at the first webhook)."""
        with self._lock:
            if self._store is None:
                from backend.corrections.store import CorrectionStore

                self._store = CorrectionStore(self.store_path, max_mask_pixels=self.settings.max_mask_pixels)
            return self._store

    def close(self) -> None:
        """Finish the pending prediction fetches and close the store's connections (tests; the web keeps
        it open)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the prediction fetches submitted so far are done; False if ``timeout`` passed first."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = concurrent.futures.wait(pending, timeout=timeout)
        return not not_done

    def __call__(self, action: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        if action == TRAIN_ACTION:
            return self._start_training(payload)
        return self._record(action, payload)

    def _record(self, action: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        from backend.corrections.store import CorrectionError

        schema: SegmentationSchema | None = None
        if action not in DELETE_ACTIONS:  # a deletion needs no schema
            project = payload.get("project")
            config = project.get("label_config") if isinstance(project, Mapping) else None
            if not isinstance(config, str) or not config.strip():
                raise WebhookPayloadError(
                    f"{action} needs project.label_config (the project's labeling config XML) to know "
                    "which tags hold the masks and the query"
                )
            try:
                schema = cached_label_config(config)
            except LabelConfigError as exc:
                pid = project_id(project.get("id")) if isinstance(project, Mapping) else None
                logger.warning("webhook %s of project %s not recorded: %s", action, pid, exc)
                return {"status": "ignored", "detail": f"the project's labeling config is not usable: {exc}"}
        mapping = dict(self.settings.level_labels) or None
        remembered, fetch_id = self._known_prediction(payload, schema)
        try:
            try:
                outcome = self.store().record_webhook(
                    payload, schema=schema, mapping=mapping, prediction=remembered
                )
            except CorrectionError as exc:
                if remembered is None:
                    raise
                logger.warning(
                    "%s: the remembered prediction is not usable (%s); recording without it", action, exc
                )
                fetch_id = id_or_none(remembered.get("id"))
                outcome = self.store().record_webhook(payload, schema=schema, mapping=mapping)
        except CorrectionError as exc:
            raise WebhookPayloadError(f"{action}: {exc}") from exc
        if (
            schema is not None
            and fetch_id is not None
            and outcome.status == "created"
            and outcome.record_id is not None
        ):
            self._resolve_later(outcome.record_id, fetch_id, annotation_task(payload)[0], schema)
        return {"status": outcome.status, "record": outcome.record_id, "detail": outcome.detail}

    def _known_prediction(
        self, payload: Mapping[str, Any], schema: SegmentationSchema | None
    ) -> tuple[Mapping[str, Any] | None, int | None]:
        """For an annotation whose payload carries no prediction: the remembered prediction (Label Studio
        form, for ``record_webhook``), else the prediction id to fetch from Label Studio after answering.
        ``(None, None)`` when the payload has its own prediction (the store reads it) or names none."""
        annotation = payload.get("annotation")
        if schema is None or not isinstance(annotation, Mapping) or annotation.get("was_cancelled"):
            return None, None
        found, parent_id = payload_prediction(payload, schema)
        if found is not None:
            return None, None
        project, task = annotation_task(payload)
        if project is not None and task is not None:
            try:
                entry = recall(self.connection, project, task, annotation_query(payload, schema))
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning(
                    "cannot read the remembered predictions of project %s task %s: %s", project, task, exc
                )
                entry = None
            if entry is not None:
                logger.info(
                    "annotation %s of task %s: comparing with the remembered %s prediction (%s, query %r)",
                    annotation.get("id"),
                    task,
                    entry.kind,
                    entry.model_version,
                    entry.query,
                )
                return entry.to_label_studio(schema, parent_id), None
        return None, parent_id

    def _resolve_later(
        self, record_id: int, prediction_id: int, project: int | None, schema: SegmentationSchema
    ) -> None:
        """Fetch prediction ``prediction_id`` from Label Studio in the pool and set it on the record."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=FETCH_THREADS, thread_name_prefix="cores-prediction-fetch"
                )
            future = self._executor.submit(self._resolve, record_id, prediction_id, project, schema)
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _resolve(
        self, record_id: int, prediction_id: int, project: int | None, schema: SegmentationSchema
    ) -> None:
        from backend.corrections.enrich import EnrichError, fetch_prediction

        later = "`python -m backend corrections enrich` resolves it later"
        try:
            ls = resolve(self.settings, self.connection, project)
            if ls is None:
                logger.warning(
                    "record %s: prediction %s not fetched: no Label Studio URL and token known for "
                    "project %s (set LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY or connect the backend in "
                    "Label Studio); %s",
                    record_id,
                    prediction_id,
                    project,
                    later,
                )
                return
            prediction = fetch_prediction(ls, prediction_id)
            if prediction is None:
                logger.warning(
                    "record %s: prediction %s no longer exists in Label Studio; the record keeps no "
                    "predicted masks",
                    record_id,
                    prediction_id,
                )
                return
            self.store().update_prediction(
                record_id, prediction, schema=schema, mapping=dict(self.settings.level_labels) or None
            )
        except EnrichError as exc:
            logger.error("record %s: %s; %s", record_id, exc, later)
        except Exception:
            logger.exception("record %s: setting prediction %s failed; %s", record_id, prediction_id, later)

    def _start_training(self, payload: Mapping[str, Any]) -> Mapping[str, Any]:
        from backend.training.requests import TrainRequest, request_training

        project = payload.get("project")
        pid = project_id(project.get("id") if isinstance(project, Mapping) else project)
        if pid is None:
            raise WebhookPayloadError(
                "START_TRAINING needs project.id (the Label Studio project to train on)"
            )
        queued = request_training(self.connection, self.settings, TrainRequest(project=pid, source="webhook"))
        return {
            "status": "queued" if queued.created else "already_queued",
            "job": queued.job_id,
            "project": pid,
        }
