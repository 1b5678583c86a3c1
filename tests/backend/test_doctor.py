"""``python -m backend doctor`` (``backend.doctor``): every check says OK on a good setup and FAIL, with the
reason, on a broken one. Real Redis, a real registered rq worker, the tiny checkpoint, and a small HTTP
server that answers Label Studio's ``/api/version`` and ``/api/current-user/whoami`` like Label Studio."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
import torch
from huggingface_hub import try_to_load_from_cache
from rq import Worker

from backend.doctor import Check, check_checkpoint, check_gpu, doctor, run_checks
from backend.jobs import queues
from backend.jobs.embedded import REPO_ROOT
from backend.operations.settings import Settings
from backend.versions.checkpoint_files import cached_snapshot, hub_cache_dir
from tests.redis_server import free_tcp_port

TOKEN = "0123456789abcdef0123456789abcdef01234567"


class VersionOnlyLabelStudio:
    """Answers ``GET /api/version`` (no auth, like Label Studio) and ``GET /api/current-user/whoami``
    (200 for ``Token <TOKEN>``, else 401 ``Invalid token.``)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/api/version":
                    self._answer(200, {"release": "1.23.2"})
                elif self.path == "/api/current-user/whoami":
                    if self.headers.get("Authorization") == f"Token {TOKEN}":
                        self._answer(200, {"id": 1, "email": "admin@example.com"})
                    else:
                        self._answer(401, {"detail": "Invalid token."})
                else:
                    self._answer(404, {"detail": "Not found."})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> VersionOnlyLabelStudio:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def label_studio() -> Iterator[VersionOnlyLabelStudio]:
    with VersionOnlyLabelStudio() as server:
        yield server


@pytest.fixture
def good(
    tiny_checkpoint: Path, tmp_path: Path, redis_url: str, label_studio: VersionOnlyLabelStudio
) -> Settings:
    return Settings(
        checkpoint=str(tiny_checkpoint),
        device="cpu",
        redis_url=redis_url,
        model_dir=tmp_path / "models",
        label_studio_url=label_studio.url,
        label_studio_api_key=TOKEN,
    )


@pytest.fixture
def registered_worker(redis_conn: redis.Redis) -> Iterator[Worker]:
    """A real rq worker registration (as ``python -m backend worker`` leaves once its model loaded)."""
    worker = Worker(
        [queues.get_queue(redis_conn, name) for name in queues.QUEUE_NAMES],
        connection=redis_conn,
        name="doctor-test-worker",
        serializer=queues.SERIALIZER,
    )
    worker.register_birth()
    yield worker
    worker.register_death()


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_a_good_setup_passes_every_check(
    good: Settings, redis_conn: redis.Redis, registered_worker: Worker
) -> None:
    queues.enqueue(redis_conn, good, queues.BULK, "time.sleep", 0)
    out = io.StringIO()
    assert doctor(good, out=out) == 0
    lines = out.getvalue().splitlines()
    assert all(line.startswith("OK ") for line in lines[:-1]), lines
    found = _by_name(run_checks(good))
    assert list(found) == [
        "redis",
        "queues",
        "workers",
        "label studio",
        "label studio credentials",
        "checkpoint",
        "vision tower",
        "gpu",
        "model dir",
        "disk",
    ]
    assert "interactive 0 waiting" in found["queues"].detail
    assert "bulk 1 waiting" in found["queues"].detail
    assert "doctor-test-worker" in found["workers"].detail
    assert "1.23.2" in found["label studio"].detail
    assert "admin@example.com" in found["label studio credentials"].detail
    assert lines[-1] == "doctor: 10 OK"


