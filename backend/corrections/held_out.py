"""The held-out evaluation split of the correction log: fixed per record, growing with the log.

A record belongs to the held-out split when the SHA-256 of its stable key (``project:task:image``, the
image as the task names it) read as a number in [0, 1) is below ``EVAL_FRACTION``. Every revision and
every annotation of one task share the key, so they fall on the same side; a record never moves when the
log grows (its key does not depend on anything else in the log), and the training job never trains on
the held-out side (``backend.training.job``). Changing ``EVAL_FRACTION`` moves only the records between
the old and the new threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from backend.corrections.records import CorrectionRecord

CORRECTED_BELOW_IOU = 0.95
"""A level counts as corrected when the IoU between its prediction and the accepted mask is below this (the
correction rate of the held-out scores and of the report)."""
_SALT = b"cores-held-out-v1:"
_SCALE = float(2**64)


def record_key(record: CorrectionRecord) -> str:
    """The stable key that decides a record's side: ``<project>:<task>:<image>``."""
    project = "" if record.project_id is None else str(record.project_id)
    return f"{project}:{record.task_id}:{record.image_ref or ''}"


def key_position(key: str) -> float:
    """Where a key falls in [0, 1): the first 8 bytes of ``sha256(salt + key)`` over 2**64."""
    digest = hashlib.sha256(_SALT + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def is_held_out(record: CorrectionRecord, fraction: float) -> bool:
    """Whether ``record`` is in the held-out split of ``fraction`` (``EVAL_FRACTION``)."""
    return key_position(record_key(record)) < fraction


def split_records(
    records: Iterable[CorrectionRecord], fraction: float
) -> tuple[list[CorrectionRecord], list[CorrectionRecord]]:
    """(records to train on, held-out records), each in the given order."""
    train: list[CorrectionRecord] = []
    held: list[CorrectionRecord] = []
    for record in records:
        (held if is_held_out(record, fraction) else train).append(record)
    return train, held
