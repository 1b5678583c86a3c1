"""The rq job queues: names, connection, bounded enqueueing, job lookup.

- Four queues, in the priority order every worker listens to them: ``interactive`` (an annotator waits),
  ``bulk`` (batch predictions, pre-annotation), ``warm`` (encode images before their first query,
  ``backend.jobs.warm``), ``train`` (fine-tuning, ``backend.training.requests``).
- Every Queue, Job and Worker uses ``QueueSerializer`` (``backend.operations.json_codec``: orjson): job
  arguments and results are plain JSON, never pickle, so a Redis shared with other tools can never make a
  worker unpickle foreign bytes; jobs written with rq's stock ``JSONSerializer`` read back unchanged.
- Jobs are referenced by dotted path strings (``backend.jobs.predict.predict_tasks``): the web never imports
  the job module or its heavy dependencies.
- Each queue is bounded: ``enqueue`` raises ``QueueFull`` when ``MAX_QUEUED`` jobs already wait there;
  the web answers 503 with ``Retry-After``.
- Failed jobs stay in the queue's ``FailedJobRegistry`` for ``FAILURE_TTL`` seconds with their
  traceback (``job_info`` shows it; ``GET /jobs/<id>`` serves it).
- A worker killed mid-job (SIGKILL, OOM, lost machine) leaves its job STARTED. rq 3 notices when the
  execution's heartbeat expires (``JOB_TIMEOUT`` + 60 s for our non-forking worker) during any live
  worker's registry maintenance, and moves the job to the FailedJobRegistry with an ``AbandonedJobError``
  note; ``requeue`` puts it back on its queue.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result

from backend.operations.json_codec import QueueSerializer
from backend.operations.logs import REQUEST_ID_META, current_request_id
from backend.operations.redis_client import describe_connection
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

INTERACTIVE = "interactive"
BULK = "bulk"
TRAIN = "train"
WARM = "warm"
QUEUE_NAMES = (INTERACTIVE, BULK, WARM, TRAIN)
"""Queue names in priority order: a worker takes interactive jobs first, then bulk, warm, then train."""
SERIALIZER = QueueSerializer
PREDICT_JOB = "backend.jobs.predict.predict_tasks"
"""Dotted path of the prediction job (``backend.jobs.predict.predict_tasks``)."""
WARM_JOB = "backend.jobs.warm.warm_images"
"""Dotted path of the warm job (``backend.jobs.warm.warm_images``)."""
RETRY_AFTER_S = 5
"""Seconds clients are told to wait after a 503 (queue full or Redis unreachable)."""


class QueueFull(Exception):  # noqa: N818 (the name the web and docs use)
    """A queue already holds ``MAX_QUEUED`` waiting jobs; retry after ``retry_after`` seconds."""

    def __init__(self, queue: str, depth: int, limit: int, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(
            f'queue "{queue}" is full ({depth} jobs waiting, limit MAX_QUEUED={limit}); '
            f"retry in {retry_after} s"
        )
        self.queue = queue
        self.depth = depth
        self.limit = limit
        self.retry_after = retry_after


class QueueUnavailableError(Exception):
    """Redis cannot be reached (or failed mid-command); the message says which URL and why."""

    retry_after = RETRY_AFTER_S


@contextmanager
def redis_errors(connection: redis.Redis) -> Iterator[None]:
    """Turn Redis connection failures inside the block into ``QueueUnavailableError``."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise QueueUnavailableError(
            f"Redis at {describe_connection(connection)} is unreachable: {exc}"
        ) from exc


def get_queue(connection: redis.Redis, name: str) -> Queue:
    """The rq queue ``name`` (one of ``QUEUE_NAMES``) with the JSON serializer.

    Raises:
        ValueError: an unknown queue name.
    """
    if name not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {name!r}; expected one of {QUEUE_NAMES}")
    return Queue(name, connection=connection, serializer=SERIALIZER)


