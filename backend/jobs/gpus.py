"""``python -m backend worker --gpus all|0,1,...``: one worker process per GPU on this machine.

The supervisor (this module) never touches a GPU itself. Each child is a plain ``python -m backend
worker`` that sees exactly one device: ``CUDA_VISIBLE_DEVICES`` holds that GPU's index (mapped through
the supervisor's own ``CUDA_VISIBLE_DEVICES`` when one is set, so ``CUDA_VISIBLE_DEVICES=4,5 ... --gpus
all`` runs workers on GPUs 4 and 5) and ``CORES_DEVICE=cuda:0``. Children are named
``<name>-gpu<N>`` so ``/health`` and ``rq info`` tell them apart.

- SIGTERM / SIGINT to the supervisor goes to every child (each finishes its current job, then exits).
- A child that dies (crash, OOM kill) is restarted after a backoff (1 s, doubling to 60 s; reset after a
  child ran 5 minutes). Its registration in Redis is removed first (a killed worker cannot say goodbye,
  and rq refuses a second worker under a name still registered); its job, if any, is left to rq's
  abandoned-job handling as for any killed worker.
- A child that exits because its model cannot be loaded or Redis is unreachable at start is not
  restarted: the same cause would kill it again; the supervisor logs why and, once no child is left,
  exits with that child's code.
- With ``--burst`` every child exits when the queues are empty and nothing is restarted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

import redis
from rq import Worker

from backend.jobs.queues import SERIALIZER
from backend.jobs.worker import EXIT_BAD_MODEL, EXIT_NO_REDIS
from backend.operations.redis_client import connect
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 300.0
"""A child that ran this long before dying starts the backoff from the beginning again."""
EXIT_USAGE = 2
FATAL_EXITS = frozenset({EXIT_BAD_MODEL, EXIT_NO_REDIS, EXIT_USAGE})
"""Exit codes that restarting would only repeat."""


class GpuSelectionError(ValueError):
    """``--gpus`` names no device, a device twice, or a device this machine does not have."""


def parse_gpus(text: str, visible: int) -> list[int]:
    """Indices ``--gpus`` selects among the ``visible`` devices: ``all`` or a comma list (``0,1``).

    Raises:
        GpuSelectionError: with what was wrong, e.g. ``--gpus 3: this machine shows 2 GPUs (0-1)``.
    """
    text = text.strip()
    if text == "all":
        if visible < 1:
            raise GpuSelectionError(
                "--gpus all: no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            )
        return list(range(visible))
    chosen: list[int] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit():
            raise GpuSelectionError(
                f"--gpus {text!r}: expected 'all' or GPU indices like 0,1 (found {piece!r})"
            )
        index = int(piece)
        if index in chosen:
            raise GpuSelectionError(f"--gpus {text!r}: GPU {index} is named twice")
        if index >= visible:
            shown = f"{visible} GPUs (0-{visible - 1})" if visible else "no GPU"
            raise GpuSelectionError(f"--gpus {text!r}: this machine shows {shown}")
        chosen.append(index)
    if not chosen:
        raise GpuSelectionError("--gpus: name at least one GPU")
    return chosen


def visible_gpu_count() -> int:
    """How many CUDA devices this process can see (torch, which reads the driver without a context)."""
    import torch

    return int(torch.cuda.device_count())


def gpu_env(index: int, base: Mapping[str, str], device: str = "cuda:0") -> dict[str, str]:
    """The environment of the child for GPU ``index``: ``base`` with ``CUDA_VISIBLE_DEVICES`` naming that
    one physical device and ``CORES_DEVICE`` set to ``device``."""
    env = dict(base)
    inherited = [p.strip() for p in base.get("CUDA_VISIBLE_DEVICES", "").split(",") if p.strip()]
    physical = inherited[index] if index < len(inherited) else str(index)
    env["CUDA_VISIBLE_DEVICES"] = physical
    env["CORES_DEVICE"] = device
    return env


def child_command(name: str, queues: Sequence[str], burst: bool) -> list[str]:
    """``python -m backend worker`` for one GPU."""
    command = [sys.executable, "-m", "backend", "worker", "--name", name, "--queues", *queues]
    return [*command, "--burst"] if burst else command


@dataclass
class _Child:
    index: int
    name: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = BACKOFF_START_S
    restart_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0


class GpuSupervisor:
    """Start, watch and stop one worker per GPU (see the module docstring)."""

    def __init__(
        self,
        gpus: Sequence[int],
        *,
        name: str,
        queues: Sequence[str],
        burst: bool = False,
        env: Mapping[str, str] | None = None,
        device: str = "cuda:0",
    ) -> None:
        self._children = [_Child(index, f"{name}-gpu{index}") for index in gpus]
        self._queues = list(queues)
        self._burst = burst
        self._env = dict(os.environ if env is None else env)
        self._device = device
        self._stopping = False

    @property
    def pids(self) -> dict[str, int]:
        """Running children's pids by worker name."""
        return {
            c.name: c.process.pid
            for c in self._children
            if c.process is not None and c.process.poll() is None
        }

    @property
    def restarts(self) -> dict[str, int]:
        return {c.name: c.restarts for c in self._children}

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Pass ``signum`` to every running child and restart none."""
        self._stopping = True
        for child in self._children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signum)

    def _start(self, child: _Child) -> None:
        env = gpu_env(child.index, self._env, self._device)
        child.process = subprocess.Popen(child_command(child.name, self._queues, self._burst), env=env)
        child.started = time.monotonic()
        child.restart_at = None
        logger.info(
            "started worker %s (pid %d) on CUDA_VISIBLE_DEVICES=%s",
            child.name,
            child.process.pid,
            env["CUDA_VISIBLE_DEVICES"],
        )

    def _forget(self, name: str, pid: int) -> None:
        """Remove the dead worker ``name``'s registration, if it is still the one of process ``pid``."""
        try:
            connection = connect(Settings.from_env(self._env))
            worker = Worker.find_by_key(
                Worker.redis_worker_namespace_prefix + name, connection, serializer=SERIALIZER
            )
            if worker is not None and worker.pid == pid:
                worker.register_death()
                logger.info("removed the registration of dead worker %s (pid %d)", name, pid)
        except (redis.exceptions.RedisError, OSError, ValueError) as exc:
            logger.warning("could not remove the registration of dead worker %s: %s", name, exc)

    def _reap(self, child: _Child, code: int) -> None:
        now = time.monotonic()
        pid = child.process.pid if child.process is not None else -1
        child.process = None
        if self._stopping or self._burst or code == 0:
            child.exit_code = code
            logger.info("worker %s exited with code %d", child.name, code)
            return
        if code in FATAL_EXITS:
            child.exit_code = code
            logger.error(
                "worker %s exited with code %d (model or Redis unusable); not restarting", child.name, code
            )
            return
        if now - child.started >= HEALTHY_AFTER_S:
            child.backoff_s = BACKOFF_START_S
        child.restart_at = now + child.backoff_s
        self._forget(child.name, pid)
        logger.error("worker %s died (exit code %d); restarting in %.0f s", child.name, code, child.backoff_s)
        child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)

    def run(self, poll_s: float = 0.2) -> int:
        """Start every child, keep them running until stopped or all have exited; the worst exit code."""
        for child in self._children:
            self._start(child)
        while True:
            active = False
            for child in self._children:
                if child.process is not None:
                    code = child.process.poll()
                    if code is None:
                        active = True
                        continue
                    self._reap(child, code)
                if child.restart_at is not None:
                    active = True
                    if self._stopping:
                        child.restart_at, child.exit_code = None, 0
                    elif time.monotonic() >= child.restart_at:
                        child.restarts += 1
                        self._start(child)
            if not active:
                codes = [c.exit_code or 0 for c in self._children]
                return max(codes, key=abs)
            time.sleep(poll_s)


def run_gpu_workers(
    gpus_text: str, *, name: str | None, queues: Sequence[str], burst: bool, visible: int | None = None
) -> int:
    """The ``--gpus`` command: parse the selection, then supervise one worker per GPU until stopped."""
    try:
        gpus = parse_gpus(gpus_text, visible_gpu_count() if visible is None else visible)
    except GpuSelectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    supervisor = GpuSupervisor(gpus, name=name or os.uname().nodename, queues=queues, burst=burst)

    def forward(signum: int, _frame: FrameType | None) -> None:
        logger.info("supervisor got signal %d: stopping %d workers", signum, len(gpus))
        supervisor.stop(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    logger.info("running %d workers, one per GPU: %s", len(gpus), ", ".join(map(str, gpus)))
    return supervisor.run()
