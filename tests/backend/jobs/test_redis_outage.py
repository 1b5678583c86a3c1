"""A Redis outage under traffic: two real worker processes survive it, keep their model, register again
with a Redis that came back empty, and serve; the web's census says when no worker is serving.

The Redis is a throwaway ``redis-server`` of this test's own (``tests.redis_server.RedisServer``), killed
with SIGKILL and restarted on the same port with no data, as after a crash without persistence.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import worker_registration

from backend.jobs import queues, redis_outages
from backend.jobs.census import live_workers
from backend.jobs.embedded import REPO_ROOT
from backend.jobs.payloads import PredictRequest, TaskInput
from backend.jobs.worker import build_worker
from backend.label_studio.label_config import parse_label_config
from backend.operations import redis_client
from backend.operations.settings import Settings
from backend.web.app import create_app
from tests.backend.conftest import PROMPT_CONFIG
from tests.backend.fake_label_studio import data_uri, png_bytes
from tests.backend.worker_subprocess import wait_for, worker_env
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


def predict_job(conn: redis.Redis, settings: Settings, task: int) -> str:
    request = PredictRequest(
        tasks=(TaskInput(task, data_uri(png_bytes(32, 24, seed=task)), "the dog"),),
        schema=parse_label_config(PROMPT_CONFIG),
        model_version="cores-cores",
    ).to_json()
    return queues.enqueue(conn, settings, queues.BULK, queues.PREDICT_JOB, request).id


def finished(conn: redis.Redis, job_id: str) -> bool:
    try:
        outcome = queues.job_outcome(conn, job_id)
    except queues.QueueUnavailableError:
        return False
    return outcome is not None and outcome[1] is None


def test_workers_ride_out_a_redis_crash_and_serve_again(tmp_path: Path, tiny_checkpoint: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = Settings(
        checkpoint=str(tiny_checkpoint),
        redis_url=f"{server.url}/0",
        model_dir=tmp_path / "models",
        job_timeout=60,
        webhook_secret="outage-test-secret-0123456789",
    )
    conn = redis_client.connect(settings)
    workers = []
    logs = []
    try:
        for index in range(2):
            log = (tmp_path / f"worker{index}.log").open("wb")
            logs.append(log)
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "backend", "worker", "--name", f"outage-{index}"],
                    cwd=REPO_ROOT,
                    env=worker_env(settings, LOG_LEVEL="INFO"),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_for(lambda: live_workers(conn) == 2, 120, "two workers to register")
        census = create_app(settings, connection=conn).extensions["cores"].census
        assert census.count_now().to_json()["workers"] == 2

        before = [predict_job(conn, settings, task) for task in range(1, 7)]  # traffic
        wait_for(lambda: finished(conn, before[0]), 60, "the first job")
        server.stop(kill=True)  # Redis crashes while the workers are busy or polling
        time.sleep(4)
        down = census.count_now()
        assert (down.redis_up, down.workers) == (False, None)
        assert all(worker.poll() is None for worker in workers), "a worker exited when Redis went away"

        server.start()  # the same port, no data: every registration and queue is gone
        assert conn.dbsize() == 0
        wait_for(lambda: live_workers(conn) == 2, 60, "both workers to register again")
        assert all(worker.poll() is None for worker in workers)
        after = [predict_job(conn, settings, task) for task in range(10, 14)]
        wait_for(lambda: all(finished(conn, job) for job in after), 60, "the workers to serve again")
        served_by = {queues.fetch_job(conn, job).worker_name for job in after}  # type: ignore[union-attr]
        assert served_by <= {"outage-0", "outage-1"}

        for worker in workers:
            worker.terminate()
            assert worker.wait(timeout=60) == 0
        gone = census.count_now()
        assert (gone.workers, gone.to_json()["serving"]) == (0, False)  # /health says no worker serves
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
        for log in logs:
            log.close()
        server.stop()
    text = "".join((tmp_path / f"worker{i}.log").read_text(errors="replace") for i in range(2))
    assert "registering again" in text
    assert "found an unhandled exception, quitting" not in text


def test_registration_is_checked_at_most_every_few_seconds_and_restored(
    settings: Settings, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = build_worker(redis_conn, settings, name="throttled")
    worker.register_birth()
    checks: list[bool] = []
    registered = worker.registered

    def counting() -> bool:
        checks.append(registered())
        return checks[-1]

    monkeypatch.setattr(worker, "registered", counting)
    for _ in range(5):  # rq heartbeats several times per job: one check among them
        worker.heartbeat()
    assert checks == [True]

    # Redis lost its data: the next check (once REGISTRATION_CHECK_S passed) registers the worker again.
    redis_conn.flushdb()
    monkeypatch.setattr(redis_outages, "REGISTRATION_CHECK_S", 0.0)
    worker.heartbeat()
    assert checks == [True, False]
    assert worker.registered()
    assert worker.key.encode() in redis_conn.smembers(worker_registration.REDIS_WORKER_KEYS)
