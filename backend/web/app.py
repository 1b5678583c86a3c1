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

import redis
from flask import Flask

from backend.jobs.census import WorkerCensus
from backend.label_studio.label_config import configure_schema_cache
from backend.label_studio.webhook_auth import WebhookAuthKeeper, credentials_for
from backend.label_studio.webhook_secret import WebhookSecretError, master_secret
from backend.operations import redis_client
from backend.operations.metrics import MetricsStore
from backend.operations.settings import Settings, SettingsError
from backend.operations.version_names import VersionError
from backend.versions.serving import version_store
from backend.web.json_provider import FastJSONProvider
from backend.web.request_log import install_request_log
from backend.web.routes import routes
from backend.web.state import EXTENSION, BackendState
from backend.web.webhooks import CorrectionWebhooks, WebhookHandler

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    connection: redis.Redis | None = None,
    webhook_handler: WebhookHandler | None = None,
) -> Flask:
    """Build the web app.

    Args:
        settings: defaults to ``Settings.from_env()``.
        connection: the Redis client for the queues; defaults to ``redis_client.connect(settings)``
            (lazy: Redis is first contacted by the first request that needs it).
        webhook_handler: gets handled webhook actions; defaults to ``CorrectionWebhooks`` (the correction
            store under ``MODEL_DIR`` and the training queue).

    Raises:
        backend.operations.settings.SettingsError: invalid settings, no Redis URL and no connection, a
            ``CORES_MODEL_VERSION`` / version pointer that names a missing version, or (without basic auth)
            a webhook secret that cannot be read or created.
    """
    settings = settings or Settings.from_env()
    connection = connection if connection is not None else redis_client.connect(settings)
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
    app.json = FastJSONProvider(app)
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
    logger.info("web app ready: %s, queue at %s", version, redis_client.describe_connection(connection))
    return app
