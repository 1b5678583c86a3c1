"""Shared pytest fixtures: tiny random CoReS checkpoints (built once per session), a real Redis, and the
reference environment of the trained stack (``.venv-ref``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import DEFAULT_TEST_DB, DEFAULT_URL, RedisServer, is_reachable, with_db
from tests.reference_env import missing_reason, reference_venv


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random checkpoint per released layout: ``lisa``, ``cores``, ``cores-refiner``."""
    from cores.checkpoints.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {
        layout: make_tiny_checkpoint(root / layout, layout=layout, seed=0)
        for layout in ("lisa", "cores", "cores-refiner")
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoints: dict[str, Path]) -> Path:
    """The default tiny checkpoint (CoReS layout, two chain levels)."""
    return tiny_checkpoints["cores"]


@pytest.fixture(scope="session")
def reference_python() -> Path:
    """The interpreter of ``.venv-ref`` (transformers 4.31 and LISA's other pins). A missing venv FAILS the
    test (it is part of ``make setup``), saying how to create it."""
    reason = missing_reason()
    if reason is not None:
        pytest.fail(reason, pytrace=False)
    return reference_venv() / "bin" / "python"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis, with the tests' own database index: ``redis://host:port/13``.

    ``REDIS_URL`` if set (its database index is replaced), else the Redis on 127.0.0.1:6379 if it
    answers PING, else a throwaway ``redis-server`` on a free port, stopped at the end of the session.
    The index is 13 unless ``TEST_REDIS_DB`` says otherwise.
    """
    db = int(os.environ.get("TEST_REDIS_DB", str(DEFAULT_TEST_DB)))
    configured = os.environ.get("REDIS_URL")
    if configured:
        if not is_reachable(configured):
            pytest.fail(f"REDIS_URL={configured} does not answer PING", pytrace=False)
        yield with_db(configured, db)
    elif is_reachable(DEFAULT_URL):
        yield with_db(DEFAULT_URL, db)
    else:
        with RedisServer(tmp_path_factory.mktemp("redis")) as server:
            yield with_db(server.url, db)


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """A connection to the tests' Redis database, flushed before and after the test."""
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    try:
        yield conn
    finally:
        conn.flushdb()
        conn.close()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Each test leaves the root logger as it found it: a command run in-process (``report``, ``review``,
    ``versions``) installs a stderr handler bound to that test's captured stream, which pytest closes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
