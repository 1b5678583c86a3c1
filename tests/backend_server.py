"""Run the real backend (``python -m backend serve``, gunicorn + worker) as subprocesses, for tests.

For end-to-end tests with a real Label Studio::

    from tests.backend_server import BackendServer

    with BackendServer(tmp_path, checkpoint=tiny_checkpoint, redis_url=redis_url,
                       env={"LABEL_STUDIO_URL": label_studio.url,
                            "LABEL_STUDIO_API_KEY": label_studio.token}) as backend:
        client.ml.create(project=project.id, url=backend.url, is_interactive=True)

``redis_url=None`` runs the one-command mode (embedded Redis and worker started by ``serve``); with a
``redis_url`` ``serve`` runs the web only and this helper starts one ``python -m backend worker`` beside
it. ``start`` returns once ``/health`` answers and a worker has registered (the model is loaded), so the
first prediction does not race the model load. The ``cores_backend`` fixture below wraps the common case;
import it into a conftest (``from tests.backend_server import cores_backend``) to use it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests

from tests.redis_server import free_tcp_port

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
_OWN_VARIABLES = ("CORES_", "REDIS_URL", "MODEL_DIR", "MODEL_VERSION", "LABEL_STUDIO_", "BASIC_AUTH_", "PORT")


class BackendStartError(RuntimeError):
    """The backend exited or did not become ready in time; the message holds its log tail."""


class BackendServer:
    """``python -m backend serve`` on a free loopback port (plus a worker when ``redis_url`` is given).

    Attributes:
        url: ``http://127.0.0.1:<port>`` once started.
        log_path: combined output of serve (and its children) and of the separate worker.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        checkpoint: Path | None,
        redis_url: str | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.workdir = workdir
        self.checkpoint = checkpoint
        self.redis_url = redis_url
        self.extra_env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "backend.log"
        self._processes: list[subprocess.Popen[bytes]] = []

    def environment(self) -> dict[str, str]:
        """The environment the backend processes get."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARIABLES)}
        env.update(
            {
                "MODEL_DIR": str(self.workdir / "models"),
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WORKERS": "1",
                "THREADS": "8",
                "ALLOW_PRIVATE_NETWORKS": "true",
                "LOG_LEVEL": "INFO",
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        if self.checkpoint is not None:
            env["CORES_CHECKPOINT"] = str(self.checkpoint)
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env

    def start(self) -> BackendServer:
        """Start and wait until ready.

        Raises:
            BackendStartError: a process exited, or not ready within ``start_timeout_s``.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        log = self.log_path.open("ab")
        commands = [[sys.executable, "-m", "backend", "serve"]]
        if self.redis_url is not None:
            commands.append([sys.executable, "-m", "backend", "worker"])
        for cmd in commands:
            self._processes.append(
                subprocess.Popen(
                    cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    self.stop()
                    raise BackendStartError(
                        f"{process.args!r} exited with {process.returncode}: {self.log_tail()}"
                    )
            if self._ready():
                logger.info("backend ready at %s", self.url)
                return self
            time.sleep(0.5)
        self.stop()
        raise BackendStartError(f"backend not ready within {self.start_timeout_s} s: {self.log_tail()}")

    def _ready(self) -> bool:
        auth = None
        if "BASIC_AUTH_USER" in self.extra_env:
            auth = (self.extra_env["BASIC_AUTH_USER"], self.extra_env.get("BASIC_AUTH_PASS", ""))
        try:
            if requests.get(f"{self.url}/health", timeout=1).status_code != 200:
                return False
            metrics = requests.get(f"{self.url}/metrics", timeout=2, auth=auth).text
        except requests.RequestException:
            return False
        found = re.search(r"^cores_workers (\d+)", metrics, re.MULTILINE)
        return found is not None and int(found.group(1)) >= 1

    def stop(self) -> list[int | None]:
        """SIGTERM every process (serve stops its own children), then SIGKILL after 30 s; exit codes."""
        codes: list[int | None] = []
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            codes.append(process.returncode)
        self._processes.clear()
        return codes

    def log_tail(self, chars: int = 4000) -> str:
        """The last ``chars`` characters of the log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"

    def __enter__(self) -> BackendServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def correction_records(backend: BackendServer, project: int) -> list[dict[str, Any]]:
    """The correction log's records of ``project`` (``python -m backend corrections list --json``), or []
    when the backend keeps no correction store (``MODEL_DIR/corrections.sqlite3``)."""
    store = backend.workdir / "models" / "corrections.sqlite3"
    if not store.exists():
        return []
    command = [sys.executable, "-m", "backend", "corrections", "list", "--db", str(store)]
    listed = subprocess.run(
        [*command, "--project", str(project), "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip().startswith("{")]


def wait_for_record(
    backend: BackendServer, project: int, annotation: int, timeout_s: float
) -> dict[str, Any]:
    """The newest correction record of ``annotation`` once the backend has stored it (polled every half
    second); AssertionError with the backend's log tail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in correction_records(backend, project) if r["annotation"] == annotation]
        if records:
            return records[-1]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for the correction store to hold annotation "
                f"{annotation} (backend log: {backend.log_tail(1500)})"
            )
        time.sleep(0.5)


@pytest.fixture
def cores_backend(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, redis_url: str
) -> Iterator[BackendServer]:
    """The backend (gunicorn web + one worker) on the tiny checkpoint and the tests' Redis database."""
    with BackendServer(
        tmp_path_factory.mktemp("backend"), checkpoint=tiny_checkpoint, redis_url=redis_url
    ) as server:
        yield server
