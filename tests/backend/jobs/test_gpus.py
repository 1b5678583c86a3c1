"""``worker --gpus``: the device selection, each child's environment, and the supervisor running real
worker processes (on the CPU here: the children get ``CORES_DEVICE=cpu``) against a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis
from rq import Worker

from backend.jobs import gpus, queues
from backend.jobs.gpus import GpuSelectionError, GpuSupervisor, gpu_env, parse_gpus
from backend.jobs.worker import EXIT_BAD_MODEL
from backend.operations.settings import Settings
from tests.backend.worker_subprocess import job_status, wait_for, worker_env


@pytest.mark.parametrize(
    ("text", "visible", "expected"),
    [("all", 4, [0, 1, 2, 3]), ("0,1", 2, [0, 1]), (" 2 , 0 ", 3, [2, 0]), ("1", 2, [1])],
)
def test_parse_gpus(text: str, visible: int, expected: list[int]) -> None:
    assert parse_gpus(text, visible) == expected


@pytest.mark.parametrize(
    ("text", "visible", "message"),
    [
        ("all", 0, "no CUDA device is visible"),
        ("2", 2, "shows 2 GPUs"),
        ("0,0", 2, "named twice"),
        ("gpu0", 2, "expected 'all' or GPU indices"),
        ("-1", 2, "expected 'all'"),
        ("", 2, "expected 'all'"),
        ("0", 0, "shows no GPU"),
    ],
)
def test_parse_gpus_refuses(text: str, visible: int, message: str) -> None:
    with pytest.raises(GpuSelectionError, match=message):
        parse_gpus(text, visible)


def test_child_environment_maps_through_the_inherited_visible_devices() -> None:
    assert gpu_env(1, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "CUDA_VISIBLE_DEVICES": "1",
        "CORES_DEVICE": "cuda:0",
    }
    inherited = {"CUDA_VISIBLE_DEVICES": "4, 5", "CORES_DEVICE": "cuda:1"}
    assert gpu_env(1, inherited)["CUDA_VISIBLE_DEVICES"] == "5"
    assert gpu_env(0, inherited)["CORES_DEVICE"] == "cuda:0"


def test_cli_refuses_a_bad_selection_before_starting_anything() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run(
        [sys.executable, "-m", "backend", "worker", "--gpus", "0;1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "expected 'all' or GPU indices like 0,1" in done.stderr


def _live_workers(conn: redis.Redis) -> dict[str, int]:
    return {w.name: w.pid for w in Worker.all(connection=conn) if w.pid}


@pytest.mark.slow
def test_supervisor_runs_restarts_and_stops_one_worker_per_gpu(
    settings: Settings, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpus, "BACKOFF_START_S", 0.2)
    env = worker_env(settings, CUDA_VISIBLE_DEVICES="6,7")
    supervisor = GpuSupervisor([0, 1], name="box", queues=["interactive"], env=env, device="cpu")
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(supervisor.run(poll_s=0.05)), daemon=True)
    thread.start()
    try:
        wait_for(lambda: set(_live_workers(redis_conn)) == {"box-gpu0", "box-gpu1"}, 120, "both workers")
        # Two jobs that wait for one key: each idle worker takes one, then both answer.
        queue = queues.get_queue(redis_conn, queues.INTERACTIVE)
        jobs = [queue.enqueue("tests.backend.sample_jobs.visible_devices", "gpus-go", 60) for _ in range(2)]
        wait_for(
            lambda: all(job_status(redis_conn, j.id) == "started" for j in jobs), 60, "both jobs started"
        )
        redis_conn.set("gpus-go", "1")
        for job in jobs:
            wait_for(lambda job=job: job_status(redis_conn, job.id) == "finished", 60, "the job")
            job.refresh()
        seen = {job.worker_name: job.return_value() for job in jobs}
        assert seen == {
            "box-gpu0": {"CUDA_VISIBLE_DEVICES": "6", "CORES_DEVICE": "cpu"},
            "box-gpu1": {"CUDA_VISIBLE_DEVICES": "7", "CORES_DEVICE": "cpu"},
        }

        # A crashed child comes back under the same name, with a new process.
        old = supervisor.pids["box-gpu1"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: supervisor.pids.get("box-gpu1", old) != old, 90, "the restart")
        assert supervisor.restarts == {"box-gpu0": 0, "box-gpu1": 1}
        wait_for(
            lambda: _live_workers(redis_conn).get("box-gpu1") == supervisor.pids["box-gpu1"],
            120,
            "re-register",
        )
    finally:
        supervisor.stop()
        thread.join(120)
    assert outcome == [0]
    assert not thread.is_alive()


@pytest.mark.slow
def test_a_worker_that_cannot_load_its_model_is_not_restarted(settings: Settings, tmp_path: Path) -> None:
    env = worker_env(settings.with_changes(checkpoint=str(tmp_path / "no-such-checkpoint")))
    supervisor = GpuSupervisor([0], name="bad", queues=["interactive"], env=env, device="cpu")
    assert supervisor.run(poll_s=0.05) == EXIT_BAD_MODEL
    assert supervisor.restarts == {"bad-gpu0": 0}
