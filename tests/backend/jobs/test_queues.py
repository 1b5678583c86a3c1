"""Waiting for job results: each result is read once, from its stream entry, with a real Redis and a real
rq worker."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import redis
from rq import SimpleWorker
from rq.results import Result

from backend.jobs import queues
from backend.operations.settings import Settings


def _settings(tmp_path) -> Settings:
    return Settings(model_dir=tmp_path, max_queued=10)


def _run_burst(connection: redis.Redis) -> None:
    worker = SimpleWorker(
        [queues.get_queue(connection, queues.BULK)], connection=connection, serializer=queues.SERIALIZER
    )
    worker.work(burst=True)


def test_outcomes_are_read_from_the_result_stream_alone(redis_conn: redis.Redis, tmp_path) -> None:
    """The job hash is gone (expired) when the web reads the result: the stream entry still answers, so
    nothing but the stream was read."""
    settings = _settings(tmp_path)
    ok = queues.enqueue(redis_conn, settings, queues.BULK, "tests.backend.sample_jobs.log_and_sleep", "hi", 0)
    bad = queues.enqueue(
        redis_conn, settings, queues.BULK, "tests.backend.sample_jobs.wait_for_key", "k", 0.01
    )
    _run_burst(redis_conn)
    redis_conn.delete(ok.key, bad.key)
    outcomes = queues.wait_for_outcomes(redis_conn, [ok.id, bad.id], time.monotonic() + 5)
    assert outcomes[ok.id] == ({"message": "hi", "slept": 0}, None)
    value, error = outcomes[bad.id]
    assert value is None
    assert error is not None
    assert "TimeoutError" in error
    # the old way (fetch the job, then its latest result) cannot answer any more
    assert queues.job_outcome(redis_conn, ok.id) == (
        None,
        f"job {ok.id} no longer exists (expired or deleted)",
    )


def test_a_retried_result_is_skipped_until_the_final_one(redis_conn: redis.Redis, tmp_path) -> None:
    settings = _settings(tmp_path)
    job = queues.enqueue(redis_conn, settings, queues.BULK, "tests.backend.sample_jobs.log_and_sleep", "x", 0)
    now = datetime.now(UTC)
    Result.create_retried(job, 60, None, "w", "e1", now, now)
    assert queues.wait_for_outcomes(redis_conn, [job.id], time.monotonic() + 0.3) == {}

    def finish() -> None:
        time.sleep(0.2)
        Result.create(job, Result.Type.SUCCESSFUL, 60, return_value={"done": True})

    thread = threading.Thread(target=finish)
    thread.start()
    outcomes = queues.wait_for_outcomes(redis_conn, [job.id], time.monotonic() + 5)
    thread.join()
    assert outcomes == {job.id: ({"done": True}, None)}


def test_the_wait_ends_at_the_deadline_without_a_result(redis_conn: redis.Redis, tmp_path) -> None:
    settings = _settings(tmp_path)
    job = queues.enqueue(redis_conn, settings, queues.BULK, "tests.backend.sample_jobs.log_and_sleep", "x", 0)
    started = time.monotonic()
    assert queues.wait_for_outcomes(redis_conn, [job.id], started + 0.5, block_s=0.1) == {}
    assert 0.45 <= time.monotonic() - started < 5.0  # waited until the deadline, then returned
