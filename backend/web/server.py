"""``python -m backend serve``: the web server, plus an embedded queue and worker when no REDIS_URL is set.

``serve`` supervises child processes: ``WORKERS`` web processes (``backend.web.wsgi``: waitress,
``THREADS`` threads each; each waiting /predict holds a thread; requests are read whole before a thread
takes them, so slow clients hold none) sharing the port; without ``REDIS_URL`` an embedded Redis and one
``python -m backend worker`` run beside them (``backend.jobs.embedded``). SIGTERM/SIGINT
stop the web first, then the worker (warm: it finishes its job), then Redis. If a child dies on its own,
``serve`` stops the rest and exits non-zero. Without ``CORES_CHECKPOINT`` a tiny random demo checkpoint
is built first (``backend.versions.serving.ensure_checkpoint``), loudly flagged: its masks are noise.

``--dev`` runs Flask's development server in this process instead of waitress.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from contextlib import ExitStack, suppress
from types import FrameType

from backend.jobs.embedded import ChildProcess, child_env, embedded_queue
from backend.operations.settings import Settings
from backend.versions.serving import ensure_checkpoint

logger = logging.getLogger(__name__)


def web_command() -> list[str]:
    """The command of one web process (``backend.web.wsgi``: waitress; settings from the environment)."""
    return [sys.executable, "-m", "backend.web.wsgi"]


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
                from backend.web.app import create_app

                logger.info("development server on http://%s:%d", settings.host, settings.port)
                with suppress(KeyboardInterrupt):
                    create_app(settings).run(settings.host, settings.port, threaded=True, use_reloader=False)
                return 0
            for index in range(settings.workers):
                web = ChildProcess(
                    f"web-{index + 1}" if settings.workers > 1 else "web",
                    web_command(),
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
