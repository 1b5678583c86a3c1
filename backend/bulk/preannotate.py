"""Bulk pre-annotation of a whole Label Studio project: ``python -m backend preannotate --project ID``.

Lists the project's tasks through the Label Studio API, skips tasks that already hold a prediction of the
current model version (so an interrupted run resumes where it stopped), and enqueues the rest on the
``bulk`` queue in jobs of ``--batch-size`` tasks with ``write_back``: the workers write each prediction
to Label Studio themselves. A progress bar follows the jobs; the summary counts tasks done (written, or
already there when the job checked), skipped (already predicted before the run) and failed (no query, no
image, image or model errors, failed jobs, write-back errors). When the queue is full, enqueueing waits
for room rather than failing.
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

from backend.jobs import queues
from backend.jobs.payloads import PredictRequest, TaskInput
from backend.label_studio.connection import LabelStudioConnection
from backend.label_studio.label_config import SegmentationSchema, parse_label_config
from backend.label_studio.queries import check_query, resolve_image_url
from backend.label_studio.task_errors import TaskError
from backend.label_studio.task_pages import iter_tasks
from backend.operations.settings import Settings
from backend.operations.version_names import VersionError
from backend.versions.serving import served_version

logger = logging.getLogger(__name__)

QUEUE_RETRY_S = 2.0


class PreannotateError(RuntimeError):
    """Pre-annotation cannot start (no Label Studio credentials, unusable config, bad arguments, a pinned
    model version that does not exist)."""


@dataclass
class TaskFailures:
    """How many tasks of a run failed, and one message per failed task (``"task 7: ..."``)."""

    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, task_id: Any, message: str) -> None:
        self.failed += 1
        self.errors.append(f"task {task_id}: {message}")


@dataclass
class PreannotateSummary(TaskFailures):
    """Task counts of a pre-annotation run and its failures."""

    total: int = 0
    done: int = 0
    skipped: int = 0


def project_for_run(
    settings: Settings, project: int, client: Any, what: str
) -> tuple[Any, str, SegmentationSchema]:
    """(client, served version, labeling-config schema) for a run over ``project``'s tasks; the client
    from ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` when None. ``what``: the run, for the error.

    Raises:
        PreannotateError: no credentials, a missing model version, a labeling config the backend cannot use.
    """
    if client is None:
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise PreannotateError(f"set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to {what}")
        client = LabelStudioConnection(settings.label_studio_url, settings.label_studio_api_key).client()
    try:
        version = served_version(settings, project=project).name
    except VersionError as exc:
        raise PreannotateError(str(exc)) from exc
    try:
        schema = parse_label_config(client.projects.get(id=project).label_config or "")
    except ValueError as exc:
        raise PreannotateError(f"project {project}: {exc}") from exc
    return client, version, schema


def task_query(task_data: Mapping[str, Any], query: str | None, query_field: str | None) -> str:
    """The query for one task: ``query`` for all tasks, else the task's ``query_field``.

    Raises:
        TaskError: missing_query, empty_query, query_too_long.
    """
    if query is not None:
        return check_query(query, "--query")
    if query_field and query_field in task_data:
        return check_query(task_data[query_field], f'task data field "{query_field}"')
    raise TaskError("missing_query", f'no query: the task data has no field "{query_field}"')


def preannotate(
    settings: Settings,
    connection: redis.Redis,
    project: int,
    *,
    query: str | None = None,
    query_field: str | None = None,
    batch_size: int | None = None,
    client: Any = None,
    progress: bool = True,
    poll_s: float = 0.5,
    sleep: Callable[[float], object] = time.sleep,
) -> PreannotateSummary:
    """Pre-annotate every task of ``project`` that lacks a prediction of the current model version.

    Args:
        query: one query for every task; else each task's ``query_field`` (default: the field the
            labeling config's TextArea reads, ``value="$query"``).
        batch_size: tasks per job (default ``PREDICT_BATCH_SIZE``).
        client: a label-studio-sdk client (default: from LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY).

    Raises:
        PreannotateError: no Label Studio credentials, a config the backend cannot use, no query source.
        queues.QueueUnavailableError: Redis is unreachable.
    """
    client, version, schema = project_for_run(settings, project, client, "pre-annotate a project")
    field_name = query_field or schema.query_field
    if query is None and field_name is None:
        raise PreannotateError(
            "no query source: pass --query, or --query-field naming a task data field (the labeling config "
            "has no TextArea reading one)"
        )
    predicted = {p.task for p in client.predictions.list(project=project) if p.model_version == version}

    summary = PreannotateSummary()
    todo: list[TaskInput] = []
    for task in iter_tasks(client, project):
        summary.total += 1
        if task.id in predicted:
            summary.skipped += 1
            continue
        data = dict(task.data or {})
        try:
            todo.append(
                TaskInput(
                    id=int(task.id),
                    image=resolve_image_url({"data": data}, schema),
                    query=task_query(data, query, field_name),
                )
            )
        except TaskError as exc:
            summary.fail(task.id, exc.message)
    logger.info(
        "project %s: %d tasks, %d already predicted by %s, %d to do",
        project,
        summary.total,
        summary.skipped,
        version,
        len(todo),
    )
    size = batch_size or settings.predict_batch_size
    jobs: dict[str, list[TaskInput]] = {}
    bar = tqdm(total=len(todo), unit="task", desc=f"project {project}", disable=not progress)
    try:
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            request = _request(chunk, schema, version, settings, project)
            description = f"preannotate project {project}"
            job_id = enqueue_when_room(
                connection, settings, queues.BULK, queues.PREDICT_JOB, request.to_json(), description, sleep
            )
            jobs[job_id] = chunk
            _collect(connection, jobs, summary, bar)
        while jobs:
            sleep(poll_s)
            _collect(connection, jobs, summary, bar)
    finally:
        bar.close()
    return summary


def _request(
    chunk: list[TaskInput], schema: SegmentationSchema, version: str, settings: Settings, project: int
) -> PredictRequest:
    return PredictRequest(
        tasks=tuple(chunk),
        schema=schema,
        model_version=version,
        kind="bulk",
        level_labels=settings.level_labels,
        project=project,
        write_back=True,
    )


def enqueue_when_room(
    connection: redis.Redis,
    settings: Settings,
    queue: str,
    func: str,
    payload: dict[str, Any],
    description: str,
    sleep: Callable[[float], object],
) -> str:
    """Enqueue ``func(payload)`` on ``queue``, waiting ``QUEUE_RETRY_S`` while it is full; the job id."""
    job_id = uuid.uuid4().hex
    while True:
        try:
            queues.enqueue(connection, settings, queue, func, payload, job_id=job_id, description=description)
            return job_id
        except queues.QueueFull as exc:
            logger.info("%s; waiting", exc)
            sleep(QUEUE_RETRY_S)


def _collect(
    connection: redis.Redis, jobs: dict[str, list[TaskInput]], summary: PreannotateSummary, bar: tqdm
) -> None:
    """Count the tasks of jobs that ended and forget those jobs."""
    for job_id in list(jobs):
        outcome = queues.job_outcome(connection, job_id)
        if outcome is None:
            continue
        tasks = jobs.pop(job_id)
        value, error = outcome
        if error is not None or not isinstance(value, Mapping):
            last = (error or "no result").strip().splitlines()[-1]
            for task in tasks:
                summary.fail(task.id, f"job {job_id} failed: {last}")
        else:
            write_back = value.get("write_back") or {}
            failed_writes = write_back.get("failed") or {}
            for task, result in zip(tasks, value["results"], strict=True):
                if "error" in result:
                    summary.fail(task.id, str(result["error"].get("message")))
                elif str(task.id) in failed_writes:
                    summary.fail(task.id, f"write-back failed: {failed_writes[str(task.id)]}")
                else:
                    summary.done += 1
        bar.update(len(tasks))
