"""Fixtures for the backend tests: settings on the tiny checkpoint, the web app, an in-process rq worker.

The worker is a real ``rq.SimpleWorker`` (``backend.jobs.worker.build_worker``) run in burst mode in the
test's main thread (rq installs signal handlers, which only the main thread may do), while the web request
that waits for it runs in a helper thread: ``run_with_worker``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import SimpleWorker

from backend.jobs.worker import build_worker, load_model
from backend.operations.settings import Settings
from backend.web.app import create_app
from tests.backend.fake_label_studio import TOKEN, FakeLabelStudio
from tests.backend.signing import signed_client

T = TypeVar("T")

PROMPT_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="prompt" toName="image" value="$query"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Level 1"/>
    <Label value="Level 2"/>
  </BrushLabels>
</View>"""
"""A config whose TextArea reads each task's query from the data field ``query``."""


@pytest.fixture
def fake_ls() -> Iterator[FakeLabelStudio]:
    """A fake Label Studio API + image host on a free loopback port."""
    with FakeLabelStudio(label_config=PROMPT_CONFIG) as server:
        yield server


@pytest.fixture
def settings(tiny_checkpoint: Path, tmp_path: Path, redis_url: str, fake_ls: FakeLabelStudio) -> Settings:
    """Settings for the tests: tiny checkpoint, test Redis, fake Label Studio, short deadline."""
    return Settings(
        checkpoint=str(tiny_checkpoint),
        redis_url=redis_url,
        model_dir=tmp_path / "models",
        label_studio_url=fake_ls.url,
        label_studio_api_key=TOKEN,
        predict_deadline=20.0,
        allow_private_networks=True,
        job_timeout=120,
        webhook_secret="tests-webhook-secret-0123456789",
    )


@pytest.fixture
def worker(settings: Settings, redis_conn: redis.Redis) -> Iterator[SimpleWorker]:
    """An rq SimpleWorker on the test Redis, with the tiny model loaded in this process."""
    load_model(settings)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield quiet(build_worker(redis_conn, settings))
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.fixture
def app(settings: Settings, redis_conn: redis.Redis) -> Flask:
    """The web app on the test Redis."""
    return create_app(settings, connection=redis_conn)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of ``app`` that signs webhooks as Label Studio would (``LabelStudioClient``)."""
    return signed_client(app)


def quiet(worker: SimpleWorker) -> SimpleWorker:
    """Skip rq's command channel (pubsub) for in-process burst runs: stopping its thread costs up to 1 s
    per ``work()`` call, and these tests send the worker no commands."""
    worker.subscribe = lambda: None  # type: ignore[method-assign]
    return worker


def work(worker: SimpleWorker, **kwargs: Any) -> bool:
    """Run the worker in burst mode (quietly); True if it ran a job."""
    return worker.work(burst=True, logging_level="WARNING", **kwargs)


def run_with_worker(worker: SimpleWorker, call: Callable[[], T], timeout_s: float = 60.0) -> T:
    """Run ``call`` in a thread while the worker serves the queues in this (main) thread."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive():
        work(worker)
        thread.join(0.02)
        assert time.monotonic() < deadline, "the call did not finish in time"
    if "error" in box:
        raise box["error"]
    return box["value"]
