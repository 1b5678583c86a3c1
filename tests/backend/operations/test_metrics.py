"""Redis-backed Prometheus counters and histograms."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from backend.operations.metrics import BUCKETS, MetricsStore


def test_histogram_renders_cumulative_buckets_sum_and_count(redis_conn: redis.Redis) -> None:
    store = MetricsStore(redis_conn)
    for value in (0.01, 0.3, 0.3, 7.0, 5000.0):
        store.observe("job_duration_seconds", value, {"queue": "bulk"})

    lines = store.render_histograms()

    def sample(le: str) -> float:
        prefix = f'cores_job_duration_seconds_bucket{{queue="bulk",le="{le}"}} '
        [line] = [line for line in lines if line.startswith(prefix)]
        return float(line[len(prefix) :])

    assert sample("0.05") == 1
    assert sample("0.5") == 3
    assert sample("10") == 4
    assert sample(str(int(BUCKETS[-1]))) == 4
    assert sample("+Inf") == 5
    assert 'cores_job_duration_seconds_count{queue="bulk"} 5' in lines
    [total] = [line for line in lines if line.startswith('cores_job_duration_seconds_sum{queue="bulk"}')]
    assert float(total.split()[-1]) == 5007.61


def test_counters_escape_label_values(redis_conn: redis.Redis) -> None:
    store = MetricsStore(redis_conn)
    store.incr("task_errors_total", {"code": 'we"ird\\'})
    store.incr("task_errors_total", {"code": 'we"ird\\'}, 2)
    assert 'cores_task_errors_total{code="we\\"ird\\\\"} 3' in store.render_counters()


def test_recording_never_raises_when_redis_is_down() -> None:
    store = MetricsStore(redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0)))
    store.incr("tasks_total", {"outcome": "predicted"})
    store.observe("job_wait_seconds", 1.0, {"queue": "bulk"})