def room(connection: redis.Redis, settings: Settings, queue: str) -> int:
    """How many more jobs ``queue`` accepts before it is full (0 when full).

    Raises:
        QueueUnavailableError: Redis is unreachable.
    """
    with redis_errors(connection):
        return max(0, settings.max_queued - get_queue(connection, queue).count)


def enqueue(
    connection: redis.Redis,
    settings: Settings,
    queue: str,
    func: str,
    *args: Any,
    job_id: str | None = None,
    ttl: int | None = None,
    description: str | None = None,
    job_timeout: int | None = None,
) -> Job:
    """Enqueue ``func`` (a dotted path) with JSON-safe ``args`` on ``queue``, if the queue has room.

    Jobs get ``JOB_TIMEOUT``, keep results ``RESULT_TTL`` seconds and failures ``FAILURE_TTL`` seconds.

    Args:
        ttl: seconds the job may wait in the queue before it is discarded unstarted (None: forever).
        job_timeout: seconds the job may run (None: ``JOB_TIMEOUT``).

    Raises:
        QueueFull: ``MAX_QUEUED`` jobs already wait on ``queue``.
        QueueUnavailableError: Redis is unreachable.
    """
    rq_queue = get_queue(connection, queue)
    with redis_errors(connection):
        depth = rq_queue.count
        if depth >= settings.max_queued:
            raise QueueFull(queue, depth, settings.max_queued)
        job = rq_queue.enqueue(
            func,
            args=args,
            job_id=job_id,
            job_timeout=job_timeout or settings.job_timeout,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
            ttl=ttl,
            description=description or func,
            meta=_request_meta(),
        )
    logger.debug("enqueued %s on %s as job %s", func, queue, job.id)
    return job


def _request_meta() -> dict[str, Any] | None:
    """``job.meta`` tying a job to the HTTP request that enqueued it (its log lines then carry the id)."""
    request_id = current_request_id()
    return {REQUEST_ID_META: request_id} if request_id else None


def interactive_ttl(settings: Settings) -> int:
    """Queue TTL of an interactive job: past the web's deadline nobody waits for it any more."""
    return math.ceil(settings.predict_deadline) + 1


def fetch_job(connection: redis.Redis, job_id: str) -> Job | None:
    """The job with this id, or None when it does not exist (or expired).

    Raises:
        QueueUnavailableError: Redis is unreachable.
    """
    with redis_errors(connection):
        try:
            return Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
        except (NoSuchJobError, ValueError, TypeError):
            return None


def result_stream_key(job_id: str) -> str:
    """The Redis stream rq appends a job's results (success or failure) to; XREAD on it to wait."""
    return str(Result.get_key(job_id))


def job_error(job: Job) -> str | None:
    """The traceback text of a failed job's latest execution, None if it did not fail."""
    result = job.latest_result()
    if result is not None and result.type in (Result.Type.FAILED, Result.Type.RETRIED):
        return str(result.exc_string or "")
    return None


Outcome = tuple[Any, str | None]
"""A finished job's ``(return value, None)``, or a failed one's ``(None, traceback)``."""


def result_outcome(result: Result) -> Outcome | None:
    """The outcome a job result says, or None for a ``RETRIED`` result (the job runs again)."""
    if result.type == Result.Type.SUCCESSFUL:
        return result.return_value, None
    if result.type == Result.Type.RETRIED:
        return None
    return None, str(result.exc_string or f"job {result.job_id} ended as {result.type.name}")


def job_outcome(connection: redis.Redis, job_id: str) -> Outcome | None:
    """A finished job's ``(return value, None)``, a failed job's ``(None, traceback)``, or None while it
    has no result yet. A job that no longer exists counts as failed ("expired").

    Raises:
        QueueUnavailableError: Redis is unreachable.
    """
    job = fetch_job(connection, job_id)
    if job is None:
        return None, f"job {job_id} no longer exists (expired or deleted)"
    with redis_errors(connection):
        result = job.latest_result()
    return None if result is None else result_outcome(result)


