"""The Redis test fixtures: a dedicated database index, flushed around each test, and the fallback server."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from tests.redis_server import DEFAULT_TEST_DB, RedisServer, is_reachable, with_db


def test_with_db_replaces_the_database_index() -> None:
    assert with_db("redis://127.0.0.1:6379", 13) == "redis://127.0.0.1:6379/13"
    assert with_db("redis://:pw@host:6380/0", 5) == "redis://:pw@host:6380/5"


def test_redis_url_names_the_test_database(redis_url: str) -> None:
    expected = int(os.environ.get("TEST_REDIS_DB", str(DEFAULT_TEST_DB)))
    assert redis_url.endswith(f"/{expected}")
    assert is_reachable(redis_url)


def test_redis_conn_uses_the_test_database(redis_conn: redis.Redis, redis_url: str) -> None:
    assert redis_conn.connection_pool.connection_kwargs["db"] == int(redis_url.rsplit("/", 1)[1])
    redis_conn.set("left-behind", b"1")  # the next test checks that the fixture flushed it


def test_redis_conn_starts_on_an_empty_database(redis_conn: redis.Redis) -> None:
    assert redis_conn.dbsize() == 0


def test_throwaway_server_starts_and_stops(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        assert is_reachable(server.url)
        client = redis.Redis.from_url(server.url)
        client.set("k", b"v")
        assert client.get("k") == b"v"
        client.close()
    assert not is_reachable(server.url, timeout_s=0.2)
    assert not any(tmp_path.glob("*.rdb"))
