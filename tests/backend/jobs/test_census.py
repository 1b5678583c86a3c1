"""Live workers only: a worker killed outright stops being counted, and the abandoned-job check is prompt."""

from __future__ import annotations

import redis
from rq import worker_registration

from backend.jobs.census import WorkerCensus, live_workers
from backend.jobs.redis_outages import MAINTENANCE_INTERVAL_S
from backend.jobs.worker import build_worker
from backend.operations.settings import Settings
from backend.web.metrics import render
from tests.backend.conftest import quiet


def test_dead_workers_are_not_counted(settings: Settings, redis_conn: redis.Redis) -> None:
    alive = quiet(build_worker(redis_conn, settings, name="alive"))
    alive.register_birth()
    dead = quiet(build_worker(redis_conn, settings, name="killed"))
    dead.register_birth()
    redis_conn.delete(dead.key)  # killed with SIGKILL: its heartbeat expired, the set still lists it
    gone = quiet(build_worker(redis_conn, settings, name="gone"))
    gone.register_birth()
    gone.register_death()
    redis_conn.sadd(worker_registration.REDIS_WORKER_KEYS, gone.key)  # a registry nobody cleaned yet

    assert len(worker_registration.get_keys(connection=redis_conn)) == 3  # what rq's Worker.count sees
    assert live_workers(redis_conn) == 1
    assert WorkerCensus(redis_conn).count_now().to_json()["workers"] == 1
    text = render(redis_conn, model_version="v", max_queued=1, redis_error_count=0)
    assert "cores_workers 1" in text.splitlines()
    alive.register_death()
    census = WorkerCensus(redis_conn).count_now().to_json()
    assert (census["workers"], census["serving"]) == (0, False)


def test_abandoned_jobs_are_found_within_job_timeout_plus_90_seconds(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    """A job's execution heartbeat expires JOB_TIMEOUT + 60 s after it started; every live worker cleans
    the registries every MAINTENANCE_INTERVAL_S (rq's default: 600 s), so the README's bound holds."""
    worker = build_worker(redis_conn, settings)
    assert worker.maintenance_interval == MAINTENANCE_INTERVAL_S <= 30
    assert worker.worker_ttl <= 30  # a killed idle worker leaves the count within worker_ttl + 60 s
