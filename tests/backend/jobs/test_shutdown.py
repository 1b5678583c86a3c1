"""Graceful worker shutdown (``backend.jobs.shutdown``): SIGTERM lets the running job finish; past
``WORKER_SHUTDOWN_GRACE``, or at a second signal, the job is requeued at the front of its queue, never lost.
The worker exits 0 either way. Real worker processes on the tests' Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import redis
from rq.job import JobStatus
from rq.results import Result

from backend.jobs import queues
from backend.jobs.embedded import REPO_ROOT
from backend.jobs.shutdown import REQUEUE_COUNT_META
from backend.jobs.worker import build_worker
from backend.operations.settings import Settings
from tests.backend.conftest import quiet, work
from tests.backend.worker_subprocess import job_status, wait_for, worker_env

WAIT_FOR_KEY = "tests.backend.sample_jobs.wait_for_key"
LOG_AND_SLEEP = "tests.backend.sample_jobs.log_and_sleep"


@contextmanager
def _child(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _worker_without_model(
    settings: Settings, tmp_path: Path, **env: str
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """Our worker class (``build_worker``: ``CoresWorker``, a ``GracefulWorker``) in a child process, without
    a model: the jobs here need none. ``python -m backend worker`` itself runs in the last test."""
    code = textwrap.dedent(
        """
        from backend.operations.redis_client import connect
        from backend.operations.settings import Settings
        from backend.jobs.worker import build_worker
        settings = Settings.from_env()
        build_worker(connect(settings), settings, queues=["bulk"]).work(logging_level="INFO")
        """
    )
    return _child([sys.executable, "-c", code], worker_env(settings, **env), tmp_path / "worker.log")


def test_grace_expiry_requeues_the_running_job_and_the_next_worker_finishes_it(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    key = "test:shutdown:go"
    job = queues.enqueue(redis_conn, settings, queues.BULK, WAIT_FOR_KEY, key, 120)
    later = queues.enqueue(redis_conn, settings, queues.BULK, "time.sleep", 0)
    with _worker_without_model(settings, tmp_path, WORKER_SHUTDOWN_GRACE="1") as worker:
        wait_for(lambda: job_status(redis_conn, job.id) == JobStatus.STARTED, 30, "the job to start")
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    assert time.monotonic() - stopped_at < 15, "the worker waited for the job instead of requeueing it"

    bulk = queues.get_queue(redis_conn, queues.BULK)
    assert job_status(redis_conn, job.id) == JobStatus.QUEUED
    assert bulk.get_job_ids() == [job.id, later.id]  # back at the front, the waiting job behind it
    assert job.id not in bulk.started_job_registry.get_job_ids()
    assert job.id not in bulk.failed_job_registry.get_job_ids()
    requeued = queues.fetch_job(redis_conn, job.id)
    assert requeued is not None
    assert requeued.meta[REQUEUE_COUNT_META] == 1
    log = (tmp_path / "worker.log").read_text()
    assert "shutdown grace period ended" in log
    assert "Traceback" not in log  # an interruption is not reported as a job error

    redis_conn.set(key, "go")
    next_worker = quiet(build_worker(redis_conn, settings, queues=[queues.BULK]))
    assert work(next_worker)
    assert job_status(redis_conn, job.id) == JobStatus.FINISHED
    assert queues.job_outcome(redis_conn, job.id) == ("go", None)


def test_a_second_signal_requeues_the_running_job_at_once(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    job = queues.enqueue(redis_conn, settings, queues.BULK, WAIT_FOR_KEY, "test:shutdown:never", 120)
    with _worker_without_model(settings, tmp_path, WORKER_SHUTDOWN_GRACE="600") as worker:
        wait_for(lambda: job_status(redis_conn, job.id) == JobStatus.STARTED, 30, "the job to start")
        worker.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # a repeat within 1 s counts as the same signal
        assert job_status(redis_conn, job.id) == JobStatus.STARTED  # still finishing: the grace is long
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    assert job_status(redis_conn, job.id) == JobStatus.QUEUED
    assert queues.get_queue(redis_conn, queues.BULK).get_job_ids() == [job.id]
    assert "a second stop signal arrived" in (tmp_path / "worker.log").read_text()


@pytest.mark.slow
def test_backend_worker_finishes_its_job_on_sigterm_and_logs_json_with_the_job_id(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    env = worker_env(settings, LOG_FORMAT="json", WORKER_SHUTDOWN_GRACE="60")
    cmd = [sys.executable, "-m", "backend", "worker", "--queues", "bulk", "--name", "shutdown-test"]
    with _child(cmd, env, tmp_path / "worker.log") as worker:
        # it registers once the model is loaded; a job enqueued earlier would also wait for that
        wait_for(lambda: redis_conn.exists("rq:worker:shutdown-test") == 1, 120, "the worker to register")
        job = queues.enqueue(redis_conn, settings, queues.BULK, LOG_AND_SLEEP, "hello from the job", 2.0)
        wait_for(lambda: job_status(redis_conn, job.id) == JobStatus.STARTED, 30, "the job to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0

    assert job_status(redis_conn, job.id) == JobStatus.FINISHED
    result = queues.fetch_job(redis_conn, job.id)
    assert result is not None
    latest = result.latest_result()
    assert latest is not None
    assert latest.type == Result.Type.SUCCESSFUL
    assert latest.return_value == {"message": "hello from the job", "slept": 2.0}

    lines = [
        json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines() if line[:1] == "{"
    ]
    ours = [line for line in lines if line["message"] == "hello from the job"]
    assert len(ours) == 1, lines
    assert ours[0]["job_id"] == job.id
    assert ours[0]["queue"] == "bulk"
    assert ours[0]["logger"] == "tests.backend.sample_jobs"
    assert ours[0]["level"] == "INFO"
    # rq's own line about the job, written outside the job function, carries the id too
    assert any(line.get("job_id") == job.id and line["logger"] == "rq.worker" for line in lines)
    assert not any(line.get("job_id") for line in lines if "loaded" in line["message"])
