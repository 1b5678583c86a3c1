"""``python -m backend serve``: the web server, plus an embedded queue and worker when no REDIS_URL is set.

``serve`` supervises child processes rather than becoming the gunicorn master itself, so that gunicorn's
child reaping never touches the worker: gunicorn (``WORKERS`` processes x ``THREADS`` threads, gthread:
each waiting /predict holds a thread, not a process) serves ``wsgi_app()``; without ``REDIS_URL`` an
embedded Redis and one ``python -m backend worker`` run beside it (``backend.embedded``). SIGTERM/SIGINT
stop the web first, then the worker (warm: it finishes its job), then Redis. If a child dies on its own,
``serve`` stops the rest and exits non-zero. Without ``CORES_CHECKPOINT`` a tiny random demo checkpoint
is built first (``backend.versions.ensure_checkpoint``), loudly flagged: its masks are noise.

``--dev`` runs Flask's development server in this process instead of gunicorn.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from contextlib import ExitStack, suppress
from types import FrameType
from typing import Any

from flask import Flask
from gunicorn.glogging import Logger as _GunicornLogger

from backend.embedded import ChildProcess, child_env, embedded_queue
from backend.logs import ContextFilter, configure_logging, make_formatter
from backend.settings import Settings
from backend.versions import ensure_checkpoint

logger = logging.getLogger(__name__)


def wsgi_app() -> Flask:
    """The WSGI app gunicorn loads (``backend.server:wsgi_app()``): settings from the environment."""
    from backend.app import create_app

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


class GunicornLogger(_GunicornLogger):
    """gunicorn's own lines (master, worker boots) in the backend's ``LOG_FORMAT`` (``backend.logs``)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        try:
            formatter = make_formatter(Settings.from_env().log_format)
        except ValueError:  # SettingsError included: the web app reports it when it loads
            return
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter)
            handler.addFilter(ContextFilter())


def gunicorn_command(settings: Settings) -> list[str]:
    """The gunicorn command line for these settings."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.host}:{settings.port}",
        "--workers",
        str(settings.workers),
        "--threads",
        str(settings.threads),
        "--worker-class",
        "gthread",
        "--timeout",
        str(math.ceil(settings.predict_deadline) + 30),
        "--graceful-timeout",
        str(math.ceil(settings.predict_deadline) + 5),
        "--no-control-socket",  # gunicorn 27's default socket path is shared by every instance
        "--logger-class",
        "backend.server.GunicornLogger",  # no gunicorn access log: the app writes one with request ids
        "--log-level",
        settings.log_level.lower(),
        "backend.server:wsgi_app()",
    ]


def serve(settings: Settings, *, dev: bool = False) -> int:
    """Run the backend until SIGTERM/SIGINT (see the module docstring). Returns the exit code."""
    settings = ensure_checkpoint(settings)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()
        if dev:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with ExitStack() as stack:
            children: list[ChildProcess] = []
            if settings.redis_url is None:
                settings, worker = stack.enter_context(embedded_queue(settings))
                children.append(worker)
            if dev:
                from backend.app import create_app

                logger.info("development server on http://%s:%d", settings.host, settings.port)
                with suppress(KeyboardInterrupt):
                    create_app(settings).run(settings.host, settings.port, threaded=True, use_reloader=False)
                return 0
            web = ChildProcess(
                "web",
                gunicorn_command(settings),
                child_env(settings),
                stop_timeout_s=settings.predict_deadline + 10,
            )
            stack.callback(web.stop)  # runs before the embedded queue's own cleanup
            web.start()
            children.append(web)
            logger.info("serving on http://%s:%d", settings.host, settings.port)
            while not stop.wait(0.5):
                dead = [child for child in children if child.poll() is not None]
                if dead:
                    for child in dead:
                        logger.error(
                            "%s exited unexpectedly with code %s: stopping", child.name, child.poll()
                        )
                    return 1
            return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
