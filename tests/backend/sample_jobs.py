"""Job functions for worker tests, referenced by dotted path (``tests.backend.sample_jobs.<name>``).

Plain module-level functions with JSON-safe arguments and results, like ``backend.jobs.predict``.
"""

from __future__ import annotations

import logging
import os
import time

from rq import get_current_job

logger = logging.getLogger(__name__)


def log_and_sleep(message: str, seconds: float) -> dict[str, object]:
    """Log ``message``, sleep ``seconds``, return what was asked."""
    logger.info(message)
    time.sleep(seconds)
    return {"message": message, "slept": seconds}


def wait_for_key(key: str, timeout_s: float) -> str:
    """Wait until the Redis key ``key`` exists (polling every 50 ms), then return its value.

    Raises:
        TimeoutError: the key did not appear within ``timeout_s`` seconds.
    """
    job = get_current_job()
    assert job is not None, "wait_for_key runs only as an rq job"
    logger.info("waiting for %s", key)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = job.connection.get(key)
        if value is not None:
            return value.decode()
        time.sleep(0.05)
    raise TimeoutError(f"{key} did not appear within {timeout_s} s")


def visible_devices(key: str, timeout_s: float) -> dict[str, str | None]:
    """Once the Redis key ``key`` exists: which devices this worker process was given (``--gpus``)."""
    wait_for_key(key, timeout_s)
    return {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "CORES_DEVICE")}
