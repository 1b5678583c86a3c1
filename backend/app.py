"""The Label Studio ML backend web app (Flask app factory). Never imports torch or ``cores.pipeline``.

Routes (wire-compatible with Label Studio 1.23):

- ``GET /``, ``GET /health``: ``{"status": "UP", "model_class": "CoReS", "model_version"}``; /health
  needs no auth and touches neither Redis nor the model.
- ``POST /setup``: ``{"model_version"}``; remembers the project's Label Studio host and token, and with
  basic auth on, gives the project's webhook to this backend the credentials in a background thread
  (``backend.webhook_auth``).

Every answer that names the model version reads the served one per request (``CORES_MODEL_VERSION``, else
``MODEL_DIR/versions/current``, else the base checkpoint's; one ``stat``, see ``backend.version_store``),
so a published fine-tune, a pin or a rollback shows in ``/setup``, ``/versions`` and new predictions without
a restart.
- ``POST /predict``: predictions (``backend.dispatch``): an interactive call waits for its job; a batch
  answers by the deadline and leaves late predictions to the jobs' write-back.
- ``POST /webhook``: annotation events are recorded in the correction store, ``START_TRAINING`` enqueues a
  fine-tune: ``{"status": "created"|"duplicate"|"deleted"|"ignored"|"queued"|"already_queued", "action",
  ...}``; other actions ``{"status": "ignored", "action"}`` (``backend.webhooks``).
- ``GET /versions``: ``{"versions": [every servable version, oldest first], "model_version": the served}``.
- ``GET /metrics``: Prometheus text (``backend.metrics`` documents each metric).
- ``GET /jobs/<id>``: a job's status, timestamps, error traceback and result summary (``?result=1``:
  the whole result).

Errors are JSON ``{"error": {"code", "message"}}``: 400 malformed requests, 401 missing/wrong basic auth,
404 unknown job, 503 + ``Retry-After`` when the queue is full or Redis is unreachable, 504 when an
interactive prediction misses the deadline, 500 when a job fails.

Every answer carries ``X-Request-ID`` (the caller's, or a new one) and every request writes one access log
line (``backend.request_log``).
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from backend import queues
from backend.dispatch import (
    Dispatcher,
    InteractiveTimeoutError,
    JobFailedError,
    PayloadError,
    parse_predict_call,
)
from backend.ls_connection import project_id, remember_setup
from backend.metrics import MetricsStore, render
from backend.request_log import install_request_log
from backend.settings import Settings, SettingsError
from backend.version_store import VersionError, VersionStore
from backend.versions import MODEL_CLASS, available_versions, version_store
from backend.webhook_auth import WebhookAuthKeeper, connection_from_setup
from backend.webhooks import HANDLED_ACTIONS, CorrectionWebhooks, WebhookHandler, WebhookPayloadError

logger = logging.getLogger(__name__)

EXTENSION = "cores"
NO_AUTH_PATHS = frozenset({"/health"})

routes = Blueprint("backend", __name__)


@dataclass
class BackendState:
    """Everything the routes share, kept on the app (``app.extensions["cores"]``), never in globals."""

    settings: Settings
    connection: redis.Redis
    versions: VersionStore
    last_version: str
    metrics: MetricsStore
    webhook_handler: WebhookHandler
    webhook_auth: WebhookAuthKeeper | None = None
    dispatcher: Dispatcher = field(init=False)
    redis_error_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(self.settings, self.connection, self.metrics, self.model_version)

    def count_redis_error(self) -> None:
        with self._lock:
            self.redis_error_count += 1

    def model_version(self) -> str:
        """The version served now (read per request: one ``stat`` of the pointer file). When the pointer
        cannot be read, the last version read is answered and the error logged."""
        try:
            name = self.versions.served(self.settings.pinned_version).name
        except VersionError as exc:
            logger.error("cannot read the served model version (answering %s): %s", self.last_version, exc)
            return self.last_version
        if name != self.last_version:
            logger.info("model version now %s (was %s)", name, self.last_version)
            self.last_version = name
        return name


def create_app(
    settings: Settings | None = None,
    *,
    connection: redis.Redis | None = None,
    webhook_handler: WebhookHandler | None = None,
) -> Flask:
    """Build the web app.

    Args:
        settings: defaults to ``Settings.from_env()``.
        connection: the Redis client for the queues; defaults to ``queues.connect(settings)`` (lazy: Redis
            is first contacted by the first request that needs it).
        webhook_handler: gets handled webhook actions; defaults to ``CorrectionWebhooks`` (the correction
            store under ``MODEL_DIR`` and the training queue).

    Raises:
        backend.settings.SettingsError: invalid settings, no Redis URL and no connection, or a
            ``CORES_MODEL_VERSION`` / version pointer that names a missing version.
    """
    settings = settings or Settings.from_env()
    connection = connection if connection is not None else queues.connect(settings)
    versions = version_store(settings)
    try:
        version = versions.served(settings.pinned_version).name
    except VersionError as exc:
        raise SettingsError(str(exc)) from exc
    metrics = MetricsStore(connection)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = BackendState(
        settings=settings,
        connection=connection,
        versions=versions,
        last_version=version,
        metrics=metrics,
        webhook_handler=webhook_handler or CorrectionWebhooks(settings, connection),
        webhook_auth=(
            WebhookAuthKeeper(settings.basic_auth_user, settings.basic_auth_pass)
            if settings.basic_auth_user is not None and settings.basic_auth_pass is not None
            else None
        ),
    )
    install_request_log(app)  # before the blueprint: its auth check may answer first
    app.register_blueprint(routes)
    logger.info("web app ready: %s, queue at %s", version, queues.describe_connection(connection))
    return app


def _state() -> BackendState:
    state: BackendState = current_app.extensions[EXTENSION]
    return state


def _error(status: int, code: str, message: str, **headers: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _json_body() -> Any:
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise PayloadError("the request body is not valid JSON")
    return body


@routes.before_app_request
def _check_auth() -> Response | None:
    settings = _state().settings
    if settings.basic_auth_user is None or request.path in NO_AUTH_PATHS:
        return None
    auth = request.authorization
    user_ok = auth is not None and hmac.compare_digest(
        (auth.username or "").encode(), settings.basic_auth_user.encode()
    )
    pass_ok = auth is not None and hmac.compare_digest(
        (auth.password or "").encode(), (settings.basic_auth_pass or "").encode()
    )
    if user_ok and pass_ok:
        return None
    if request.path == "/webhook":
        logger.warning(
            "POST /webhook from %s answered 401 (%s): this annotation event is NOT recorded. Label Studio's "
            "webhook to this backend must send BASIC_AUTH_USER/BASIC_AUTH_PASS: the backend adds them to the "
            "project's webhook after Label Studio's /setup (see the log for errors), or run "
            "`python -m backend webhooks ensure --project ID`, or set 'Authorization: Basic <base64 of "
            "user:password>' on the webhook in Label Studio (project Settings > Webhooks)",
            request.remote_addr,
            "no credentials" if auth is None else "wrong credentials",
        )
    return _error(
        401,
        "unauthorized",
        "HTTP basic auth required: set the backend's BASIC_AUTH_USER/BASIC_AUTH_PASS in the ML connection",
        WWW_Authenticate='Basic realm="cores"',
    )


@routes.app_errorhandler(PayloadError)
def _bad_request(exc: PayloadError) -> Response:
    logger.info("bad request to %s: %s", request.path, exc)
    return _error(400, "bad_request", str(exc))


@routes.app_errorhandler(queues.QueueFull)
def _queue_full(exc: queues.QueueFull) -> Response:
    logger.warning("%s", exc)
    return _error(503, "queue_full", str(exc), Retry_After=str(exc.retry_after))


@routes.app_errorhandler(queues.QueueUnavailableError)
def _queue_unavailable(exc: queues.QueueUnavailableError) -> Response:
    _state().count_redis_error()
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
    """Liveness for Label Studio (1 s timeout): answers without touching Redis or the model."""
    return jsonify({"status": "UP", "model_class": MODEL_CLASS, "model_version": _state().model_version()})


@routes.route("/setup", methods=["POST"])
def setup() -> Response:
    """Label Studio connects a project: answer the model version; remember the host and token it sent."""
    state = _state()
    body = _json_body()
    if isinstance(body, Mapping):
        try:
            remember_setup(state.connection, body)
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning(
                "could not store the /setup credentials of project %s: %s", body.get("project"), exc
            )
        _schedule_webhook_auth(state, body)
    return jsonify({"model_version": state.model_version()})


def _schedule_webhook_auth(state: BackendState, body: Mapping[str, Any]) -> None:
    """With basic auth on: start (once per project, off the request path) giving the project's webhook to
    this backend the credentials (``backend.webhook_auth``)."""
    if state.webhook_auth is None:
        return
    project = project_id(body.get("project"))
    if project is None:
        return
    ls = connection_from_setup(state.settings, body)
    if ls is None:
        logger.warning(
            "project %s: /setup gave no usable Label Studio host and token (and LABEL_STUDIO_URL/"
            "LABEL_STUDIO_API_KEY are not set): cannot give its webhook the basic-auth credentials; run "
            "`python -m backend webhooks ensure --project %s`",
            project,
            project,
        )
        return
    state.webhook_auth.schedule(project, ls)


@routes.route("/predict", methods=["POST"])
def predict() -> Response:
    """Predictions for Label Studio tasks (see ``backend.dispatch``)."""
    state = _state()
    kind = "batch"
    try:
        call = parse_predict_call(_json_body())
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
    """Label Studio events: handled actions go to the webhook handler, others are ignored. A body the
    handler cannot read is answered 400 and nothing is recorded."""
    state = _state()
    body = _json_body()
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
    state = _state()
    names = available_versions(state.settings, state.versions)
    return jsonify({"versions": names, "model_version": state.model_version()})


@routes.route("/metrics", methods=["GET"])
def metrics() -> Response:
    """Prometheus metrics (see ``backend.metrics`` for each one)."""
    state = _state()
    text = render(
        state.connection,
        model_version=state.model_version(),
        max_queued=state.settings.max_queued,
        redis_error_count=state.redis_error_count,
    )
    return Response(text, mimetype="text/plain; version=0.0.4")


@routes.route("/jobs/<job_id>", methods=["GET"])
def job(job_id: str) -> Response:
    """A job's status, queue, timestamps, error traceback (failed jobs) and result summary."""
    connection = _state().connection
    found = queues.fetch_job(connection, job_id)
    if found is None:
        return _error(404, "not_found", f"no job {job_id!r} (unknown, or its result expired)")
    include = request.args.get("result", "").lower() in ("1", "true", "yes")
    return jsonify(queues.job_info(found, include_result=include))
