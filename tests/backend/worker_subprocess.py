"""Helpers for the tests that run worker processes: their environment, waiting, and a job's status."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import redis
from rq.job import JobStatus

from backend.jobs import queues
from backend.jobs.embedded import REPO_ROOT
from backend.operations.settings import Settings


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment without its CoReS, Redis, model and log settings, then ``settings``'s,
    then ``extra``; ``PYTHONPATH`` is the repository root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORES_", "REDIS_URL", "MODEL_", "LOG_"))}
    env.update(settings.to_env())
    env.update(extra)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` every 50 ms until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def job_status(conn: redis.Redis, job_id: str) -> JobStatus | None:
    """The job's status, or None when Redis no longer has it."""
    job = queues.fetch_job(conn, job_id)
    return job.get_status() if job is not None else None
