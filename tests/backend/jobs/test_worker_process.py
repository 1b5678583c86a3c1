"""Worker processes: warm shutdown on SIGTERM; what rq 3 does with a worker killed mid-job; failing fast on a
bad checkpoint or an unreachable Redis; the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from rq.job import JobStatus

from backend.jobs import queues
from backend.jobs.embedded import REPO_ROOT
from backend.jobs.worker import EXIT_BAD_MODEL, EXIT_NO_REDIS, run_worker
from backend.operations.settings import Settings
from tests.backend.worker_subprocess import job_status, wait_for, worker_env


def _rq_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """Our worker class (``build_worker``) in a child process, without loading a model: these tests
    run plain ``time.sleep`` jobs. ``python -m backend worker`` itself runs in ``test_serve``."""
    code = textwrap.dedent(
        """
        from backend.operations.redis_client import connect
        from backend.operations.settings import Settings
        from backend.jobs.worker import build_worker
        settings = Settings.from_env()
        build_worker(connect(settings), settings).work(logging_level="WARNING")
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], env=worker_env(settings), cwd=REPO_ROOT)


def test_sigterm_lets_the_running_job_finish_then_stops_the_worker(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    worker = _rq_worker(settings)
    try:
        running = queues.enqueue(redis_conn, settings, queues.BULK, "time.sleep", 1.5)
        wait_for(lambda: job_status(redis_conn, running.id) == JobStatus.STARTED, 20, "the job to start")
        waiting = queues.enqueue(redis_conn, settings, queues.BULK, "time.sleep", 0)
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        assert worker.wait(timeout=20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert job_status(redis_conn, running.id) == JobStatus.FINISHED
    assert job_status(redis_conn, waiting.id) == JobStatus.QUEUED  # left for the next worker


def test_a_worker_killed_mid_job_leaves_an_abandoned_job_that_can_be_requeued(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    worker = _rq_worker(settings)
    try:
        job = queues.enqueue(redis_conn, settings, queues.BULK, "time.sleep", 30)
        wait_for(lambda: job_status(redis_conn, job.id) == JobStatus.STARTED, 20, "the job to start")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    # rq 3 cannot know yet: the job stays STARTED until its execution heartbeat expires
    # (JOB_TIMEOUT + 60 s for a SimpleWorker); any live worker's maintenance then cleans it up.
    bulk = queues.get_queue(redis_conn, queues.BULK)
    assert job_status(redis_conn, job.id) == JobStatus.STARTED
    bulk.started_job_registry.cleanup(timestamp=time.time() + settings.job_timeout + 120)

    assert job_status(redis_conn, job.id) == JobStatus.FAILED
    assert job.id in bulk.failed_job_registry.get_job_ids()
    fetched = queues.fetch_job(redis_conn, job.id)
    assert fetched is not None
    assert "AbandonedJobError" in (queues.job_error(fetched) or "")

    queues.requeue(redis_conn, job.id)
    assert job_status(redis_conn, job.id) == JobStatus.QUEUED
    assert bulk.get_job_ids() == [job.id]
    with pytest.raises(ValueError, match="not failed"):
        queues.requeue(redis_conn, job.id)


def test_worker_with_a_bad_checkpoint_fails_fast_with_a_clear_message(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = settings.with_changes(checkpoint=str(tmp_path / "missing-checkpoint"))
    queues.enqueue(redis_conn, settings, queues.BULK, "time.sleep", 0)
    with caplog.at_level("CRITICAL", logger="backend.jobs.worker"):
        assert run_worker(bad, burst=True) == EXIT_BAD_MODEL
    [record] = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert "cannot load the CoReS checkpoint" in record.getMessage()
    assert "missing-checkpoint" in record.getMessage()
    assert queues.get_queue(redis_conn, queues.BULK).count == 1  # it took no job


def test_worker_without_redis_exits_with_a_clear_message(settings: Settings) -> None:
    from tests.redis_server import free_tcp_port

    done = subprocess.run(
        [sys.executable, "-m", "backend", "worker", "--burst"],
        env=worker_env(settings, REDIS_URL=f"redis://127.0.0.1:{free_tcp_port()}/0"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_NO_REDIS
    assert "cannot reach Redis" in done.stderr


def test_cli_help_for_every_command() -> None:
    for command in ("serve", "worker", "preannotate"):
        done = subprocess.run(
            [sys.executable, "-m", "backend", command, "--help"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"python -m backend {command}" in done.stdout


def test_cli_reports_invalid_settings(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "backend", "worker"],
        env=worker_env(settings, PORT="nine"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "PORT must be an integer" in done.stderr
