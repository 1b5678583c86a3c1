"""Logging for backend processes: one line per record, as text or JSON, tagged with job and request ids.

``configure_logging(level, fmt)`` installs one stderr handler on the root logger (``serve``, the web
processes, ``worker`` and the CLIs all call it). ``fmt`` is ``text`` (default) or ``json``, from the
environment variable ``LOG_FORMAT``:

- text:
  ``2025-03-01 10:00:00,123 INFO 4242 backend.jobs.predict: predicted 1 tasks [job=ab12 queue=interactive]``
- json: ``{"time": "2025-03-01T10:00:00.123Z", "level": "INFO", "logger": "backend.jobs.predict",
  "message": "predicted 1 tasks", "process": 4242, "job_id": "ab12", "queue": "interactive"}``, plus
  ``request_id`` inside an HTTP request (or a job enqueued by one) and ``exc_info`` (the traceback) when
  the record has one.

Context comes from ``ContextFilter``: inside a job it reads rq's current job (``rq.get_current_job()``,
set while the job function runs) or the job bound by the worker around the whole execution
(``bind_job``); inside a web request it reads the id bound by the app (``bind_request_id``). Jobs
enqueued during a request carry its id in ``job.meta["request_id"]`` (``current_request_id``), so one id
follows a prediction from Label Studio's call to the worker's lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from rq import get_current_job

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s%(context)s"
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_META = "request_id"
"""``job.meta`` key holding the id of the HTTP request that enqueued the job."""

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("cores_request_id", default=None)
_job: contextvars.ContextVar[tuple[str, str | None, str | None] | None] = contextvars.ContextVar(
    "cores_job", default=None
)
_CONTEXT_FIELDS = ("job_id", "queue", "request_id")


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging for a backend process: one stderr handler, ``fmt`` ``text`` or ``json``.

    Replaces any handlers already on the root logger (calling it twice is safe).

    Raises:
        ValueError: ``fmt`` is not one of ``LOG_FORMATS``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``fmt`` (``text`` or ``json``); records need ``ContextFilter``'s attributes.

    Raises:
        ValueError: an unknown format.
    """
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT, defaults={"context": ""})
    raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC ISO 8601, ms), level, logger, message, process, context ids."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ContextFilter(logging.Filter):
    """Adds ``job_id``, ``queue``, ``request_id`` (None outside a job/request) and ``context`` (the text
    format's `` [job=... queue=... req=...]`` suffix) to every record. Never drops a record, never raises."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id, queue, request_id = _current_context()
        record.job_id = job_id
        record.queue = queue
        record.request_id = request_id
        pairs = (("job", job_id), ("queue", queue), ("req", request_id))
        shown = " ".join(f"{key}={value}" for key, value in pairs if value)
        record.context = f" [{shown}]" if shown else ""
        return True


def _current_context() -> tuple[str | None, str | None, str | None]:
    """``(job_id, queue, request_id)`` of the running job and/or request."""
    job_id = queue = None
    request_id = _request_id.get()
    try:
        job = get_current_job()
        if job is not None:
            job_id, queue = job.id, job.origin
            meta_id = job.meta.get(REQUEST_ID_META) if isinstance(job.meta, dict) else None
            request_id = request_id or (str(meta_id) if meta_id else None)
    except Exception:  # a log line must never fail because the job cannot be read
        job_id = queue = None
    if job_id is None:
        bound = _job.get()
        if bound is not None:
            job_id, queue, bound_request = bound
            request_id = request_id or bound_request
    return job_id, queue, request_id


@contextmanager
def bind_job(job_id: str, queue: str | None, request_id: str | None = None) -> Iterator[None]:
    """Tag this thread's records with a job's id (the worker wraps each whole execution in it)."""
    token = _job.set((job_id, queue, request_id))
    try:
        yield
    finally:
        _job.reset(token)


def bind_request_id(value: str | None) -> contextvars.Token[str | None]:
    """Tag this thread's records with a request id; pass the token to ``unbind_request_id`` at the end."""
    return _request_id.set(value)


def unbind_request_id(token: contextvars.Token[str | None]) -> None:
    """End what ``bind_request_id`` started."""
    _request_id.reset(token)


def current_request_id() -> str | None:
    """The id of the HTTP request being handled in this thread, if any."""
    return _request_id.get()


def request_id_from(header: str | None) -> str:
    """The request id to use: the client's ``X-Request-ID`` when it is a sane token (1-128 characters of
    letters, digits and ``._:@/+=-``), else a new random one (32 hex digits)."""
    if header and _REQUEST_ID_OK.match(header):
        return header
    return uuid.uuid4().hex
