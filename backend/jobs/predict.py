"""Queue jobs: module-level functions with JSON-safe arguments and results, run by ``backend.jobs.worker``.

The web enqueues them by dotted path (``backend.jobs.predict.predict_tasks``) and never imports this module.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import redis
from rq import get_current_job

from backend.corrections.prediction_memory import RememberedPrediction, remember
from backend.images.fetcher import FetchedImage, ImageFetchError
from backend.jobs.chains import internal_error, run_chains
from backend.jobs.delivery import Deliverer, finish_claim
from backend.jobs.image_prefetch import ImagePrefetch, cache_key
from backend.jobs.payloads import PredictRequest
from backend.jobs.refinement import keep_chain, refine_task
from backend.jobs.worker import WorkerContext, serving_context
from backend.label_studio.connection import LabelStudioConnection, resolve
from backend.label_studio.label_config import LabelConfigError
from backend.label_studio.predictions import build_prediction
from backend.label_studio.task_errors import TaskError, error_element
from backend.label_studio.writeback import WriteBackReport, write_predictions
from backend.operations.metrics import MetricsStore
from backend.operations.settings import Settings
from backend.operations.version_names import VersionError
from backend.review.score import ReviewScore, review_score

if TYPE_CHECKING:
    from cores.inference.result import ChainResult

logger = logging.getLogger(__name__)


def predict_tasks(request: dict[str, Any]) -> dict[str, Any]:
    """Predict every task of a request (``backend.jobs.payloads.PredictRequest`` as JSON).

    Per task: fetch the image, run the CoReS chain, score it for review (``backend.review.score``: the
    prediction's ``score``, the parts in each region's ``meta.review``), format one region per level. A
    task that fails gets ``{"error": {...}, "model_version": ...}`` in its slot; the others are still
    predicted. With ``write_back``, predictions the web will not return (``backend.jobs.delivery``) are
    written to Label Studio, skipping tasks that already hold this model version.

    The job runs the version the request names (``model_version``: the one the web promised the project;
    the worker loads it first when another is loaded), so every prediction carries the version that
    produced it. A requested version this worker does not know at all (web and worker configured with
    different checkpoints, ``MODEL_VERSION`` or ``MODEL_DIR``) fails every task with
    ``model_version_mismatch``.

    Returns:
        ``{"results": [prediction or error, one per task, in order], "model_version": str (the version
        that produced them), "requested_version": str, "delivered_by": "web" | "job" | null,
        "write_back": {"created", "skipped", "failed"} | null,
        "timings": {"fetch_ms", "model_ms", "format_ms", "total_ms"}}``.

    Raises:
        ValueError: a malformed request (the job fails and stays in the failed registry).
    """
    started = time.perf_counter()
    parsed = PredictRequest.from_json(request)
    job = get_current_job()
    connection = job.connection if job is not None else None
    requested = parsed.model_version
    try:
        context = serving_context(requested)  # the version the web promised this project
        known = True
    except VersionError:
        context = serving_context()
        known = False
    version = context.model_version
    if requested != version:
        parsed = replace(parsed, model_version=version)
    n = len(parsed.tasks)
    slots: list[dict[str, Any] | None] = [None] * n
    timings: dict[str, float] = {}
    ls = resolve(context.settings, connection, parsed.project)

    if not known:
        mismatch = TaskError(
            "model_version_mismatch",
            f"this worker serves {version} and knows no version {requested}, which the request asked "
            "for; run workers and web with the same CORES_CHECKPOINT / MODEL_VERSION / MODEL_DIR",
        )
        slots = [error_element(mismatch.to_json(t.id), requested) for t in parsed.tasks]
    else:
        _predict_groups(context, parsed, ls, connection, slots, timings)

    results = [slot if slot is not None else {} for slot in slots]
    _remember(connection, context.settings, parsed, results)
    delivered_by, report = _deliver(parsed, results, connection, ls)
    timings["total_ms"] = (time.perf_counter() - started) * 1000
    if connection is not None and job is not None:
        waited = (
            (job.started_at - job.enqueued_at).total_seconds() if job.started_at and job.enqueued_at else None
        )
        _record_metrics(MetricsStore(connection), job.origin, waited, results, report, started)
    logger.info(
        "predicted %d tasks (%d errors) in %.0f ms",
        n,
        sum(1 for r in results if "error" in r),
        timings["total_ms"],
    )
    return {
        "results": results,
        "model_version": version,
        "requested_version": requested,
        "delivered_by": delivered_by,
        "write_back": report.to_json() if report is not None else None,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }


def _predict_groups(
    context: WorkerContext,
    request: PredictRequest,
    ls: LabelStudioConnection | None,
    connection: redis.Redis | None,
    slots: list[dict[str, Any] | None],
    timings: dict[str, float],
) -> None:
    """Fill ``slots`` group by group (``PREDICT_BATCH_SIZE`` tasks): images fetched and prepared on a
    thread pool (``image_prefetch``) while the model works on the group before. Tasks with clicks are
    refined from their query's kept chain (``refinement``); interactive queries keep theirs."""
    fetcher, pipeline = context.fetcher(ls), context.pipeline
    tasks = request.tasks
    prefetch = ImagePrefetch(
        lambda i: fetcher.fetch(tasks[i].image, task_id=tasks[i].id),
        len(tasks),
        prepare=lambda image: pipeline.prepare(image.array, cache_key(image)),
    )
    step = context.settings.predict_batch_size
    timings.update(fetch_ms=0.0, model_ms=0.0, format_ms=0.0)
    try:
        for first in range(0, len(tasks), step):
            tick = time.perf_counter()
            group = range(first, min(len(tasks), first + step))
            images = _fetch_images(prefetch, request, group, slots)
            timings["fetch_ms"] += (time.perf_counter() - tick) * 1000
            tick = time.perf_counter()
            order = [i for i in group if slots[i] is None and not tasks[i].prompts]
            chains = run_chains(
                pipeline,
                [(images[i].array, tasks[i].query) for i in order],
                mode=context.settings.mode,
                batch_size=step,
                keys=[cache_key(images[i]) for i in order],
            )
            ttl = context.settings.prediction_memory_ttl
            if request.kind == "interactive":  # the annotator may click next: keep the chain embeddings
                for i, chain in zip(order, chains, strict=True):
                    if not isinstance(chain, TaskError):
                        keep_chain(connection, request.model_version, cache_key(images[i]), chain, ttl)
            clicked = [i for i in group if slots[i] is None and tasks[i].prompts]
            chains += [
                refine_task(
                    pipeline,
                    connection,
                    request.model_version,
                    images[i].array,
                    cache_key(images[i]),
                    tasks[i],
                    ttl,
                )
                for i in clicked
            ]
            timings["model_ms"] += (time.perf_counter() - tick) * 1000
            tick = time.perf_counter()
            for i, chain in zip(order + clicked, chains, strict=True):
                slots[i] = _format(chain, images[i], request, i)
            timings["format_ms"] += (time.perf_counter() - tick) * 1000
    finally:
        prefetch.close()


