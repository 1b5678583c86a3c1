"""Asking for a fine-tune: the training job's JSON request, and enqueueing it at most once per project.

The "Start training" button (``START_TRAINING`` webhook) and ``python -m backend train`` both call
``request_training``. It enqueues ``backend.training.job.train_model`` (by dotted path: the caller never
imports torch) on the ``train`` queue with ``TRAIN_TIMEOUT`` as the job timeout, unless a training job for the
same project (or, without a project, for all projects) is still queued or running: then it answers that job's
id. The check and the enqueue happen under a Redis lock (``cores:train:lock:<scope>``), so two clicks, two
webhooks or a click and a CLI call at the same moment enqueue one job. ``cores:train:active:<scope>`` holds
the id of the last job enqueued for the scope.

The request (``TrainRequest.to_json``)::

    {"project": 3, "min_correction": null, "since": null, "until": null, "steps": null, "epochs": null,
     "lr": null, "val_fraction": null, "min_samples": null, "seed": 0, "source": "webhook"}

``null`` fields take the defaults: ``TRAIN_STEPS`` (else 3 epochs), ``MIN_TRAIN_SAMPLES``, the fine-tuner's
learning rate and a 10 % validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import redis
from rq.job import JobStatus

from backend.jobs import queues
from backend.operations.ids import MAX_ID
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)

TRAIN_JOB = "backend.training.job.train_model"
"""Dotted path of the training job."""
ACTIVE_KEY = "cores:train:active:"
LOCK_KEY = "cores:train:lock:"
_LOCK_TIMEOUT_S = 30
_LOCK_WAIT_S = 10
_WAITING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
SOURCES = ("webhook", "cli", "api")


class TrainRequestError(ValueError):
    """A training request with a field of the wrong type or out of range; the message names it."""


@dataclass(frozen=True)
class TrainRequest:
    """What to train on and how (None: the default; see the module docstring).

    Attributes:
        project: Label Studio project whose corrections are used; None: every project's.
        min_correction: only annotations whose final level changed at least this much (1 - IoU).
        since, until: revision time window (ISO 8601; ``until`` exclusive).
        steps: optimizer steps; epochs: passes over the data when ``steps`` is None.
        lr: peak learning rate; val_fraction: share of samples held out for before/after scores.
        min_samples: refuse to train with fewer exported samples (overrides ``MIN_TRAIN_SAMPLES``).
        seed: seeds the split, the sample order and LoRA's initialisation.
        source: who asked: ``webhook``, ``cli`` or ``api``.
    """

    project: int | None = None
    min_correction: float | None = None
    since: str | None = None
    until: str | None = None
    steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    val_fraction: float | None = None
    min_samples: int | None = None
    seed: int = 0
    source: str = "api"

    def __post_init__(self) -> None:
        checks = {
            "project must be an integer id (0..2**63-1)": _optional(self.project, int)
            and (self.project is None or 0 <= self.project <= MAX_ID),
            "min_correction must be a number in [0, 1]": _optional(self.min_correction, float)
            and (self.min_correction is None or 0.0 <= self.min_correction <= 1.0),
            "since must be an ISO time string": _optional(self.since, str),
            "until must be an ISO time string": _optional(self.until, str),
            "steps must be an integer >= 1": _optional(self.steps, int) and (self.steps or 1) >= 1,
            "epochs must be a number > 0": _optional(self.epochs, float) and (self.epochs or 1) > 0,
            "lr must be a number > 0": _optional(self.lr, float) and (self.lr or 1) > 0,
            "val_fraction must be a number in [0, 1)": _optional(self.val_fraction, float)
            and (self.val_fraction is None or 0.0 <= self.val_fraction < 1.0),
            "min_samples must be an integer >= 1": _optional(self.min_samples, int)
            and (self.min_samples or 1) >= 1,
            "seed must be an integer >= 0": _optional(self.seed, int) and self.seed >= 0,
            f"source must be one of {SOURCES}": self.source in SOURCES,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise TrainRequestError("training request: " + "; ".join(failed))

    @property
    def scope(self) -> str:
        """What a training job is deduplicated on: the project id, or ``all``."""
        return "all" if self.project is None else str(self.project)

    def to_json(self) -> dict[str, Any]:
        """The JSON-safe dict passed to ``backend.training.job.train_model``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> TrainRequest:
        """Parse a request dict (unknown keys are refused).

        Raises:
            TrainRequestError: not an object, an unknown key, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise TrainRequestError(
                f"expected the training request as a JSON object, got {type(data).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainRequestError(f"training request: unknown field(s) {unknown}; expected {sorted(known)}")
        return cls(**dict(data))


def describe_scope(request: TrainRequest) -> str:
    """``all projects`` or ``project N``: what a training request trains on, for messages."""
    return "all projects" if request.project is None else f"project {request.project}"


def _optional(value: Any, kind: type) -> bool:
    """``value`` is None or of ``kind`` (ints count as floats; bools count as neither)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


@dataclass(frozen=True)
class TrainEnqueued:
    """The training job that serves a request: ``created`` is False when an existing one was reused."""

    job_id: str
    created: bool


def request_training(connection: redis.Redis, settings: Settings, request: TrainRequest) -> TrainEnqueued:
    """Enqueue one training job for ``request.scope`` unless one is already queued or running.

    Raises:
        queues.QueueFull: the train queue holds ``MAX_QUEUED`` jobs.
        queues.QueueUnavailableError: Redis is unreachable, or another caller held the lock too long.
    """
    scope = request.scope
    with queues.redis_errors(connection):
        lock = connection.lock(f"{LOCK_KEY}{scope}", timeout=_LOCK_TIMEOUT_S, blocking_timeout=_LOCK_WAIT_S)
        if not lock.acquire():
            raise queues.QueueUnavailableError(
                f"another training request for {scope} held the lock for over {_LOCK_WAIT_S} s; retry"
            )
        try:
            raw = connection.get(f"{ACTIVE_KEY}{scope}")
            if raw:
                existing = queues.fetch_job(connection, raw.decode() if isinstance(raw, bytes) else str(raw))
                if existing is not None and existing.get_status(refresh=True) in _WAITING:
                    logger.info("training for %s already has job %s: not enqueued again", scope, existing.id)
                    return TrainEnqueued(existing.id, False)
            job = queues.enqueue(
                connection,
                settings,
                queues.TRAIN,
                TRAIN_JOB,
                request.to_json(),
                job_timeout=settings.train_timeout,
                description=f"fine-tune on the corrections of {describe_scope(request)}",
            )
            connection.set(f"{ACTIVE_KEY}{scope}", job.id, ex=settings.train_timeout + settings.failure_ttl)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                logger.warning("the training lock for %s expired before it was released", scope)
    logger.info("training for %s enqueued as job %s (%s)", scope, job.id, request.source)
    return TrainEnqueued(job.id, True)
