"""Queue warm jobs (``backend.jobs.warm``) for images opened before their first query. No torch: the web
calls this.

``/predict`` for tasks without a query (a task opened in the editor, "Retrieve predictions" on tasks that
carry none) queues ONE low-priority job on the ``warm`` queue for their images, so the annotator's first
query finds both image encodings ready. Each image is queued at most once per ``DEDUPE_S`` seconds and
model version (a Redis ``SET NX`` per image URL); the job itself skips images already encoded. Warming is
best effort: a full queue or an unreachable Redis is logged, never an error of the /predict call.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import redis

from backend.jobs import queues
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

DEDUPE_PREFIX = "cores:warm:"
DEDUPE_S = 3600
"""Seconds an image is not queued again for warming (the worker's caches keep it at least that long)."""
MAX_IMAGES_PER_JOB = 64


def dedupe_key(version: str, image: str) -> str:
    """The Redis key that marks ``image`` (a task's image URL) as queued for warming under ``version``."""
    digest = hashlib.sha256(f"{version}\n{image}".encode()).hexdigest()[:32]
    return f"{DEDUPE_PREFIX}{digest}"


def request_warm(
    connection: redis.Redis,
    settings: Settings,
    images: Sequence[tuple[int, str]],
    *,
    version: str,
    project: int | None,
) -> str | None:
    """Queue a warm job for the ``(task id, image URL)`` pairs not queued recently; returns its job id, or
    None when nothing was queued (all recently queued, warming off, queue full, Redis down)."""
    if not settings.warm_encoders or not images:
        return None
    marked: list[str] = []
    try:
        fresh = []
        for task_id, image in images[:MAX_IMAGES_PER_JOB]:
            key = dedupe_key(version, image)
            if connection.set(key, "1", nx=True, ex=DEDUPE_S):
                marked.append(key)
                fresh.append({"id": task_id, "image": image})
        if not fresh:
            return None
        job = queues.enqueue(
            connection,
            settings,
            queues.WARM,
            queues.WARM_JOB,
            {"images": fresh, "model_version": version, "project": project},
            description=f"warm encoders for {len(fresh)} image(s)",
        )
    except (queues.QueueFull, queues.QueueUnavailableError, redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not queue warming of %d image(s): %s", len(images), exc)
        if marked and isinstance(exc, queues.QueueFull):
            connection.delete(*marked)  # not queued: let a later /predict queue them
        return None
    logger.info("queued warm job %s for %d image(s)", job.id, len(fresh))
    return job.id
