"""How many rq workers are alive, counted off the request path so ``/health`` never waits on Redis.

rq lists workers in the Redis set ``rq:workers`` and keeps each one's hash ``rq:worker:<name>`` alive by
heartbeats (``backend.jobs.redis_outages.WORKER_TTL_S``). A worker killed outright stays in the set until some
worker's maintenance cleans it, so the set alone over-counts: ``live_workers`` counts only members whose
hash still exists and records no death. ``WorkerCensus`` runs that count in a daemon thread of the web
every ``REFRESH_S`` seconds; ``/health`` and ``/metrics`` read the last count (``snapshot``), so Label
Studio's 1 s health check is answered from memory even while Redis hangs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from rq import worker_registration

logger = logging.getLogger(__name__)

REFRESH_S = 5.0
"""Seconds between two counts."""


def live_workers(connection: redis.Redis) -> int:
    """Workers registered in Redis whose heartbeat has not expired and that did not register their death.

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    members: Any = connection.smembers(worker_registration.REDIS_WORKER_KEYS)
    keys = sorted(member.decode() if isinstance(member, bytes) else str(member) for member in members)
    if not keys:
        return 0
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "birth", "death")
        answers = pipe.execute()
    return sum(1 for birth, death in answers if birth is not None and death is None)


@dataclass(frozen=True)
class Census:
    """The last count: ``workers`` (None before the first count or while Redis is down), ``redis_up``,
    ``checked_at`` (epoch seconds of the last attempt, None before it)."""

    workers: int | None
    redis_up: bool | None
    checked_at: float | None

    def to_json(self) -> dict[str, Any]:
        """``{"workers", "serving", "redis_up", "checked_at"}`` (``serving``: a live worker takes jobs)."""
        return {
            "workers": self.workers,
            "serving": None if self.workers is None else self.workers > 0,
            "redis_up": self.redis_up,
            "checked_at": None if self.checked_at is None else round(self.checked_at, 3),
        }


class WorkerCensus:
    """Counts live workers in a background thread (started by the first ``snapshot``). Thread-safe."""

    def __init__(self, connection: redis.Redis, refresh_s: float = REFRESH_S) -> None:
        self.connection = connection
        self.refresh_s = refresh_s
        self._census = Census(None, None, None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> Census:
        """The last count (never blocks on Redis); starts the counting thread on first use."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cores-worker-census", daemon=True)
                self._thread.start()
            return self._census

    def count_now(self) -> Census:
        """Count once, in the caller's thread (the thread's step; tests)."""
        try:
            census = Census(live_workers(self.connection), True, time.time())
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.debug("worker census: Redis unreachable: %s", exc)
            census = Census(None, False, time.time())
        with self._lock:
            if census.workers == 0 and self._census.workers:
                logger.warning("no worker is serving: every prediction will time out until one registers")
            self._census = census
        return census

    def close(self) -> None:
        """Stop the counting thread (after its current count)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.count_now()
            self._stop.wait(self.refresh_s)
