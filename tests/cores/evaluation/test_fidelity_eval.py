"""The evaluation's ground truth equals the released rule run live under OpenCV 4.8 and numpy 1.24
(``.venv-ref``): overlapping, ignore and flag polygons, equal-area ties, degenerate shapes, a cp1252 file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cores.evaluation.evaluate import evaluate
from cores.evaluation.introsort import _heapsort, argsort_numpy124
from cores.evaluation.metrics import intersection_union
from cores.evaluation.polygon_raster import draw_polygon, fill_poly_opencv48
from cores.evaluation.reasonseg import iter_samples, load_gt_mask, load_image
from tests.reference_env import run_reference

H, W = 60, 80


def _square(x: float, y: float, size: float) -> list[list[float]]:
    return [[x, y], [x + size, y], [x + size, y + size], [x, y + size]]


def _shape(label: str, points: list[list[float]]) -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


def _ties(count: int) -> list[dict]:
    """Equal-area squares overlapping their neighbours, labels alternating: only the drawing order among ties
    decides which value each overlap gets."""
    return [
        _shape("ignore" if i % 2 else "target", _square(2 + (i * 3) % 60, 2 + (i * 5) % 40, 12))
        for i in range(count)
    ]


SAMPLES: dict[str, dict] = {
    "overlap": {
        "text": ["the big thing"],
        "is_sentence": False,
        "shapes": [
            _shape("target", [[5, 5], [70, 8], [60, 50], [10, 45]]),
            _shape("ignore", [[20.9, 20.2], [40.5, 18.7], [35.2, 35.9]]),
            _shape("target", [[30, 30], [75, 30], [75, 58], [30, 58]]),
        ],
    },
    "flag and truncation": {
        "text": ["what is flagged?"],
        "is_sentence": True,
        "shapes": [
            _shape("flag", _square(0, 0, 50)),
            _shape("FLAG", _square(10, 10, 30)),
            _shape("target", [[-0.7, -1.5], [30.99, 0.5], [25.5, 20.49], [-3.2, 15.8]]),
            _shape("Ignore_Region", [[50.5, 40.5], [90.0, 41.0], [79.9, 70.0]]),
        ],
    },
    "ties, few": {"text": ["the squares"], "is_sentence": False, "shapes": _ties(7)},
    "ties, many": {"text": ["many squares"], "is_sentence": False, "shapes": _ties(23)},
    "degenerate": {
        "text": ["points and lines"],
        "is_sentence": False,
        "shapes": [
            _shape("target", [[10, 10]]),
            _shape("target", [[20, 5], [60, 25]]),
            _shape("ignore", [[5, 50], [70, 50], [40, 50]]),
            _shape("target", [[30.4, 40.6], [30.6, 40.4]]),
            _shape("target", [[65, 10], [65, 10], [66, 11]]),
        ],
    },
    "empty": {"text": ["nothing"], "is_sentence": False, "shapes": []},
}
CP1252 = "cp1252 café"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reasonseg")
    for i, (name, anno) in enumerate(SAMPLES.items()):
        stem = f"s{i}"
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(root / f"{stem}.jpg")
        anno = {**anno, "imagePath": f"{stem}.jpg", "imageHeight": H, "imageWidth": W, "name": name}
        text = json.dumps(anno, ensure_ascii=False)
        if name == "degenerate":  # one file in cp1252, as some released files are
            anno["text"] = [CP1252]
            (root / f"{stem}.json").write_bytes(json.dumps(anno, ensure_ascii=False).encode("cp1252"))
        else:
            (root / f"{stem}.json").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def reference(reference_python, folder, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("reference-gt")
    samples = list(iter_samples(folder))
    request = {
        "samples": [
            {"json": str(s.json_path), "height": H, "width": W, "out": str(out / f"{s.stem}.npy")}
            for s in samples
        ]
    }
    answer = run_reference(reference_python, "reasonseg_gt.py", request)
    assert [CP1252] in answer["texts"]
    return {s.stem: np.load(out / f"{s.stem}.npy") for s in samples}


def test_ground_truth_equals_the_released_rule(folder, reference):
    samples = list(iter_samples(folder))
    assert any(s.texts == [CP1252] for s in samples)  # the cp1252 file was read
    for sample in samples:
        image = load_image(sample)
        gt = load_gt_mask(sample, *image.shape[:2])
        theirs = reference[sample.stem]
        assert gt.dtype == theirs.dtype == np.uint8
        assert np.array_equal(gt, theirs), f"{sample.stem}: {(gt != theirs).sum()} pixels differ"
    ties = reference[samples[3].stem]
    assert {0, 1, 255} <= set(np.unique(ties).tolist())


class _FixedSegmenter:
    """Returns the same mask for every sample (the test is about the ground truth, not the model)."""

    class _Level:
        def __init__(self, mask: np.ndarray) -> None:
            self.mask = mask

    def __init__(self) -> None:
        yy, xx = np.mgrid[:H, :W]
        self.levels = [self._Level(((xx + 2 * yy) % 7 < 4) | (xx > 40))]

    def segment(self, image, query, *, is_sentence=None):
        return self


def test_cores_eval_scores_against_the_released_ground_truth(folder, reference):
    report = evaluate(_FixedSegmenter(), folder, progress=False)
    prediction = _FixedSegmenter().levels[0].mask
    assert report.count == len(SAMPLES)
    for score in report.per_sample:
        inter, union = intersection_union(prediction, reference[score.stem])
        assert score.iou == pytest.approx(inter / (union + 1e-5) if union else 1.0, abs=0)


def _patterns() -> list[list[int]]:
    rng = np.random.default_rng(0)
    lists: list[list[int]] = [[], [3], [2, 2], [1, 0, 1]]
    for n in (5, 16, 17, 18, 33, 100, 257, 1000, 2048):
        lists.append(rng.integers(0, 4, n).tolist())  # many ties
        lists.append(rng.integers(0, 10**6, n).tolist())
        lists.append(list(range(n)))
        lists.append(list(range(n, 0, -1)))
        lists.append([0] * n)
        lists.append([min(i, n - i) for i in range(n)])  # organ pipe
        lists.append([i % 5 for i in range(n)])  # saw tooth
    return lists


def test_polygon_order_is_numpy_124_argsort_ties_included(reference_python):
    lists = _patterns()
    answer = run_reference(reference_python, "reasonseg_gt.py", {"argsort": lists, "heapsort": lists})
    for values, theirs in zip(lists, answer["argsort"], strict=True):
        assert argsort_numpy124(values) == theirs, f"n={len(values)}"
    for values, theirs in zip(lists, answer["heapsort"], strict=True):
        order = list(range(len(values)))
        _heapsort(values, order, 0, len(values))
        assert order == theirs, f"heapsort n={len(values)}"


def _random_polygons(rng: np.random.Generator) -> list[list[list[int]]]:
    polygons = []
    for k in range(600):
        n = int(rng.integers(1, 12))
        low, high = (-40, 120) if k % 3 == 0 else (0, 80)  # a third reach outside the image
        polygons.append(rng.integers(low, high, (n, 2)).tolist())
    polygons.append([[-(10**6), 5], [10**6, 30], [40, 10**6]])
    for _ in range(12):  # ReasonSeg-like outlines: many vertices, concave, partly outside
        n = int(rng.integers(20, 150))
        angles = np.sort(rng.random(n)) * 2 * np.pi
        radius = rng.uniform(10, 50) * (1 + 0.4 * rng.random(n))
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        outline = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        polygons.append(outline.astype(np.int32).tolist())
    return polygons


def test_polygon_fill_is_opencv_48s(reference_python, tmp_path):
    """The fill is OpenCV 4.8's on random polygons (inside, outside, degenerate, self-intersecting, huge);
    today's cv2.fillPoly is not."""
    polygons = _random_polygons(np.random.default_rng(0))
    out = tmp_path / "rasters.npy"
    request = {"rasters": {"height": H, "width": W, "polygons": polygons, "out": str(out)}}
    run_reference(reference_python, "reasonseg_gt.py", request)
    reference = np.load(out)
    todays = 0
    for i, points in enumerate(polygons):
        pts = np.array(points, dtype=np.int32)
        fill = np.zeros((H, W), np.uint8)
        fill_poly_opencv48(fill, pts, 1)
        both = np.zeros((H, W), np.uint8)
        draw_polygon(both, pts, 1)
        assert np.array_equal(fill, reference[i, 0]), f"fillPoly {points}"
        assert np.array_equal(both, reference[i, 1]), f"polylines + fillPoly {points}"
        current = np.zeros((H, W), np.uint8)
        cv2.fillPoly(current, [pts.reshape(-1, 1, 2)], 1)
        todays += not np.array_equal(current, reference[i, 0])
    assert todays > len(polygons) // 4  # why the fill is reproduced rather than called