def _fetch_images(
    prefetch: ImagePrefetch, request: PredictRequest, group: range, slots: list[dict[str, Any] | None]
) -> dict[int, FetchedImage]:
    """The group's images; a failure fills the task's slot with an ``image_fetch`` error."""
    images: dict[int, FetchedImage] = {}
    for i in group:
        task = request.tasks[i]
        try:
            images[i] = prefetch.result(i)
        except ImageFetchError as exc:
            error = TaskError("image_fetch", exc.detail, reason=exc.reason, url=exc.url)
            slots[i] = error_element(error.to_json(task.id), request.model_version)
            logger.warning("task %s: %s", task.id, exc)
        except Exception as exc:  # a URL no rule foresaw: this task's error, never the job's
            logger.exception("task %s: fetching its image raised", task.id)
            slots[i] = error_element(internal_error(exc).to_json(task.id), request.model_version)
    return images


def _format(
    chain: ChainResult | TaskError, image: FetchedImage, request: PredictRequest, index: int
) -> dict[str, Any]:
    task = request.tasks[index]
    if isinstance(chain, TaskError):
        return error_element(chain.to_json(task.id), request.model_version)
    levels: list[dict[str, Any]] = [
        {
            "index": lv.index,
            "token": lv.token,
            "mask": lv.mask,
            "score": lv.score,
            "text": lv.text,
            "stats": lv.stats,
        }
        for lv in chain.levels
    ]
    try:
        review = review_score(levels)
        for level in levels:
            level["meta"] = {"review": review.level_meta(level["index"])}
        return build_prediction(
            levels,
            request.schema,
            image.width,
            image.height,
            request.model_version,
            dict(request.level_labels),
            id_seed=f"{task.id}:{task.query}" if request.kind == "interactive" else None,
            score=review.score,
        )
    except LabelConfigError as exc:
        return error_element(TaskError("label_config", str(exc)).to_json(task.id), request.model_version)
    except Exception as exc:
        logger.exception("task %s: formatting its prediction raised", task.id)
        return error_element(internal_error(exc).to_json(task.id), request.model_version)


