"""The web app's routes (``backend.web.app`` documents each one), its auth check and its error answers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend.jobs import queues
from backend.label_studio.connection import parse_setup, remember_setup, resolve, setup_connection
from backend.label_studio.webhook_secret import SECRET_HEADER
from backend.operations.ids import project_id
from backend.versions.serving import MODEL_CLASS, available_versions
from backend.web.dispatch import (
    InteractiveTimeoutError,
    JobFailedError,
    PayloadError,
    PayloadTooLargeError,
    parse_predict_call,
)
from backend.web.metrics import render
from backend.web.request_checks import JOB_ID, basic_auth_ok, lone_surrogate, webhook_authorized
from backend.web.state import current_state
from backend.web.webhooks import HANDLED_ACTIONS, WebhookPayloadError

logger = logging.getLogger(__name__)

NO_AUTH_PATHS = frozenset({"/health", "/webhook"})
"""``/health`` is open; ``/webhook`` checks its own credentials (basic auth or the webhook secret)."""

routes = Blueprint("backend", __name__)


def _error(status: int, code: str, message: str, **headers: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _json_body(*, whole_text: bool = False) -> Any:
    """The parsed JSON body; ``whole_text``: refuse (400) text anywhere in it that no UTF-8 can hold."""
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise PayloadError("the request body is not valid JSON")
    if whole_text:
        where = lone_surrogate(body)
        if where is not None:
            raise PayloadError(
                f"the request body's {where} holds a lone surrogate (a \\ud800-\\udfff escape without its "
                "pair), which is not text; send valid UTF-8"
            )
    return body


_UNAUTHORIZED = (
    "HTTP basic auth required: set the backend's BASIC_AUTH_USER/BASIC_AUTH_PASS in the ML connection"
)


@routes.before_app_request
def _check_auth() -> Response | None:
    settings = current_state().settings
    if settings.basic_auth_user is None or request.path in NO_AUTH_PATHS:
        return None
    if basic_auth_ok(settings, request.authorization):
        return None
    return _error(401, "unauthorized", _UNAUTHORIZED, WWW_Authenticate='Basic realm="cores"')


@routes.app_errorhandler(PayloadTooLargeError)
def _too_many_tasks(exc: PayloadTooLargeError) -> Response:
    logger.warning("request to %s refused: %s", request.path, exc)
    return _error(413, "too_large", str(exc))


@routes.app_errorhandler(RequestEntityTooLarge)
def _body_too_large(exc: RequestEntityTooLarge) -> Response:
    limit = current_state().settings.max_request_bytes
    logger.warning("request to %s refused: body over MAX_REQUEST_BYTES=%d", request.path, limit)
    return _error(
        413,
        "too_large",
        f"the request body is larger than MAX_REQUEST_BYTES={limit} bytes; send fewer tasks per call "
        "(or raise MAX_REQUEST_BYTES)",
    )


@routes.app_errorhandler(PayloadError)
def _bad_request(exc: PayloadError) -> Response:
    logger.info("bad request to %s: %s", request.path, str(exc)[:500])
    return _error(400, "bad_request", str(exc))


@routes.app_errorhandler(queues.QueueFull)
def _queue_full(exc: queues.QueueFull) -> Response:
    logger.warning("%s", exc)
    return _error(503, "queue_full", str(exc), Retry_After=str(exc.retry_after))


@routes.app_errorhandler(queues.QueueUnavailableError)
def _queue_unavailable(exc: queues.QueueUnavailableError) -> Response:
    current_state().count_redis_error()
    logger.error("%s", exc)
    return _error(503, "queue_unavailable", str(exc), Retry_After=str(exc.retry_after))


@routes.app_errorhandler(InteractiveTimeoutError)
def _timeout(exc: InteractiveTimeoutError) -> Response:
    logger.warning("%s", exc)
    return _error(504, "timeout", str(exc))


@routes.app_errorhandler(JobFailedError)
def _job_failed(exc: JobFailedError) -> Response:
    logger.error("%s", exc)
    return _error(500, "job_failed", str(exc))


@routes.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")


@routes.route("/", methods=["GET"])
@routes.route("/health", methods=["GET"])
def health() -> Response:
    """Liveness for Label Studio (1 s timeout): answered from memory, never waiting on Redis or the model."""
    state = current_state()
    census = state.census.snapshot()
    return jsonify(
        {
            "status": "UP",
            "model_class": MODEL_CLASS,
            "model_version": state.model_version(),
            **census.to_json(),
        }
    )


@routes.route("/setup", methods=["POST"])
def setup() -> Response:
    """Label Studio connects a project: answer its model version; remember the host and token it sent."""
    state = current_state()
    call = parse_setup(_json_body(whole_text=True))
    try:
        remember_setup(state.connection, state.settings, call)
        ls = setup_connection(
            state.settings, state.connection, call, authenticated=state.settings.basic_auth_user is not None
        )
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not store the /setup credentials of project %s: %s", call.project, exc)
        ls = None
    if call.project is not None:
        if ls is not None:
            state.webhook_auth.schedule(call.project, ls)
        elif state.webhook_auth.status(call.project) == "new":
            logger.warning(
                "project %s: cannot give its webhook to this backend the %s: the backend changes Label "
                "Studio's webhooks only through the Label Studio the operator named (LABEL_STUDIO_URL)%s. "
                "Until the webhook carries them, annotation webhooks are answered 401; set LABEL_STUDIO_URL, "
                "or set the header `python -m backend webhooks secret --project %s` prints in Label Studio",
                call.project,
                "basic-auth credentials" if state.settings.basic_auth_user else "webhook secret",
                ""
                if state.settings.basic_auth_user is None
                else " or an authenticated /setup with its token",
                call.project,
            )
    return jsonify({"model_version": state.model_version(call.project)})


@routes.route("/predict", methods=["POST"])
def predict() -> Response:
    """Predictions for Label Studio tasks (see ``backend.web.dispatch``)."""
    state = current_state()
    kind = "batch"
    try:
        call = parse_predict_call(_json_body(), max_tasks=state.settings.max_predict_tasks)
        kind = "interactive" if call.interactive else "batch"
        answer = state.dispatcher.predict(call)
    except PayloadError:
        state.metrics.incr("predict_requests_total", {"kind": kind, "outcome": "bad_request"})
        raise
    except queues.QueueFull:
        state.metrics.incr("predict_requests_total", {"kind": kind, "outcome": "queue_full"})
        raise
    except queues.QueueUnavailableError:
        raise  # Redis is down: the counter would not land; /metrics reports web_redis_errors_total
    except InteractiveTimeoutError:
        state.metrics.incr("predict_requests_total", {"kind": kind, "outcome": "timeout"})
        raise
    except JobFailedError:
        state.metrics.incr("predict_requests_total", {"kind": kind, "outcome": "job_failed"})
        raise
    state.metrics.incr("predict_requests_total", {"kind": kind, "outcome": "ok"})
    return jsonify(answer)


@routes.route("/webhook", methods=["POST"])
def webhook() -> Response:
    """Label Studio events, authenticated (basic auth or the project's webhook secret): handled actions go
    to the webhook handler, others are ignored. A body the handler cannot read is answered 400 and nothing
    is recorded."""
    state = current_state()
    body = _json_body(whole_text=True)
    secret = request.headers.get(SECRET_HEADER)
    if not webhook_authorized(state.settings, state.webhook_master, request.authorization, secret, body):
        basic = state.settings.basic_auth_user is not None
        logger.warning(
            "POST /webhook from %s answered 401 (%s): this event is NOT recorded. Label Studio's webhook to "
            "this backend must send %s: the backend sets it on the project's webhook after Label Studio's "
            "/setup when LABEL_STUDIO_URL names that Label Studio (see the log for errors), or run `python "
            "-m backend webhooks ensure --project ID`, or set the header `python -m backend webhooks secret "
            "--project ID` prints on the webhook in Label Studio (project Settings > Webhooks)",
            request.remote_addr,
            "wrong credentials" if request.authorization is not None or secret else "no credentials",
            "BASIC_AUTH_USER/BASIC_AUTH_PASS" if basic else f"the project's {SECRET_HEADER}",
        )
        headers = {"WWW_Authenticate": 'Basic realm="cores"'} if basic else {}
        return _error(
            401,
            "unauthorized",
            "webhooks need "
            + ("HTTP basic auth" if basic else f"the project's {SECRET_HEADER} header")
            + ": run `python -m backend webhooks ensure --project ID`",
            **headers,
        )
    if not isinstance(body, Mapping) or not isinstance(body.get("action"), str):
        raise PayloadError("expected a JSON object with an 'action' string")
    action = body["action"]
    if action not in HANDLED_ACTIONS:
        logger.debug("webhook %s ignored", action)
        return jsonify({"status": "ignored", "action": action})
    try:
        extra = dict(state.webhook_handler(action, body) or {})
    except WebhookPayloadError as exc:
        raise PayloadError(str(exc)) from exc
    return jsonify({"status": extra.pop("status", "accepted"), "action": action, **extra})


@routes.route("/versions", methods=["GET"])
def versions() -> Response:
    """Model versions this backend can serve."""
    state = current_state()
    names = available_versions(state.settings, state.versions)
    return jsonify({"versions": names, "model_version": state.model_version()})


@routes.route("/metrics", methods=["GET"])
def metrics() -> Response:
    """Prometheus metrics (see ``backend.web.metrics`` for each one)."""
    state = current_state()
    text = render(
        state.connection,
        model_version=state.model_version(),
        max_queued=state.settings.max_queued,
        redis_error_count=state.redis_error_count,
    )
    return Response(text, mimetype="text/plain; version=0.0.4")


@routes.route("/jobs/<path:job_id>", methods=["GET"])
def job(job_id: str) -> Response:
    """A job's status, queue, timestamps, error traceback (failed jobs) and result summary."""
    if not JOB_ID.match(job_id):
        shown = job_id[:40] + ("..." if len(job_id) > 40 else "")
        return _error(
            404,
            "not_found",
            f"no job {shown!r}: job ids are at most 128 letters, digits, '-' and '_' "
            f"({len(job_id)} characters given)",
        )
    connection = current_state().connection
    found = queues.fetch_job(connection, job_id)
    if found is None:
        return _error(404, "not_found", f"no job {job_id!r} (unknown, or its result expired)")
    include = request.args.get("result", "").lower() in ("1", "true", "yes")
    return jsonify(queues.job_info(found, include_result=include))


@routes.route("/report", methods=["GET"])
def report() -> Response:
    """The loop's HTML report (``backend.report``; ``?project=N``: that project's corrections only)."""
    from backend.report.images import image_loader
    from backend.report.page import build_report

    state = current_state()
    raw = request.args.get("project")
    project = project_id(raw) if raw else None
    if raw and project is None:
        return _error(400, "bad_request", f"?project must be a Label Studio project id, got {raw[:40]!r}")
    ls = resolve(state.settings, state.connection, project)
    html = build_report(state.settings, project=project, images=image_loader(state.settings, ls))
    return Response(html, mimetype="text/html")
