"""The prediction memory is bounded: in tasks (least recently predicted forgotten first) and per entry."""

from __future__ import annotations

import numpy as np
import redis

from backend.corrections.prediction_memory import (
    RememberedPrediction,
    RememberedRegion,
    memory_key,
    recall,
    remember,
)
from backend.label_studio.rle import encode_mask


def entry(mask: np.ndarray) -> RememberedPrediction:
    return RememberedPrediction(
        "v1",
        "the dog",
        "bulk",
        "2025-01-01T00:00:00Z",
        mask.shape[1],
        mask.shape[0],
        0.5,
        (
            RememberedRegion(
                "brushlabels", "tag", "Level 1", 0.5, {"format": "rle", "rle": encode_mask(mask)}
            ),
        ),
    )


def test_the_memory_keeps_at_most_max_tasks_and_skips_huge_entries(redis_conn: redis.Redis) -> None:
    smooth = np.zeros((64, 64), dtype=bool)
    smooth[10:40, 5:50] = True
    for task in range(1, 6):
        assert remember(redis_conn, 7, [(task, entry(smooth))], 3600, max_tasks=3) == 1
    assert [recall(redis_conn, 7, task, None) is not None for task in range(1, 6)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    noise = np.random.default_rng(0).random((256, 256)) > 0.5  # ragged: a big RLE
    assert remember(redis_conn, 7, [(9, entry(noise))], 3600, max_entry_bytes=4096) == 0
    assert not redis_conn.exists(memory_key(7, 9))
