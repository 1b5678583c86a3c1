"""evaluate() against segmenters that return known masks (test doubles for the Segmenter interface)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cores.evaluation.evaluate import EvalReport, evaluate
from cores.evaluation.reasonseg import write_sample

H, W = 8, 10


@dataclass
class Level:
    mask: np.ndarray


@dataclass
class Result:
    levels: list[Level]


def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# query -> ground-truth mask; "nothing" has an empty ground truth.
TRUTH = {
    "the left box": rect(1, 5, 1, 5),  # 16 px
    "nothing here": np.zeros((H, W), dtype=bool),
    "the right box": rect(2, 6, 5, 9),  # 16 px
}


class OracleSegmenter:
    """Level 0: empty mask; level 1: the ground truth of the query."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], str, bool | None]] = []

    def segment(self, image: np.ndarray, query: str, *, is_sentence: bool | None = None) -> Result:
        self.calls.append((image.shape, query, is_sentence))
        return Result([Level(np.zeros(image.shape[:2], dtype=bool)), Level(TRUTH[query].copy())])


class FixedSegmenter:
    """Always predicts the same mask."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def segment(self, image: np.ndarray, query: str, *, is_sentence: bool | None = None) -> Result:
        return Result([Level(self.mask)])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    image = np.full((H, W, 3), 128, dtype=np.uint8)
    for i, (query, mask) in enumerate(TRUTH.items()):
        masks = [("target", mask)] if mask.any() else []
        write_sample(tmp_path, f"img{i}", image, [query, "other phrasing"], i == 0, masks)
    return tmp_path


def test_oracle_scores_one(data_dir: Path):
    seg = OracleSegmenter()
    report = evaluate(seg, data_dir, progress=False)
    assert report.count == 3
    assert report.giou == pytest.approx(1.0, abs=1e-5)
    assert report.ciou == 1.0
    assert [s.stem for s in report.per_sample] == ["img0", "img1", "img2"]
    assert seg.calls == [
        ((H, W, 3), "the left box", True),
        ((H, W, 3), "nothing here", False),
        ((H, W, 3), "the right box", False),
    ]


def test_level_selection_and_empty_prediction(data_dir: Path):
    # Level 0 is empty: the two boxes score 0, the empty-truth image scores 1.
    report = evaluate(OracleSegmenter(), data_dir, level=0, progress=False)
    assert [s.iou for s in report.per_sample] == [0.0, 1.0, 0.0]
    assert report.giou == pytest.approx(1 / 3)
    assert report.ciou == 0.0


def test_fixed_prediction_hand_computed(data_dir: Path):
    # Predict the left box everywhere: img0 I=16 U=16; img1 I=0 U=16; img2 box rows 2-5 cols 5-8
    # overlaps rows 2-4 cols 1-4 nowhere -> I=0, U=32.
    report = evaluate(FixedSegmenter(TRUTH["the left box"]), data_dir, progress=False)
    assert report.per_sample[0].iou == pytest.approx(16 / (16 + 1e-5))
    assert report.per_sample[1].iou == 0.0
    assert report.per_sample[2].iou == 0.0
    assert report.ciou == 16 / (16 + 16 + 32)
    assert report.giou == pytest.approx(1 / 3, abs=1e-5)


def test_limit_to_dict_and_progress(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    report = evaluate(OracleSegmenter(), data_dir, limit=2, progress=True)
    assert isinstance(report, EvalReport)
    assert report.count == 2
    assert "eval" in capsys.readouterr().err
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d) == {"giou", "ciou", "count", "per_sample", "seconds"}
    assert d["per_sample"][1] == {"stem": "img1", "iou": 1.0}
    assert d["seconds"] >= 0
    evaluate(OracleSegmenter(), data_dir, limit=1, progress=False)
    assert capsys.readouterr().err == ""


def test_bad_arguments(data_dir: Path):
    with pytest.raises(ValueError, match="level 2"):
        evaluate(OracleSegmenter(), data_dir, level=2, progress=False)
    with pytest.raises(ValueError, match="limit"):
        evaluate(OracleSegmenter(), data_dir, limit=0, progress=False)
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate(FixedSegmenter(np.zeros((W, H), dtype=bool)), data_dir, progress=False)
