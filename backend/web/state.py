"""What the web app's routes share, kept on the app (``app.extensions["cores"]``), never in globals."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import redis
from flask import current_app

from backend.jobs.census import WorkerCensus
from backend.label_studio.webhook_auth import WebhookAuthKeeper
from backend.operations.metrics import MetricsStore
from backend.operations.settings import Settings
from backend.operations.version_names import VersionError
from backend.versions.store import VersionStore
from backend.web.dispatch import Dispatcher
from backend.web.webhooks import WebhookHandler

logger = logging.getLogger(__name__)

EXTENSION = "cores"


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


def current_state() -> BackendState:
    """The state of the app handling the current request."""
    state: BackendState = current_app.extensions[EXTENSION]
    return state
