"""Start and stop a real Label Studio server for end-to-end tests.

Label Studio is installed in its own virtualenv (``.venv-ls``, made by
``scripts/setup_label_studio.sh``) because it pins its own Django, redis, rq and
label-studio-sdk. The server runs on 127.0.0.1 with a free port, a temporary data directory
(SQLite), a fixed admin user and a legacy API token, with the settings that let it talk to a
backend and a webhook on loopback (``ML_BLOCK_LOCAL_IP=false``, ``SSRF_PROTECTION_ENABLED=false``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXECUTABLE = REPO_ROOT / ".venv-ls" / "bin" / "label-studio"
SETUP_HINT = "run `bash scripts/setup_label_studio.sh` (installs label-studio into .venv-ls, ~1 GB, ~80 s)"

# Variables of the test process that must not leak into Label Studio's own Python and Django.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "DJANGO_DB")


class LabelStudioNotInstalledError(RuntimeError):
    """``.venv-ls/bin/label-studio`` (or ``LABEL_STUDIO_BIN``) does not exist."""


class LabelStudioStartError(RuntimeError):
    """Label Studio exited or did not answer ``GET /health`` in time; the message holds its log tail."""


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, chars: int = 4000) -> str:
    """Last ``chars`` characters of the file at ``path``, or a note when it cannot be read."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


@dataclass(frozen=True)
class LabelStudioServer:
    """A running Label Studio: where it is and how to log in.

    ``token`` is the admin's legacy API token (40 hex digits), sent as ``Authorization: Token <token>``.
    """

    url: str
    token: str
    username: str
    password: str
    log_path: Path
    data_dir: Path

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate as the admin user."""
        return {"Authorization": f"Token {self.token}"}

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the REST API: ``api("GET", "/api/version")``; raises for HTTP errors."""
        response = requests.request(
            method, f"{self.url}{path}", headers=self.headers, timeout=kwargs.pop("timeout", 30), **kwargs
        )
        response.raise_for_status()
        return response

    def sdk(self) -> LabelStudio:
        """A ``label_studio_sdk.LabelStudio`` client logged in with the admin token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token)


@dataclass
class LabelStudioProcess:
    """Owns one ``label-studio start`` process; ``start()`` returns a :class:`LabelStudioServer`.

    The process gets its own session (process group) so that ``stop()`` ends it and every child.
    """

    workdir: Path
    executable: Path = DEFAULT_EXECUTABLE
    start_timeout_s: float = 180.0
    username: str = "e2e@example.com"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    token: str = field(default_factory=lambda: secrets.token_hex(20))
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / "label-studio.log"

    def environment(self, data_dir: Path) -> dict[str, str]:
        """The environment Label Studio runs with (the reference settings for tests on loopback)."""
        env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED_ENV}
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
        )
        return env

    def command(self, port: int) -> list[str]:
        return [
            str(self.executable),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--host",
            f"http://127.0.0.1:{port}",
            "--port",
            str(port),
            "--username",
            self.username,
            f"--password={self.password}",  # a random password may start with "-"
            "--user-token",
            self.token,
            "--enable-legacy-api-token",
        ]

    def start(self) -> LabelStudioServer:
        """Start Label Studio and wait until ``GET /health`` answers 200.

        Raises:
            LabelStudioNotInstalledError: the executable is missing.
            LabelStudioStartError: the process exited or stayed unhealthy for ``start_timeout_s``.
        """
        if not self.executable.exists():
            raise LabelStudioNotInstalledError(f"{self.executable} not found: {SETUP_HINT}")
        data_dir = self.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_tcp_port()
        url = f"http://127.0.0.1:{port}"
        logger.info("starting Label Studio on %s (data %s, log %s)", url, data_dir, self.log_path)
        began = time.monotonic()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(port),
                cwd=self.workdir,
                env=self.environment(data_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_healthy(url, began + self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        logger.info("Label Studio up on %s after %.1f s", url, time.monotonic() - began)
        return LabelStudioServer(
            url=url,
            token=self.token,
            username=self.username,
            password=self.password,
            log_path=self.log_path,
            data_dir=data_dir,
        )

    def _wait_healthy(self, url: str, deadline: float) -> None:
        assert self._process is not None
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise LabelStudioStartError(
                    f"Label Studio exited with code {code} before it was healthy; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                response = requests.get(f"{url}/health", timeout=2)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last_error = type(exc).__name__
            time.sleep(0.5)
        raise LabelStudioStartError(
            f"Label Studio did not answer GET {url}/health within {self.start_timeout_s:.0f} s "
            f"(last: {last_error}); log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """End the process group: SIGTERM, then SIGKILL after ``timeout_s``. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("Label Studio ignored SIGTERM for %.0f s; killing it", timeout_s)
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Children (if any) share the group; make sure none outlives the leader.
        _signal_group(process.pid, signal.SIGKILL)
        logger.info("Label Studio stopped (exit code %s)", process.returncode)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
