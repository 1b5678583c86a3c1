"""Precompute a project's image encodings: ``python -m backend warm --project ID``.

Lists the project's tasks through the Label Studio API (as ``preannotate`` does) and queues their images on
the low-priority ``warm`` queue in jobs of ``--batch-size`` images (``backend.jobs.warm``): the workers fetch
each image, and encode it unless the persistent encoding store under ``MODEL_DIR`` already holds it for the
served model's encoders. So a rerun resumes: images already stored are fetched (from the image cache) and
hashed, never encoded again. A progress bar follows the jobs; the summary counts images encoded now,
already stored, and failed. Interactive and bulk jobs still go first on every worker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from tqdm import tqdm

from backend.bulk.preannotate import PreannotateError, iter_tasks
from backend.jobs import queues
from backend.label_studio.connection import LabelStudioConnection
from backend.label_studio.label_config import parse_label_config
from backend.label_studio.queries import resolve_image_url
from backend.label_studio.task_errors import TaskError
from backend.operations.settings import Settings
from backend.operations.version_names import VersionError
from backend.versions.serving import served_version

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 16
QUEUE_RETRY_S = 2.0


@dataclass
class WarmSummary:
    """Image counts of a warm run, and one message per failed task."""

    total: int = 0
    warmed: int = 0
    stored: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, task_id: Any, message: str) -> None:
        self.failed += 1
        self.errors.append(f"task {task_id}: {message}")


def warm_project(
    settings: Settings,
    connection: redis.Redis,
    project: int,
    *,
    batch_size: int = DEFAULT_BATCH,
    client: Any = None,
    progress: bool = True,
    poll_s: float = 0.5,
    sleep: Callable[[float], object] = time.sleep,
) -> WarmSummary:
    """Encode every image of ``project`` into the encoding store (see the module docstring).

    Raises:
        PreannotateError: no Label Studio credentials, a config the backend cannot use, a missing version.
        queues.QueueUnavailableError: Redis is unreachable.
    """
    if settings.encoding_store_bytes <= 0:
        raise PreannotateError("ENCODING_STORE_BYTES=0 turns the encoding store off: nothing to warm into")
    if client is None:
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise PreannotateError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to warm a project")
        client = LabelStudioConnection(settings.label_studio_url, settings.label_studio_api_key).client()
    try:
        version = served_version(settings, project=project).name
    except VersionError as exc:
        raise PreannotateError(str(exc)) from exc
    try:
        schema = parse_label_config(client.projects.get(id=project).label_config or "")
    except ValueError as exc:
        raise PreannotateError(f"project {project}: {exc}") from exc

    summary = WarmSummary()
    todo: list[dict[str, Any]] = []
    for task in iter_tasks(client, project):
        summary.total += 1
        try:
            todo.append(
                {"id": int(task.id), "image": resolve_image_url({"data": dict(task.data or {})}, schema)}
            )
        except TaskError as exc:
            summary.fail(task.id, exc.message)
    jobs: dict[str, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(todo), unit="image", desc=f"warm project {project}", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            request = {"images": chunk, "model_version": version, "project": project}
            jobs[_enqueue_when_room(connection, settings, request, project, sleep)] = chunk
            _collect(connection, jobs, summary, bar)
        while jobs:
            sleep(poll_s)
            _collect(connection, jobs, summary, bar)
    finally:
        bar.close()
    return summary


def _enqueue_when_room(
    connection: redis.Redis,
    settings: Settings,
    request: dict[str, Any],
    project: int,
    sleep: Callable[[float], object],
) -> str:
    job_id = uuid.uuid4().hex
    while True:
        try:
            queues.enqueue(
                connection,
                settings,
                queues.WARM,
                queues.WARM_JOB,
                request,
                job_id=job_id,
                description=f"warm project {project}: {len(request['images'])} image(s)",
            )
            return job_id
        except queues.QueueFull as exc:
            logger.info("%s; waiting", exc)
            sleep(QUEUE_RETRY_S)


def _collect(
    connection: redis.Redis, jobs: dict[str, list[dict[str, Any]]], summary: WarmSummary, bar: tqdm
) -> None:
    for job_id in list(jobs):
        outcome = queues.job_outcome(connection, job_id)
        if outcome is None:
            continue
        images = jobs.pop(job_id)
        value, error = outcome
        if error is not None or not isinstance(value, Mapping):
            last = (error or "no result").strip().splitlines()[-1]
            for image in images:
                summary.fail(image["id"], f"job {job_id} failed: {last}")
        else:
            summary.warmed += len(value.get("warmed") or [])
            summary.stored += len(value.get("stored") or [])
            for task_id, reason in (value.get("failed") or {}).items():
                summary.fail(task_id, str(reason))
        bar.update(len(images))
