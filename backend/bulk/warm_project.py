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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from tqdm import tqdm

from backend.bulk.preannotate import PreannotateError, TaskFailures, enqueue_when_room, project_for_run
from backend.jobs import queues
from backend.label_studio.queries import resolve_image_url
from backend.label_studio.task_errors import TaskError
from backend.label_studio.task_pages import iter_tasks
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 16


@dataclass
class WarmSummary(TaskFailures):
    """Image counts of a warm run and its failures."""

    total: int = 0
    warmed: int = 0
    stored: int = 0


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
    client, version, schema = project_for_run(settings, project, client, "warm a project")

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
            description = f"warm project {project}: {len(chunk)} image(s)"
            job_id = enqueue_when_room(
                connection, settings, queues.WARM, queues.WARM_JOB, request, description, sleep
            )
            jobs[job_id] = chunk
            _collect(connection, jobs, summary, bar)
        while jobs:
            sleep(poll_s)
            _collect(connection, jobs, summary, bar)
    finally:
        bar.close()
    return summary


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
