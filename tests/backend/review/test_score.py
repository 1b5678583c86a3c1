"""The review score on crafted chains: ordered from most to least in need of review, with the reasons, and
rebuilt from a prediction's region meta."""

from __future__ import annotations

import numpy as np
import pytest

from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.label_studio.predictions import build_prediction
from backend.review.score import ReviewScore, review_score

H, W = 40, 60


def box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


CONTEXT = box(5, 5, 35, 55)
INSIDE = box(10, 10, 20, 25)
OUTSIDE = box(0, 40, 12, 60)  # mostly outside the context


def chain(
    target: np.ndarray, *, heads: tuple[float, float] = (0.9, 0.9), margins: tuple[float, float] = (0.9, 0.9)
) -> list[dict[str, object]]:
    return [
        {"index": 1, "mask": CONTEXT, "score": heads[0], "stats": {"margin": margins[0]}, "text": "a table"},
        {"index": 2, "mask": target, "score": heads[1], "stats": {"margin": margins[1]}, "text": "the cup"},
    ]


CRAFTED = {
    "confident": chain(INSIDE),
    "soft boundary": chain(INSIDE, margins=(0.9, 0.35)),
    "levels disagree": chain(INSIDE, heads=(0.95, 0.55)),
    "outside the context": chain(OUTSIDE),
    "low IoU head": chain(INSIDE, heads=(0.4, 0.3), margins=(0.9, 0.4)),
    "empty target": chain(np.zeros((H, W), dtype=bool)),
}


def test_crafted_predictions_sort_from_most_to_least_in_need_of_review() -> None:
    scores = {name: review_score(levels) for name, levels in CRAFTED.items()}
    order = sorted(scores, key=lambda name: scores[name].score)
    assert order == [
        "empty target",
        "low IoU head",
        "soft boundary",
        "levels disagree",
        "outside the context",
        "confident",
    ], {name: round(s.score, 3) for name, s in scores.items()}
    assert scores["empty target"].score == 0.0
    assert scores["confident"].score == pytest.approx(0.9**0.4 * 0.9**0.3 * 1.0**0.2 * 1.0**0.1)
    assert scores["confident"].reasons() == []
    assert scores["empty target"].reasons()[0] == "level 2 (the target) is empty"
    assert scores["soft boundary"].reasons() == ["uncertain target boundary (margin 0.35)"]
    outside = scores["outside the context"]
    assert outside.containment == pytest.approx(int((OUTSIDE & CONTEXT).sum()) / int(OUTSIDE.sum()))
    assert outside.reasons() == [
        f"{1 - outside.containment:.0%} of the target lies outside the level-1 context"
    ]
    assert scores["levels disagree"].agreement == pytest.approx(0.6)
    assert scores["levels disagree"].reasons() == ["the levels disagree (IoU heads 0.95, 0.55)"]
    low = scores["low IoU head"].reasons()
    assert low[0] == "low IoU-head score on the target (0.30)"
    assert "low IoU-head score on level 1 (0.40)" in low


def test_the_formula_leaves_out_what_was_not_measured_and_scores_one_level_chains() -> None:
    unmeasured = [dict(level, stats={}) for level in CRAFTED["confident"]]
    assert review_score(unmeasured).score == pytest.approx((0.9**0.4) ** (1 / 0.7))
    alone = review_score([{"index": 1, "mask": INSIDE, "score": 0.64, "stats": {"margin": 0.64}}])
    assert (alone.containment, alone.agreement) == (None, None)
    assert alone.score == pytest.approx(0.64)
    with pytest.raises(ValueError, match="at least one chain level"):
        review_score([])
    with pytest.raises(ValueError, match="differ in shape"):
        review_score(
            [{"index": 1, "mask": INSIDE, "score": 1.0}, {"index": 2, "mask": INSIDE[:5], "score": 1.0}]
        )


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_the_score_rides_in_the_prediction_and_its_region_meta(name: str) -> None:
    levels = CRAFTED[name]
    review = review_score(levels)
    shaped = [dict(level, meta={"review": review.level_meta(int(level["index"]))}) for level in levels]
    schema = parse_label_config(shipped_label_config())
    prediction = build_prediction(shaped, schema, W, H, "v1", score=review.score)
    assert prediction["score"] == review.score
    assert [r["meta"]["review"]["level"] for r in prediction["result"]] == [1, 2]
    assert prediction["result"][0]["meta"]["text"] == ["a table"]  # the chain text stays beside it
    rebuilt = ReviewScore.from_result(prediction["result"])
    assert rebuilt is not None
    assert rebuilt.score == pytest.approx(review.score, abs=1e-6)
    assert rebuilt.reasons() == review.reasons()
    assert ReviewScore.from_json(review.to_json()).reasons() == review.reasons()
    assert ReviewScore.from_result([{"type": "textarea", "value": {"text": ["q"]}}]) is None
