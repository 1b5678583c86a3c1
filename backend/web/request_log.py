"""Request ids and the access log of the web app.

``install_request_log(app)`` makes every request:

- take its id from the ``X-Request-ID`` header when it is a sane token, else a new random one
  (``backend.operations.logs.request_id_from``), and answer it in the ``X-Request-ID`` response header;
- tag every log record written while it is handled with ``request_id`` (``backend.operations.logs``), and
  every job it enqueues (``job.meta["request_id"]``, read by the worker's log lines);
- end with one access log line on the ``backend.access`` logger:
  ``POST /predict 200 41.3 ms 127.0.0.1`` (waitress writes no access log of its own).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from backend.operations.logs import REQUEST_ID_HEADER, bind_request_id, request_id_from, unbind_request_id

access_logger = logging.getLogger("backend.access")


def install_request_log(app: Flask) -> None:
    """Register the request id and access log hooks on ``app``."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_unbind)


def _start() -> None:
    g.cores_request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    g.cores_request_token = bind_request_id(g.cores_request_id)
    g.cores_request_started = time.perf_counter()


def _finish(response: Response) -> Response:
    request_id = g.get("cores_request_id")
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed_ms = (time.perf_counter() - g.cores_request_started) * 1000.0
        access_logger.info(
            "%s %s %d %.1f ms %s",
            request.method,
            request.full_path.rstrip("?"),
            response.status_code,
            elapsed_ms,
            request.remote_addr or "-",
        )
    return response


def _unbind(exc: BaseException | None) -> None:
    token = g.pop("cores_request_token", None)
    if token is not None:
        unbind_request_id(token)
