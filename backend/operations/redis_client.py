"""The Redis client every process uses (web, workers, command lines): short timeouts, few retries.

Redis holds the job queues (``backend.jobs.queues``), the prediction memory, metrics counters and the
Label Studio credentials ``/setup`` stored; this module only makes the client and names it in messages.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from backend.operations.settings import Settings, SettingsError

_CONNECT_TIMEOUT_S = 2.0
_SOCKET_TIMEOUT_S = 10.0
_RETRIES = 2  # brief retries ride out a blip; a Redis that is down fails a request in well under a second


def connect(settings: Settings | str) -> redis.Redis:
    """A Redis client for ``settings.redis_url`` (or a URL), with short timeouts and few retries.

    Nothing is contacted until the first command.

    Raises:
        SettingsError: no URL is configured (``serve`` starts an embedded Redis in that case).
    """
    url = settings if isinstance(settings, str) else settings.redis_url
    if not url:
        raise SettingsError(
            "REDIS_URL is not set: set it to a shared Redis, or run `python -m backend serve`, which "
            "starts an embedded Redis and a worker"
        )
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        socket_timeout=_SOCKET_TIMEOUT_S,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), _RETRIES),
    )


def describe_connection(connection: redis.Redis) -> str:
    """``host:port/db`` or ``unix:path/db`` of a client, for messages (never the password)."""
    kwargs = connection.connection_pool.connection_kwargs
    where = (kwargs.get("path") and f"unix:{kwargs['path']}") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return f"{where}/{kwargs.get('db', 0)}"
