"""A Redis for the tests: an existing server when one answers, else a throwaway ``redis-server``.

Tests use their own database index (13 unless ``TEST_REDIS_DB`` says otherwise) and flush it
before and after each test, so a shared Redis (the one preinstalled on 127.0.0.1:6379, or one
named by ``REDIS_URL``) keeps its other databases untouched.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import redis

logger = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379"
DEFAULT_TEST_DB = 13


class RedisServerError(RuntimeError):
    """A throwaway ``redis-server`` could not be started."""


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def with_db(url: str, db: int) -> str:
    """Return ``url`` with its database index replaced by ``db`` (``redis://h:p`` -> ``redis://h:p/db``)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def is_reachable(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis at ``url`` answers PING within ``timeout_s`` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` subprocess on a free loopback port that keeps nothing on disk.

    Use as a context manager; ``url`` is ``redis://127.0.0.1:<port>`` (no database index).
    """

    def __init__(
        self, workdir: Path, executable: str = "redis-server", start_timeout_s: float = 10.0, port: int = 0
    ):
        """``port`` 0: a free one, chosen at ``start``; a server restarted after ``stop`` keeps its port."""
        self.workdir = workdir
        self.executable = executable
        self.start_timeout_s = start_timeout_s
        self.port = port
        self.log_path = workdir / "redis-server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Start the server and wait until it answers PING; return its URL.

        Raises:
            RedisServerError: ``redis-server`` is not installed, exits, or does not answer in time.
        """
        binary = shutil.which(self.executable)
        if binary is None:
            raise RedisServerError(
                f"no Redis answers and {self.executable!r} is not on PATH: install redis-server "
                "(Debian: apt-get install redis-server) or set REDIS_URL"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_tcp_port()
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.workdir)]
        logger.info("starting %s", " ".join(cmd))
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with code {self._process.returncode}: {self._log_tail()}"
                )
            if is_reachable(self.url, timeout_s=0.5):
                logger.info("redis-server up on %s", self.url)
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(
            f"redis-server did not answer within {self.start_timeout_s} s: {self._log_tail()}"
        )

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s; ``kill``: SIGKILL at once, like a crash). Safe
        to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
            process.wait(timeout=5)
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        logger.info("redis-server on port %d stopped", self.port)

    def _log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
