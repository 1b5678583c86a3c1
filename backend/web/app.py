"""The Label Studio ML backend web app (Flask app factory). Never imports torch or
``cores.inference.pipeline``.

Routes (wire-compatible with Label Studio 1.23):

- ``GET /``, ``GET /health``: ``{"status": "UP", "model_class": "CoReS", "model_version", "workers",
  "serving", "redis_up", "checked_at"}``; needs no auth and never waits on Redis or the model: the live
  worker count comes from a background thread of the web (``backend.jobs.census``), ``serving`` is false
  when no worker takes jobs.
- ``POST /setup``: ``{"model_version"}`` (the version served to the project); remembers the project's
  Label Studio host and token (``backend.label_studio.connection``'s rules), and gives the project's webhook
  to this backend its credentials in a background thread (``backend.label_studio.webhook_auth``).
- ``POST /predict``: predictions (``backend.web.dispatch``): an interactive call waits for its job; a batch
  answers by the deadline and leaves late predictions to the jobs' write-back.
- ``POST /webhook``: needs basic auth (when on) or the project's ``X-Cores-Webhook-Secret``
  (``backend.label_studio.webhook_secret``), else 401 and a WARNING naming the fix, and nothing is recorded.
  Annotation events are recorded in the correction store, ``START_TRAINING`` enqueues a fine-tune of the
  project: ``{"status": "created"|"duplicate"|"deleted"|"ignored"|"queued"|"already_queued", "action", ...}``;
  other actions ``{"status": "ignored", "action"}`` (``backend.web.webhooks``).
- ``GET /versions``: ``{"versions": [every servable version, oldest first], "model_version": the served}``.
- ``GET /metrics``: Prometheus text (``backend.web.metrics`` documents each metric).
- ``GET /jobs/<id>``: a job's status, timestamps, error traceback and result summary (``?result=1``:
  the whole result).

Every answer that names the model version reads the served one per request (``CORES_MODEL_VERSION``, else
the project's pointer, else ``MODEL_DIR/versions/current``, else the base checkpoint's; a ``stat`` each,
see ``backend.versions.store``), so a published fine-tune, a pin or a rollback shows without a restart.

Errors are JSON ``{"error": {"code", "message"}}``: 400 malformed requests (and text no UTF-8 can hold),
401 missing/wrong credentials, 404 unknown job, 413 a body over ``MAX_REQUEST_BYTES`` or more tasks than
``MAX_PREDICT_TASKS``, 503 + ``Retry-After`` when the queue is full or Redis is unreachable, 504 when an
interactive prediction misses the deadline, 500 when a job fails as a whole.

Every answer carries ``X-Request-ID`` (the caller's, or a new one) and every request writes one access log
line (``backend.web.request_log``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend.jobs import queues
from backend.jobs.census import WorkerCensus
from backend.label_studio.connection import parse_setup, remember_setup, setup_connection
from backend.label_studio.label_config import configure_schema_cache
from backend.label_studio.webhook_auth import WebhookAuthKeeper, credentials_for
from backend.label_studio.webhook_secret import SECRET_HEADER, WebhookSecretError, master_secret
from backend.operations.settings import Settings, SettingsError
from backend.versions.serving import MODEL_CLASS, available_versions, version_store
from backend.versions.store import VersionError, VersionStore
from backend.web.dispatch import (
    Dispatcher,
    InteractiveTimeoutError,
    JobFailedError,
    PayloadError,
    PayloadTooLargeError,
    parse_predict_call,
)
from backend.web.metrics import MetricsStore, render
from backend.web.request_checks import JOB_ID, basic_auth_ok, lone_surrogate, webhook_authorized
from backend.web.request_log import install_request_log
from backend.web.webhooks import HANDLED_ACTIONS, CorrectionWebhooks, WebhookHandler, WebhookPayloadError

logger = logging.getLogger(__name__)

EXTENSION = "cores"
NO_AUTH_PATHS = frozenset({"/health", "/webhook"})
"""``/health`` is open; ``/webhook`` checks its own credentials (basic auth or the webhook secret)."""

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
    webhook_auth: WebhookAuthKeeper
    census: WorkerCensus
    webhook_master: bytes | None = None
    dispatcher: Dispatcher = field(init=False)
    redis_error_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(self.settings, self.connection, self.metrics, self.model_version)

    def count_redis_error(self) -> None:
        with self._lock:
            self.redis_error_count += 1

    def model_version(self, project: int | None = None) -> str:
        """The version served now to ``project`` (read per request: a ``stat`` per pointer file). When a
        pointer cannot be read, the last version read is answered and the error logged."""
        try:
            name = self.versions.served(self.settings.pinned_version, project).name
        except VersionError as exc:
            logger.error("cannot read the served model version (answering %s): %s", self.last_version, exc)
            return self.last_version
        if project is None and name != self.last_version:
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
        backend.operations.settings.SettingsError: invalid settings, no Redis URL and no connection, a
            ``CORES_MODEL_VERSION`` / version pointer that names a missing version, or (without basic auth)
            a webhook secret that cannot be read or created.
    """
    settings = settings or Settings.from_env()
    connection = connection if connection is not None else queues.connect(settings)
    versions = version_store(settings)
    try:
        version = versions.served(settings.pinned_version).name
    except VersionError as exc:
        raise SettingsError(str(exc)) from exc
    master = None
    if settings.basic_auth_user is None:
        try:
            master = master_secret(settings)
        except WebhookSecretError as exc:
            raise SettingsError(str(exc)) from exc
    configure_schema_cache(settings.label_config_cache_bytes)
    metrics = MetricsStore(connection)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions[EXTENSION] = BackendState(
        settings=settings,
        connection=connection,
        versions=versions,
        last_version=version,
        metrics=metrics,
        webhook_handler=webhook_handler or CorrectionWebhooks(settings, connection),
        webhook_auth=WebhookAuthKeeper(lambda project: credentials_for(settings, project)),
        census=WorkerCensus(connection),
        webhook_master=master,
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
    settings = _state().settings
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
    limit = _state().settings.max_request_bytes
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
    """Liveness for Label Studio (1 s timeout): answered from memory, never waiting on Redis or the model."""
    state = _state()
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
    state = _state()
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
    state = _state()
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
    state = _state()
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
    state = _state()
    names = available_versions(state.settings, state.versions)
    return jsonify({"versions": names, "model_version": state.model_version()})


@routes.route("/metrics", methods=["GET"])
def metrics() -> Response:
    """Prometheus metrics (see ``backend.web.metrics`` for each one)."""
    state = _state()
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
    connection = _state().connection
    found = queues.fetch_job(connection, job_id)
    if found is None:
        return _error(404, "not_found", f"no job {job_id!r} (unknown, or its result expired)")
    include = request.args.get("result", "").lower() in ("1", "true", "yes")
    return jsonify(queues.job_info(found, include_result=include))