def wait_for_outcomes(
    connection: redis.Redis, job_ids: Sequence[str], deadline: float, *, block_s: float = 1.0
) -> dict[str, Outcome]:
    """Block on the jobs' result streams (``XREAD BLOCK``) until each job has a final result or ``deadline``
    (``time.monotonic()``) passes; each result is read once, from the stream entry itself (rq's
    ``Result.restore``), not fetched again. A ``RETRIED`` result is skipped: the wait goes on for the next.

    Returns:
        job id -> outcome, for the jobs that ended in time.

    Raises:
        QueueUnavailableError: Redis is unreachable.
    """
    streams = {result_stream_key(job_id): job_id for job_id in job_ids}
    after = dict.fromkeys(streams, "0-0")
    outcomes: dict[str, Outcome] = {}
    with redis_errors(connection):
        while after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            block_ms = max(1, int(min(remaining, block_s) * 1000))
            answer: Any = connection.xread(after, block=block_ms)  # type: ignore[arg-type]
            for stream, entries in answer or []:
                key = stream.decode() if isinstance(stream, bytes) else str(stream)
                entry_id, payload = entries[-1]
                entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                result = Result.restore(
                    streams[key], entry, payload, connection=connection, serializer=SERIALIZER
                )
                outcome = result_outcome(result)
                if outcome is None:
                    after[key] = entry
                    continue
                outcomes[streams[key]] = outcome
                del after[key]
    return outcomes


def job_info(job: Job, *, include_result: bool = False) -> dict[str, Any]:
    """A JSON-safe description of a job: status, queue, timestamps, error (traceback) and result summary.

    Raises:
        QueueUnavailableError: Redis is unreachable.
    """

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    with redis_errors(job.connection):
        status = job.get_status(refresh=True)
        info: dict[str, Any] = {
            "id": job.id,
            "status": str(status.value if isinstance(status, JobStatus) else status),
            "queue": job.origin,
            "func": job.func_name,
            "description": job.description,
            "enqueued_at": iso(job.enqueued_at),
            "started_at": iso(job.started_at),
            "ended_at": iso(job.ended_at),
            "worker": job.worker_name,
            "error": job_error(job),
        }
        value = job.return_value(refresh=True)
    if isinstance(value, dict) and isinstance(value.get("results"), list):
        results = value["results"]
        info["summary"] = {
            "tasks": len(results),
            "predicted": sum(1 for r in results if isinstance(r, dict) and "result" in r),
            "errors": sum(1 for r in results if isinstance(r, dict) and "error" in r),
            "model_version": value.get("model_version"),
            "write_back": value.get("write_back"),
        }
    if include_result:
        info["result"] = value
    return info


def requeue(connection: redis.Redis, job_id: str) -> Job:
    """Put a failed (or abandoned) job back on its queue.

    Raises:
        ValueError: no such job, or it is not in its queue's failed registry.
        QueueUnavailableError: Redis is unreachable.
    """
    job = fetch_job(connection, job_id)
    if job is None:
        raise ValueError(f"no job {job_id!r} (it may have expired)")
    with redis_errors(connection):
        registry = FailedJobRegistry(job.origin, connection=connection, serializer=SERIALIZER)
        if job.id not in registry:
            raise ValueError(f"job {job_id} is {job.get_status().value}, not failed: nothing to requeue")
        return registry.requeue(job)


def registry_counts(connection: redis.Redis) -> dict[str, dict[str, int]]:
    """Per queue: ``queued``, ``started``, ``failed``, ``finished`` job counts (no registry cleanup).

    Raises:
        QueueUnavailableError: Redis is unreachable.
    """
    counts: dict[str, dict[str, int]] = {}
    with redis_errors(connection):
        for name in QUEUE_NAMES:
            queue = get_queue(connection, name)
            counts[name] = {
                "queued": queue.count,
                "started": queue.started_job_registry.get_job_count(cleanup=False),
                "failed": queue.failed_job_registry.get_job_count(cleanup=False),
                "finished": queue.finished_job_registry.get_job_count(cleanup=False),
            }
    return counts