def test_a_broken_setup_fails_each_check_with_the_reason(good: Settings, tmp_path: Path) -> None:
    broken_checkpoint = tmp_path / "broken-checkpoint"
    shutil.copytree(good.checkpoint or "", broken_checkpoint)
    index = json.loads((broken_checkpoint / "pytorch_model.bin.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (broken_checkpoint / shard).unlink()
    (tmp_path / "a-file").write_text("not a folder")
    closed = free_tcp_port()
    broken = good.with_changes(
        redis_url=f"redis://127.0.0.1:{closed}/0",
        label_studio_url=f"http://127.0.0.1:{closed}",
        checkpoint=str(broken_checkpoint),
        model_dir=tmp_path / "a-file" / "models",
    )
    found = _by_name(run_checks(broken))
    found["checkpoint"] = check_checkpoint(broken.with_changes(model_dir=good.model_dir))[0]
    assert found["redis"].status == "FAIL"
    assert "does not answer" in found["redis"].detail
    assert found["queues"].status == found["workers"].status == "SKIP"
    assert found["label studio"].status == "FAIL"
    assert "cannot reach" in found["label studio"].detail
    assert found["checkpoint"].status == "FAIL"
    assert f"missing shards ['{shard}']" in found["checkpoint"].detail
    assert found["model dir"].status == "FAIL"
    assert "not writable" in found["model dir"].detail
    out = io.StringIO()
    assert doctor(broken, out=out) == 1
    assert out.getvalue().splitlines()[-1].endswith(": FAILED")


def test_no_worker_and_a_rejected_token_fail(good: Settings, redis_conn: redis.Redis) -> None:
    found = _by_name(run_checks(good.with_changes(label_studio_api_key="wrong-token")))
    assert found["redis"].status == "OK"
    assert found["workers"].status == "FAIL"
    assert "no worker is registered" in found["workers"].detail
    assert found["label studio"].status == "OK"
    assert found["label studio credentials"].status == "FAIL"
    assert "rejected (HTTP 401)" in found["label studio credentials"].detail


def test_a_hub_id_is_looked_up_in_the_hugging_face_cache(
    good: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    settings = good.with_changes(checkpoint="example-org/cores-tiny")
    [missing] = check_checkpoint(settings)
    assert missing.status == "WARN"
    assert "downloads it at start" in missing.detail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_checkpoint(settings)[0].status == "FAIL"

    repo = cache / "models--example-org--cores-tiny"
    shutil.copytree(good.checkpoint or "", repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    checkpoint, tower = check_checkpoint(settings)
    assert checkpoint.status == tower.status == "OK"
    assert "cores-cores-tiny" in checkpoint.detail  # the version named after the hub id
    # the doctor finds the snapshot where huggingface_hub itself does
    found = try_to_load_from_cache("example-org/cores-tiny", "config.json", cache_dir=cache)
    assert isinstance(found, str)
    assert cached_snapshot("example-org/cores-tiny", hub_cache_dir()) == Path(found).parent


@pytest.mark.parametrize(
    "variables",
    [{}, {"XDG_CACHE_HOME": "xdg"}, {"XDG_CACHE_HOME": "xdg", "HF_HOME": "home"}, {"HF_HUB_CACHE": "cache"}],
)
def test_the_hub_cache_is_where_huggingface_hub_looks(
    variables: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, folder in variables.items():
        monkeypatch.setenv(name, str(tmp_path / folder))
    theirs = subprocess.run(
        [sys.executable, "-c", "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert hub_cache_dir() == Path(theirs)


def test_the_gpu_check_agrees_with_torch(good: Settings) -> None:
    wanted = check_gpu(good.with_changes(device="cuda:0"))
    assert wanted.status == ("OK" if torch.cuda.is_available() else "FAIL")
    auto = check_gpu(good.with_changes(device=None))
    assert auto.status == ("OK" if torch.cuda.is_available() else "WARN")
    assert check_gpu(good).status == "OK"  # device cpu: nothing to check


def test_the_command_line_prints_the_checks_and_exits_non_zero_on_failure(good: Settings) -> None:
    env = {**good.to_env(), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    env["LABEL_STUDIO_API_KEY"] = "wrong-token"
    done = subprocess.run(
        [sys.executable, "-m", "backend", "doctor"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "FAIL label studio credentials: LABEL_STUDIO_API_KEY (legacy token) was rejected" in done.stdout
    assert "OK   checkpoint:" in done.stdout
    assert done.stdout.splitlines()[-1].endswith(": FAILED")
