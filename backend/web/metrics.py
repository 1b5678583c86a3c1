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
import math
from collections.abc import Iterable, Mapping
from typing import Any

import redis

logger = logging.getLogger(__name__)

PREFIX = "cores_"
COUNTER_KEY = "cores:metrics:counter:"
HISTOGRAM_KEY = "cores:metrics:histogram:"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Histogram bucket upper bounds in seconds (plus +Inf)."""

COUNTERS = {
    "predict_requests_total": "/predict calls by kind (interactive|batch) and outcome.",
    "tasks_total": "Tasks answered by /predict, by outcome (predicted|error|deferred).",
    "task_errors_total": "Per-task errors by code.",
    "writebacks_total": "Predictions written to Label Studio by jobs, by outcome (created|skipped|failed).",
}
HISTOGRAMS = {
    "job_duration_seconds": "Seconds a job ran on a worker, by queue.",
    "job_wait_seconds": "Seconds a job waited in its queue before a worker took it, by queue.",
}


def _labels(labels: Mapping[str, str]) -> str:
    """``{a="x",b="y"}`` with Prometheus escaping, sorted by name; empty string for no labels."""
    if not labels:
        return ""
    parts = []
    for name in sorted(labels):
        value = str(labels[name]).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{name}="{value}"')
    return "{" + ",".join(parts) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class MetricsStore:
    """Counters and histograms in Redis. Recording never raises: a metric is not worth a failed request."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def incr(self, name: str, labels: Mapping[str, str] | None = None, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` (one of ``COUNTERS``) with ``labels``."""
        try:
            self.connection.hincrby(COUNTER_KEY + name, _labels(labels or {}), amount)
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("could not record metric %s: %s", name, exc)

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Record ``value`` (seconds) in histogram ``name`` (one of ``HISTOGRAMS``) with ``labels``."""
        bucket = next((b for b in BUCKETS if value <= b), math.inf)
        field = _labels(labels or {})
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.hincrby(HISTOGRAM_KEY + name, f"{field}|{_number(bucket)}", 1)
                pipe.hincrby(HISTOGRAM_KEY + name, f"{field}|count", 1)
                pipe.hincrbyfloat(HISTOGRAM_KEY + name, f"{field}|sum", float(value))
                pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("could not record metric %s: %s", name, exc)

    def counters(self, name: str) -> dict[str, float]:
        """``{label string: value}`` of counter ``name``."""
        return {k: float(v) for k, v in _read_hash(self.connection, COUNTER_KEY + name).items()}

    def render_counters(self) -> list[str]:
        """Exposition lines for every counter."""
        lines: list[str] = []
        for name, help_text in COUNTERS.items():
            lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} counter"]
            for labels, value in sorted(self.counters(name).items()):
                lines.append(f"{PREFIX}{name}{labels} {_number(value)}")
        return lines

    def render_histograms(self) -> list[str]:
        """Exposition lines for every histogram (cumulative buckets, ``_sum``, ``_count``)."""
        lines: list[str] = []
        for name, help_text in HISTOGRAMS.items():
            lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} histogram"]
            series: dict[str, dict[str, float]] = {}
            for key, value in _read_hash(self.connection, HISTOGRAM_KEY + name).items():
                labels, _, part = key.rpartition("|")
                series.setdefault(labels, {})[part] = float(value)
            for labels, parts in sorted(series.items()):
                inner = labels[1:-1] if labels else ""
                cumulative = 0.0
                for bound in (*BUCKETS, math.inf):
                    cumulative += parts.get(_number(bound), 0.0)
                    le = f'le="{_number(bound)}"'
                    lines.append(
                        f"{PREFIX}{name}_bucket{{{inner + ',' if inner else ''}{le}}} {_number(cumulative)}"
                    )
                lines.append(f"{PREFIX}{name}_sum{labels} {_number(parts.get('sum', 0.0))}")
                lines.append(f"{PREFIX}{name}_count{labels} {_number(parts.get('count', 0.0))}")
        return lines


def _read_hash(connection: redis.Redis, key: str) -> dict[str, str]:
    """A Redis hash with fields and values decoded as UTF-8."""
    raw: Any = connection.hgetall(key)
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gauge(name: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> list[str]:
    """Exposition lines for one gauge with its samples."""
    lines = [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge"]
    lines += [f"{PREFIX}{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return lines


def counter(name: str, help_text: str, value: float) -> list[str]:
    """Exposition lines for one unlabelled counter kept outside Redis."""
    return [
        f"# HELP {PREFIX}{name} {help_text}",
        f"# TYPE {PREFIX}{name} counter",
        f"{PREFIX}{name} {_number(value)}",
    ]


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
