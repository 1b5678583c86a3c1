"""The web process (waitress) under slow clients: requests are read whole before a thread takes them, so
clients sending one byte a second hold no thread and ``/health`` keeps answering. Real sockets, the real
``python -m backend.web.wsgi`` process."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from backend.jobs.embedded import REPO_ROOT
from backend.operations.settings import Settings
from tests.backend.worker_subprocess import wait_for, worker_env
from tests.redis_server import free_tcp_port

pytestmark = pytest.mark.slow

SLOW_CLIENTS = 12


def test_health_answers_while_slow_clients_dribble(
    tmp_path: Path, redis_url: str, tiny_checkpoint: Path
) -> None:
    port = free_tcp_port()
    settings = Settings(
        checkpoint=str(tiny_checkpoint),
        redis_url=redis_url,
        model_dir=tmp_path / "models",
        host="127.0.0.1",
        port=port,
        threads=4,  # fewer threads than slow clients
    )
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen(
        [sys.executable, "-m", "backend.web.wsgi"],
        cwd=REPO_ROOT,
        env=worker_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()
    sockets: list[socket.socket] = []
    try:

        def up() -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            return False

        wait_for(up, 60, "the web process")
        request = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n{"
        ).encode()
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sockets.append(sock)

        def dribble() -> None:  # one byte per second per client, headers first
            for index in range(len(request) + 100):
                if stop.wait(1.0 if index > 3 else 0.0):
                    return
                for sock in sockets:
                    with contextlib.suppress(OSError):
                        sock.send(request[index : index + 1] if index < len(request) else b" ")

        threading.Thread(target=dribble, daemon=True).start()
        time.sleep(3)
        for _ in range(5):
            started = time.monotonic()
            answer = requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
            assert answer.status_code == 200
            assert answer.json()["status"] == "UP"
            assert time.monotonic() - started < 1.0  # Label Studio's health timeout
            time.sleep(0.5)
        assert web.poll() is None
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        web.terminate()
        code = web.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "web.log").read_text()
