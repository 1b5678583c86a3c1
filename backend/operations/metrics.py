"""Prometheus counters and histograms kept in Redis, shared by every web and worker process.

``MetricsStore`` records (``incr``, ``observe``) from any process: counters and histograms live in Redis
hashes, so every web process shows the whole deployment. It also writes their Prometheus text exposition
lines; ``gauge`` and ``counter`` write lines for values read elsewhere. Which metrics exist and what they
mean: ``backend.web.metrics``, which renders the ``GET /metrics`` page.
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
