"""Structured logs (``backend.operations.logs``): JSON and text lines, job ids inside jobs, request ids in the
web."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import redis
from flask.testing import FlaskClient
from rq import SimpleWorker

from backend.jobs import queues
from backend.operations.logs import (
    REQUEST_ID_HEADER,
    ContextFilter,
    bind_request_id,
    configure_logging,
    make_formatter,
    unbind_request_id,
)
from backend.operations.settings import Settings, SettingsError
from tests.backend.conftest import work

LOG_AND_SLEEP = "tests.backend.sample_jobs.log_and_sleep"


class Captured:
    """Lines the root logger wrote through a ``backend.operations.logs`` formatter and filter."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]


def _capture(fmt: str) -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield Captured(stream)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def json_logs() -> Iterator[Captured]:
    yield from _capture("json")


@pytest.fixture
def text_logs() -> Iterator[Captured]:
    yield from _capture("text")


def test_json_lines_hold_time_level_logger_message_and_the_traceback(json_logs: Captured) -> None:
    log = logging.getLogger("backend.test")
    log.info("plain %s", "message")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    plain, failed = json_logs.records()
    assert set(plain) == {"time", "level", "logger", "message", "process"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(plain["time"]))
    assert (plain["level"], plain["logger"], plain["message"]) == ("INFO", "backend.test", "plain message")
    assert failed["level"] == "ERROR"
    assert "ValueError: boom" in str(failed["exc_info"])


def test_a_request_id_tags_lines_until_it_is_unbound(json_logs: Captured, text_logs: Captured) -> None:
    log = logging.getLogger("backend.test")
    token = bind_request_id("req-1")
    log.info("inside")
    unbind_request_id(token)
    log.info("outside")
    inside, outside = json_logs.records()
    assert inside["request_id"] == "req-1"
    assert "request_id" not in outside
    assert text_logs.lines()[0].endswith("backend.test: inside [req=req-1]")
    assert text_logs.lines()[1].endswith("backend.test: outside")


def test_a_jobs_log_lines_carry_its_id_and_queue_and_the_request_that_enqueued_it(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker, json_logs: Captured
) -> None:
    token = bind_request_id("req-for-job")
    try:
        job = queues.enqueue(redis_conn, settings, queues.BULK, LOG_AND_SLEEP, "inside the job", 0)
    finally:
        unbind_request_id(token)
    assert job.meta["request_id"] == "req-for-job"
    other = queues.enqueue(redis_conn, settings, queues.BULK, LOG_AND_SLEEP, "a job from no request", 0)
    assert "request_id" not in other.meta

    assert work(worker)
    records = json_logs.records()
    ours = [r for r in records if r["message"] == "inside the job"]
    assert len(ours) == 1
    assert ours[0]["job_id"] == job.id
    assert ours[0]["queue"] == "bulk"
    assert ours[0]["request_id"] == "req-for-job"
    second = [r for r in records if r["message"] == "a job from no request"]
    assert second[0]["job_id"] == other.id
    assert "request_id" not in second[0]
    # after the jobs, nothing is tagged any more
    logging.getLogger("backend.test").info("after the jobs")
    assert "job_id" not in json_logs.records()[-1]


def test_the_web_echoes_or_makes_a_request_id_and_logs_each_request_with_it(
    client: FlaskClient, json_logs: Captured
) -> None:
    given = client.get("/health", headers={REQUEST_ID_HEADER: "abc-123"})
    made = client.get("/health")
    refused = client.get("/health", headers={REQUEST_ID_HEADER: "bad id; forged=" + "x" * 200})

    assert given.headers[REQUEST_ID_HEADER] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers[REQUEST_ID_HEADER])
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers[REQUEST_ID_HEADER])
    assert made.headers[REQUEST_ID_HEADER] != refused.headers[REQUEST_ID_HEADER]

    access = [r for r in json_logs.records() if r["logger"] == "backend.access"]
    assert [r["request_id"] for r in access] == [
        "abc-123",
        made.headers[REQUEST_ID_HEADER],
        refused.headers[REQUEST_ID_HEADER],
    ]
    assert str(access[0]["message"]).startswith("GET /health 200 ")


def test_errors_answered_before_the_view_still_get_a_request_id(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    from backend.web.app import create_app

    secured = settings.with_changes(basic_auth_user="u", basic_auth_pass="p")
    answer = create_app(secured, connection=redis_conn).test_client().get("/metrics")
    assert answer.status_code == 401
    assert answer.headers[REQUEST_ID_HEADER]


def test_configure_logging_installs_one_handler_in_the_chosen_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        configure_logging("INFO", "json")  # twice: still one handler
        assert len(root.handlers) == 1
        logging.getLogger("backend.test").info("to stderr")
        line = json.loads(capsys.readouterr().err.strip())
        assert line["message"] == "to stderr"
        with pytest.raises(ValueError, match="unknown log format"):
            configure_logging("INFO", "xml")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_log_format_setting_is_validated() -> None:
    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"
    assert Settings.from_env({}).log_format == "text"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "yaml"})
    with pytest.raises(SettingsError, match="WORKER_SHUTDOWN_GRACE"):
        Settings.from_env({"WORKER_SHUTDOWN_GRACE": "0"})
    assert Settings.from_env({"WORKER_SHUTDOWN_GRACE": "2.5"}).to_env()["WORKER_SHUTDOWN_GRACE"] == "2.5"
