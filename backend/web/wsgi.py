"""One web process: the Flask app on waitress, which buffers every request before a thread handles it.

gunicorn's gthread worker reads requests inside its thread pool, so ten clients sending a byte a second
hold ten threads and ``/health`` waits behind them. waitress reads requests in its event loop and hands a
thread only a whole request (headers and body, bounded), so slow clients cost a socket each, never a
thread: ``/health`` answers while they dribble. Bounds: ``THREADS`` request threads, ``MAX_CONNECTIONS``
open connections, headers (request line included) up to ``MAX_HEADER_BYTES`` (431 beyond), bodies over twice
``MAX_REQUEST_BYTES`` refused by waitress before they are read (the app answers 413 JSON above
``MAX_REQUEST_BYTES`` itself), idle connections closed after ``CHANNEL_TIMEOUT_S``.

``python -m backend serve`` starts ``WORKERS`` of these (``python -m backend.web.wsgi``); each binds the
port with ``SO_REUSEPORT`` so the kernel spreads connections over them. SIGTERM/SIGINT: stop accepting, let
the requests in flight finish (at most ``PREDICT_DEADLINE`` + 5 s), then exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any

from backend.operations.logs import configure_logging
from backend.operations.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

CHANNEL_TIMEOUT_S = 120
"""Seconds an idle connection is kept."""


def listening_socket(settings: Settings) -> socket.socket:
    """The bound, listening socket on ``HOST``:``PORT`` (``SO_REUSEPORT`` when ``WORKERS`` > 1)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.workers > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(1024)
    return sock


def _busy(server: Any) -> bool:
    dispatcher = server.task_dispatcher
    if dispatcher.queue or dispatcher.active_count:
        return True
    return any(getattr(channel, "requests", None) for channel in list(server.active_channels.values()))


def run_web(settings: Settings) -> int:
    """Serve the app until SIGTERM/SIGINT (see the module docstring). Returns the exit code."""
    import waitress

    from backend.web.app import create_app

    app = create_app(settings)
    sock = listening_socket(settings)
    server: Any = waitress.create_server(
        app,
        sockets=[sock],
        threads=settings.threads,
        connection_limit=settings.max_connections,
        channel_timeout=CHANNEL_TIMEOUT_S,
        max_request_header_size=settings.max_header_bytes,
        max_request_body_size=2 * settings.max_request_bytes,
        clear_untrusted_proxy_headers=True,
        ident="cores",
    )
    grace = settings.predict_deadline + 5.0
    stopping = threading.Event()

    def drain_then_exit() -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _busy(server):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():  # the drain is over (or a second signal): stop now
            raise SystemExit(0)
        logger.info("signal %s: finishing the requests in flight, then stopping", signal.Signals(signum).name)
        stopping.set()
        server.accepting = False
        threading.Thread(target=drain_then_exit, name="cores-web-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("web process %d serving on http://%s:%d", os.getpid(), settings.host, settings.port)
    server.run()
    logger.info("web process %d stopped", os.getpid())
    return 0


def main() -> int:
    """``python -m backend.web.wsgi``: one web process with the environment's settings."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return run_web(settings)


if __name__ == "__main__":
    sys.exit(main())
