"""Merging the sources of ``review``: the newest prediction per task wins, lowest score first, unscored
predictions last, skipped tasks left out; the workers' prediction memory read from a real Redis."""

from __future__ import annotations

import redis

from backend.corrections.prediction_memory import RememberedPrediction, remember
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.label_studio.predictions import build_prediction
from backend.review.listing import UNSCORED, ReviewItem, from_memory, item_from_result, most_in_need
from backend.review.score import review_score
from tests.backend.review.test_score import CRAFTED, H, W

SCHEMA = parse_label_config(shipped_label_config())


def item(task: int, score: float | None, when: str, source: str = "label_studio") -> ReviewItem:
    return ReviewItem(task, score, (), "v1", source, when)


def test_the_newest_prediction_per_task_wins_and_unscored_ones_come_last() -> None:
    stored = {1: item(1, 0.9, "2025-03-01"), 2: item(2, 0.2, "2025-03-01"), 3: item(3, None, "2025-03-01")}
    memory = {1: item(1, 0.1, "2025-03-02", "memory"), 2: item(2, 0.95, "2025-02-01", "memory")}
    merged = most_in_need(stored, memory)
    assert [(i.task, i.score, i.source) for i in merged] == [
        (1, 0.1, "memory"),  # newer than the stored one
        (2, 0.2, "label_studio"),  # the stored one is newer
        (3, None, "label_studio"),
    ]
    assert [i.task for i in most_in_need(stored, memory, skip={1}, top=1)] == [2]


def test_a_prediction_without_review_parts_keeps_its_own_score_and_says_so() -> None:
    plain = build_prediction(CRAFTED["confident"], SCHEMA, W, H, "old")  # no meta.review
    found = item_from_result(5, plain["result"], plain["score"], "old", "label_studio", "2025-03-01")
    assert (found.score, found.reasons) == (plain["score"], (UNSCORED,))


def test_the_prediction_memory_gives_each_tasks_newest_review(redis_conn: redis.Redis) -> None:
    entries = []
    for task, name in ((11, "soft boundary"), (12, "confident")):
        review = review_score(CRAFTED[name])
        prediction = build_prediction(CRAFTED[name], SCHEMA, W, H, "v1", score=review.score)
        entry = RememberedPrediction.from_prediction(
            prediction, query="q", kind="interactive", schema=SCHEMA, review=review.to_json()
        )
        assert entry is not None
        entries.append((task, entry))
    assert remember(redis_conn, 4, entries, 60) == 2
    assert remember(redis_conn, 5, entries[:1], 60) == 1  # another project
    found = from_memory(redis_conn, 4)
    assert sorted(found) == [11, 12]
    assert found[11].reasons == tuple(review_score(CRAFTED["soft boundary"]).reasons())
    assert found[11].score == review_score(CRAFTED["soft boundary"]).score
    assert found[12].source == "memory"
