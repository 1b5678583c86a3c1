"""Prometheus metrics kept in Redis (shared by every web and worker process) and rendered by hand.

Counters and histograms live in Redis hashes, so ``GET /metrics`` on any web process shows the whole
deployment (all web processes, all GPU workers). Gauges are read from rq's own keys at scrape time.

Metrics (all prefixed ``cores_``; type in brackets):

- ``redis_up`` [gauge]: 1 when Redis answered this scrape, else 0 (then only this, ``model_info`` and
  ``web_redis_errors_total`` are shown).
- ``web_redis_errors_total`` [counter]: requests this web process failed because Redis was unreachable
  (per process: Redis cannot count its own outage).
- ``model_info{model_version}`` [gauge]: always 1; the label is the web's current model version.
- ``queue_depth{queue}`` [gauge]: jobs waiting in each queue; ``queue_limit`` [gauge]: ``MAX_QUEUED``.
- ``jobs_started{queue}`` [gauge]: jobs running now (rq's StartedJobRegistry).
- ``jobs_failed{queue}`` [gauge]: failed jobs kept, with their traceback, in rq's FailedJobRegistry.
- ``jobs_finished{queue}`` [gauge]: finished jobs whose results are still kept.
- ``workers`` [gauge]: rq workers alive (registered, heartbeat not expired, no death recorded), on all
  machines (``backend.jobs.census``); 0 means no worker is serving.
- ``predict_requests_total{kind,outcome}`` [counter]: /predict calls; kind ``interactive``|``batch``;
  outcome ``ok``, ``bad_request``, ``queue_full``, ``timeout``, ``job_failed``.
- ``tasks_total{outcome}`` [counter]: tasks answered by /predict: ``predicted``, ``error``, ``deferred``
  (left to the job's write-back).
- ``task_errors_total{code}`` [counter]: per-task errors by code (``backend.label_studio.task_errors``), web
  and worker.
- ``writebacks_total{outcome}`` [counter]: predictions jobs wrote to Label Studio: ``created``,
  ``skipped`` (this version already there), ``failed``.
- ``job_duration_seconds{queue}`` [histogram]: time a job ran on a worker.
- ``job_wait_seconds{queue}`` [histogram]: time a job waited in its queue before a worker took it.
"""

from __future__ import annotations

import logging

import redis

from backend.operations.metrics import MetricsStore, counter, gauge

logger = logging.getLogger(__name__)


def render(connection: redis.Redis, *, model_version: str, max_queued: int, redis_error_count: int) -> str:
    """The whole ``GET /metrics`` page (Prometheus text exposition format 0.0.4).

    When Redis does not answer, the page still renders ``redis_up 0``, the model info and this process's
    Redis error counter.
    """
    from backend.jobs.census import live_workers
    from backend.jobs.queues import QUEUE_NAMES, QueueUnavailableError, redis_errors, registry_counts

    lines = gauge(
        "model_info",
        "Model version served by this backend (value always 1).",
        [({"model_version": model_version}, 1)],
    )
    lines += counter(
        "web_redis_errors_total",
        "Requests this web process failed because Redis was unreachable.",
        redis_error_count,
    )
    try:
        with redis_errors(connection):
            counts = registry_counts(connection)
            workers = live_workers(connection)
            store = MetricsStore(connection)
            stored = store.render_counters() + store.render_histograms()
    except (QueueUnavailableError, redis.exceptions.RedisError) as exc:
        logger.warning("metrics: Redis unavailable: %s", exc)
        lines += gauge("redis_up", "1 when Redis answered this scrape.", [({}, 0)])
        return "\n".join(lines) + "\n"
    lines += gauge("redis_up", "1 when Redis answered this scrape.", [({}, 1)])
    lines += gauge("queue_limit", "MAX_QUEUED: waiting jobs a queue accepts.", [({}, max_queued)])
    for key, name, help_text in (
        ("queued", "queue_depth", "Jobs waiting in the queue."),
        ("started", "jobs_started", "Jobs running now."),
        ("failed", "jobs_failed", "Failed jobs kept in the failed job registry."),
        ("finished", "jobs_finished", "Finished jobs whose results are still kept."),
    ):
        lines += gauge(name, help_text, [({"queue": q}, counts[q][key]) for q in QUEUE_NAMES])
    lines += gauge("workers", "rq workers alive.", [({}, workers)])
    lines += stored
    return "\n".join(lines) + "\n"