def _remember(
    connection: redis.Redis | None,
    settings: Settings,
    request: PredictRequest,
    results: list[dict[str, Any]],
) -> None:
    """Keep what this job predicted per task in Redis (``backend.corrections.prediction_memory``), before
    anything is delivered, so an annotation submitted right after sees it. Best effort: a failure is
    logged."""
    if connection is None or request.project is None or settings.prediction_memory_ttl <= 0:
        return
    entries = []
    for task, result in zip(request.tasks, results, strict=True):
        if "result" not in result:
            continue
        try:
            review = ReviewScore.from_result(result["result"])
            entry = RememberedPrediction.from_prediction(
                result,
                query=task.query,
                kind=request.kind,
                schema=request.schema,
                review=None if review is None else review.to_json(),
            )
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("task %s: its prediction cannot be remembered: %s", task.id, exc)
            continue
        if entry is not None:
            entries.append((task.id, entry))
    try:
        kept = remember(
            connection,
            request.project,
            entries,
            settings.prediction_memory_ttl,
            max_tasks=settings.prediction_memory_max_tasks,
            max_entry_bytes=settings.prediction_memory_max_entry_bytes,
        )
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning(
            "could not remember the predictions of project %s tasks %s in Redis (corrections of them "
            "will lack the predicted masks unless Label Studio stored the prediction): %s",
            request.project,
            [task_id for task_id, _ in entries],
            exc,
        )
        return
    logger.debug("remembered %d prediction(s) of project %s", kept, request.project)


def _deliver(
    request: PredictRequest,
    results: list[dict[str, Any]],
    connection: redis.Redis | None,
    ls: LabelStudioConnection | None,
) -> tuple[str | None, WriteBackReport | None]:
    """Decide who delivers (``backend.jobs.delivery``) and write back (to ``ls``) when it is this job."""
    if not request.write_back:
        return None, None
    deliverer = Deliverer.JOB
    if request.claim_key and connection is not None:
        deliverer = finish_claim(connection, request.claim_key)
    if deliverer is Deliverer.WEB:
        return deliverer.value, None
    predictions = [(task.id, r) for task, r in zip(request.tasks, results, strict=True) if "result" in r]
    if not predictions:
        return deliverer.value, WriteBackReport()
    if ls is None:
        reason = (
            "no Label Studio to write to: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY on the worker, "
            "or connect the backend in Label Studio so that /setup provides them"
        )
        logger.error("cannot write back %d predictions: %s", len(predictions), reason)
        return deliverer.value, WriteBackReport(failed={str(task_id): reason for task_id, _ in predictions})
    return deliverer.value, write_predictions(
        ls.client(), predictions, request.model_version, project=request.project
    )


def _record_metrics(
    store: MetricsStore,
    queue: str,
    waited_s: float | None,
    results: list[dict[str, Any]],
    report: WriteBackReport | None,
    started: float,
) -> None:
    store.observe("job_duration_seconds", time.perf_counter() - started, {"queue": queue})
    if waited_s is not None:
        store.observe("job_wait_seconds", max(0.0, waited_s), {"queue": queue})
    codes = Counter(str(result["error"].get("code")) for result in results if "error" in result)
    for code, count in codes.items():
        store.incr("task_errors_total", {"code": code}, count)
    if report is not None:
        for outcome, tasks in (
            ("created", report.created),
            ("skipped", report.skipped),
            ("failed", report.failed),
        ):
            if tasks:
                store.incr("writebacks_total", {"outcome": outcome}, len(tasks))
