"""The warm job: encode images (SAM and CLIP) before their first query, on the low-priority ``warm`` queue.

Queued by the web for tasks opened without a query (``backend.jobs.warm_requests``) and by
``python -m backend warm`` (``backend.bulk.warm_project``). Each image is fetched, hashed and, unless the
encoding store already holds it under this model's encoders, encoded: the encodings land in this worker's
memory cache and in the store under ``MODEL_DIR`` (read by every worker that shares it). One image's failure
is that image's, never the job's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq import get_current_job

from backend.images.fetcher import ImageFetchError
from backend.jobs.image_prefetch import cache_key
from backend.jobs.worker import serving_context
from backend.label_studio.connection import resolve
from backend.operations.ids import parse_id
from backend.operations.version_names import VersionError

logger = logging.getLogger(__name__)


def warm_images(request: dict[str, Any]) -> dict[str, Any]:
    """Encode ``request["images"]`` (``[{"id": task id, "image": url}]``) with ``model_version``'s encoders.

    Returns:
        ``{"warmed": [task ids encoded now], "stored": [task ids already in the store], "failed": {task id:
        reason}, "model_version": str, "ms": float}``.

    Raises:
        ValueError: a malformed request.
    """
    started = time.perf_counter()
    images = request.get("images") if isinstance(request, dict) else None
    if not isinstance(images, list):
        raise ValueError("expected the warm request as {'images': [{'id': ..., 'image': ...}], ...}")
    project = request.get("project")
    version = request.get("model_version")
    try:
        context = serving_context(version if isinstance(version, str) and version else None)
    except VersionError:
        context = serving_context()
    job = get_current_job()
    ls = resolve(
        context.settings, job.connection if job else None, None if project is None else parse_id(project)
    )
    fetcher = context.fetcher(ls)
    pipeline = context.pipeline
    warmed: list[int] = []
    stored: list[int] = []
    failed: dict[str, str] = {}
    for item in images:
        task_id = parse_id(item.get("id"), "images[].id") if isinstance(item, dict) else 0
        try:
            fetched = fetcher.fetch(str(item["image"]), task_id=task_id)
            key = cache_key(fetched)  # the key prediction jobs look the image up by
            if pipeline.encodings is not None and pipeline.encodings.contains(key):
                stored.append(task_id)
                continue
            state = pipeline.set_images([fetched.array], keys=[key])[0]
            if pipeline.encodings is not None and not pipeline.encodings.contains(state.key):
                # it was in this worker's memory only: the store (shared by every worker) gets it too
                pipeline.encodings.save(state.key, state.sam_embedding, state.clip_tokens, state.sam_input)
            warmed.append(task_id)
        except ImageFetchError as exc:
            failed[str(task_id)] = exc.detail
            logger.warning("warm: task %s: %s", task_id, exc)
        except Exception as exc:  # one image's failure is that image's
            logger.exception("warm: task %s: encoding its image raised", task_id)
            failed[str(task_id)] = f"{type(exc).__name__}: {str(exc)[:300]}"
    ms = (time.perf_counter() - started) * 1000
    logger.info(
        "warmed %d image(s), %d already stored, %d failed in %.0f ms",
        len(warmed),
        len(stored),
        len(failed),
        ms,
    )
    return {
        "warmed": warmed,
        "stored": stored,
        "failed": failed,
        "model_version": context.model_version,
        "ms": round(ms, 1),
    }
