"""Fixtures for end-to-end tests against a real Label Studio (see ``tests/e2e/label_studio.py``).

The ``label_studio`` fixture starts one server per test session. When Label Studio is not
installed it FAILS (never skips): run ``bash scripts/setup_label_studio.sh`` first.
Environment: ``LABEL_STUDIO_BIN`` (another executable), ``LABEL_STUDIO_START_TIMEOUT`` (seconds, 180).

For the backend's end-to-end tests: ``image_http_server`` (a static image host on 127.0.0.1, session) and
``e2e_backend`` (the real backend, web + worker, on the tiny checkpoint and the tests' Redis, per module).
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import BrowserContext, sync_playwright

from tests.backend_server import BackendServer
from tests.e2e.browser import CHROMIUM, launch
from tests.e2e.label_studio import (
    DEFAULT_EXECUTABLE,
    SETUP_HINT,
    LabelStudioProcess,
    LabelStudioServer,
)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio on 127.0.0.1 (fresh SQLite data dir), shared by the whole session.

    Yields an object with ``url``, ``token`` (legacy API token), ``username``, ``password``,
    ``log_path``, ``data_dir``, ``headers``, ``api(method, path)`` and ``sdk()``.
    """
    executable = Path(os.environ.get("LABEL_STUDIO_BIN", str(DEFAULT_EXECUTABLE)))
    if not executable.exists():
        pytest.fail(f"Label Studio is not installed: {executable} is missing; {SETUP_HINT}", pytrace=False)
    process = LabelStudioProcess(
        workdir=tmp_path_factory.mktemp("label-studio"),
        executable=executable,
        start_timeout_s=float(os.environ.get("LABEL_STUDIO_START_TIMEOUT", "180")),
    )
    server = process.start()
    try:
        yield server
    finally:
        process.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Debian's Chromium (headless, fresh profile) through Playwright's bundled driver
    (``tests.e2e.browser.launch``)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup_browser.sh` (as root)", pytrace=False)
    with sync_playwright() as playwright:
        context = launch(playwright, tmp_path / "chromium-profile")
        try:
            yield context
        finally:
            context.close()


# --- fixtures for the backend end-to-end tests (tests/e2e/test_backend_e2e.py) ---------------------------


class ImageHttpServer:
    """A static file server on 127.0.0.1 (a thread) that records every path it was asked for.

    Stands in for an image host outside Label Studio: tasks whose image is ``http://127.0.0.1:<port>/x.png``
    make the backend's worker download it directly (which needs ``ALLOW_PRIVATE_NETWORKS=true``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-http", daemon=True)

    def start(self) -> ImageHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def url_for(self, name: str) -> str:
        """The URL of the file ``name`` under ``root``."""
        return f"{self.url}/{name}"

    def requested(self, name: str) -> int:
        """How many GET requests asked for ``/name`` so far."""
        with self._lock:
            return sum(1 for path in self.requests if path.split("?", 1)[0] == f"/{name}")


@pytest.fixture(scope="session")
def image_http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageHttpServer]:
    """A static HTTP server on 127.0.0.1 serving ``server.root`` (write image files there)."""
    server = ImageHttpServer(tmp_path_factory.mktemp("image-http")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def e2e_backend(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
    redis_url: str,
    label_studio: LabelStudioServer,
) -> Iterator[BackendServer]:
    """The real backend (``python -m backend serve`` + one ``python -m backend worker``) for one module.

    Tiny CoReS checkpoint, the tests' Redis database (flushed before and after: the worker must not
    outlive the module, because other tests flush and reuse that database), ``LABEL_STUDIO_URL`` naming the
    session's Label Studio (the secure defaults: no basic auth, so the backend puts the project's webhook
    secret on Label Studio's webhook itself; the token comes from Label Studio's ``/setup``), and
    ``ALLOW_PRIVATE_NETWORKS=true`` (set by ``BackendServer``) so that images on other loopback hosts can
    be fetched.
    """
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    try:
        with BackendServer(
            tmp_path_factory.mktemp("e2e-backend"),
            checkpoint=tiny_checkpoint,
            redis_url=redis_url,
            env={"LABEL_STUDIO_URL": label_studio.url},  # the token comes from Label Studio's /setup
        ) as server:
            yield server
    finally:
        conn.flushdb()
        conn.close()
