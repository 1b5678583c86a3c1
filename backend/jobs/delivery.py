"""Who delivers a batch job's predictions to Label Studio: the web's /predict answer, or the job itself.

Label Studio's batch /predict call ("Retrieve predictions") waits at most 100 s, and it stores whatever the
answer holds. A batch can take longer than that, so the web waits until ``PREDICT_DEADLINE`` and then
answers with the predictions that are done; the job writes the others to Label Studio through its API
(``predictions.create``) once it finishes. Every prediction must reach Label Studio exactly once, which
needs a decision that the web and the job cannot both win. It is one Redis key per job, the *claim*:

- before enqueueing, the web sets ``cores:claim:<job_id> = waiting`` (expiring shortly after the deadline);
- the job, when its predictions are ready, swaps in ``done`` (``SET ... XX GET``). If the old value was
  ``waiting``, the web is still waiting and will return the predictions: the job does not write them.
  Otherwise (``abandoned``, or the key expired because the web died) the job writes them back.
- the web, at its deadline, swaps in ``abandoned`` for every job it has no result for. If the old value
  was ``waiting``, the job has not finished and will write back: the web answers ``[]`` for those tasks.
  If it was ``done``, the job finished in the meantime: the web waits a moment for its result and returns
  it.

Both swaps are single atomic Redis commands on the same key, so exactly one side delivers. The only loss
is a web process that dies between enqueueing and its deadline while the job finishes inside that window
(the job then trusts a web that is gone); those tasks simply keep no prediction, and the next "Retrieve
predictions" asks for them again.
"""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from typing import Any

import redis

logger = logging.getLogger(__name__)

CLAIM_PREFIX = "cores:claim:"
WAITING = "waiting"
DONE = "done"
ABANDONED = "abandoned"
CLAIM_GRACE_S = 5.0
"""Seconds a claim outlives the web's deadline (so a dead web process hands delivery to the job)."""
DECIDED_TTL_S = 24 * 3600


class Deliverer(StrEnum):
    """Which side delivers a job's predictions."""

    WEB = "web"
    JOB = "job"


def claim_key(job_id: str) -> str:
    """The claim key of a job: ``cores:claim:<job_id>``."""
    return CLAIM_PREFIX + job_id


def open_claim(connection: redis.Redis, job_id: str, deadline_s: float) -> str:
    """Web side, before enqueueing: mark that the web waits for this job. Returns the claim key."""
    key = claim_key(job_id)
    connection.set(key, WAITING, ex=math.ceil(deadline_s + CLAIM_GRACE_S))
    return key


def _swap(connection: redis.Redis, key: str, value: str) -> str | None:
    old: Any = connection.set(key, value, xx=True, get=True, ex=DECIDED_TTL_S)
    if isinstance(old, bytes):
        return old.decode()
    return old if isinstance(old, str) else None


def finish_claim(connection: redis.Redis, key: str) -> Deliverer:
    """Job side, predictions ready: WEB when the web still waits (it will return them), else JOB."""
    old = _swap(connection, key, DONE)
    deliverer = Deliverer.WEB if old == WAITING else Deliverer.JOB
    logger.debug("claim %s was %r: %s delivers", key, old, deliverer.value)
    return deliverer


def abandon_claim(connection: redis.Redis, key: str) -> Deliverer:
    """Web side, deadline passed without a result: JOB when the job will write back, WEB when it finished
    in the meantime (the web must fetch and return its result)."""
    old = _swap(connection, key, ABANDONED)
    deliverer = Deliverer.WEB if old == DONE else Deliverer.JOB
    logger.debug("claim %s was %r at the deadline: %s delivers", key, old, deliverer.value)
    return deliverer
