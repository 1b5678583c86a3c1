"""Riding out Redis outages in a worker: reconnect with backoff, keep the model, register again.

rq's work loop already retries, with backoff, a Redis that fails while it waits for a job; anything else
that fails on Redis (the heartbeat after a job, the registry maintenance, the suspension check, saving a
job's result) ends ``work()`` with "found an unhandled exception, quitting", and a worker process that
exits loses its loaded model. ``OutageTolerantWorker`` (a mixin for rq workers) catches Redis connection
errors in those steps instead: it logs them, waits (``RECONNECT_DELAYS_S``, capped), and carries on, so the
process, its loaded model and its place in the work loop survive an outage of any length.

When Redis comes back without its data (restarted empty, failed over to a replica that had not synced),
the worker's registration (``rq:workers`` and its worker hash) is gone and rq's heartbeat alone would not
restore it: ``heartbeat`` checks the registration and registers the worker again, so ``cores_workers``
counts it. rq sends several heartbeats per job; the check (one Redis round trip) runs at most every
``REGISTRATION_CHECK_S`` seconds, so a busy worker does not pay it per job. ``WORKER_TTL_S`` keeps idle
heartbeats (and so this check) at most ``WORKER_TTL_S - 15`` seconds apart, and lets a worker killed
outright drop out of the count within ``WORKER_TTL_S + 60`` seconds (a busy one within ``JOB_TIMEOUT + 60``).

A job whose result could not be saved because Redis went away is logged; if Redis kept its data, rq's
maintenance (every ``MAINTENANCE_INTERVAL_S``) moves it to the failed registry once its heartbeat expires.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rq import worker_registration
from rq.job import Job
from rq.queue import Queue

logger = logging.getLogger(__name__)

WORKER_TTL_S = 30
"""rq's ``worker_ttl`` for our workers: idle heartbeats every 15 s, dead idle workers gone after 90 s."""
MAINTENANCE_INTERVAL_S = 30
"""Seconds between a worker's registry maintenance runs (rq's default is 600): abandoned jobs (a worker
killed mid-job) reach the failed registry at most ``JOB_TIMEOUT`` + 60 + this many seconds after they
started."""
REGISTRATION_CHECK_S = 5.0
"""Least seconds between two registration checks of one worker (see the module docstring)."""
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Waits after consecutive Redis failures outside the dequeue (the last one repeats)."""

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError)


class OutageTolerantWorker:
    """Mixin for an rq ``Worker``: Redis connection errors outside the dequeue wait and retry instead of
    ending the work loop; a lost registration is restored at the next heartbeat (module docstring)."""

    name: str
    key: str
    connection: redis.Redis
    _failures: int = 0
    _checked_at: float = -REGISTRATION_CHECK_S

    def _redis_failed(self, what: str, exc: BaseException) -> None:
        delay = RECONNECT_DELAYS_S[min(self._failures, len(RECONNECT_DELAYS_S) - 1)]
        self._failures += 1
        logger.error(
            "worker %s: Redis unreachable while %s (%s: %s); the model stays loaded, retrying in %.1f s",
            self.name,
            what,
            type(exc).__name__,
            exc,
            delay,
        )
        time.sleep(delay)

    def _redis_ok(self) -> None:
        if self._failures:
            logger.warning("worker %s: Redis answers again", self.name)
        self._failures = 0

    def registered(self) -> bool:
        """Whether Redis still lists this worker (``rq:workers``) with its hash (``rq:worker:<name>``)."""
        with self.connection.pipeline() as pipe:
            pipe.sismember(worker_registration.REDIS_WORKER_KEYS, self.key)
            pipe.hexists(self.key, "birth")
            listed, born = pipe.execute()
        return bool(listed) and bool(born)

    def _still_registered(self, now: float) -> bool:
        registered = self.registered()
        self._checked_at = now if registered else -REGISTRATION_CHECK_S
        return registered

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # part of rq's own transaction: leave it to rq
            super().heartbeat(timeout, pipeline=pipeline)  # type: ignore[misc]
            return
        try:
            now = time.monotonic()
            if now - self._checked_at >= REGISTRATION_CHECK_S and not self._still_registered(now):
                logger.warning(
                    "worker %s: its registration is gone from Redis (restarted without its data?): "
                    "registering again",
                    self.name,
                )
                self.connection.delete(self.key)
                self.register_birth()  # type: ignore[attr-defined]
            super().heartbeat(timeout)  # type: ignore[misc]
        except REDIS_DOWN as exc:
            self._redis_failed("sending its heartbeat", exc)
            return
        self._redis_ok()

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)  # type: ignore[misc]
        except REDIS_DOWN as exc:
            self._redis_failed("checking for suspension", exc)

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()  # type: ignore[misc]
        except REDIS_DOWN as exc:
            self._redis_failed("cleaning registries", exc)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)  # type: ignore[misc]
        except REDIS_DOWN as exc:
            logger.error(
                "worker %s: Redis went away around job %s; its outcome may not be recorded (a job that "
                "stays started is moved to the failed registry by the maintenance once Redis is back)",
                self.name,
                job.id,
            )
            self._redis_failed(f"finishing job {job.id}", exc)
