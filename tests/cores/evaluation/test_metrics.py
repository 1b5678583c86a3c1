"""LISA's gIoU/cIoU on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cores.evaluation.metrics import IoUAccumulator, intersection_union, mask_iou

EPS = 1e-5


def row(*values: int) -> np.ndarray:
    return np.array([values], dtype=np.uint8)


def brow(*values: int) -> np.ndarray:
    return np.array([values], dtype=bool)


def test_perfect_prediction():
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[1:3, 1:3] = 1
    acc = IoUAccumulator()
    iou = acc.add(gt == 1, gt)
    assert iou == 4 / (4 + EPS)
    assert acc.giou == pytest.approx(1.0, abs=1e-5)
    assert acc.ciou == 1.0
    assert acc.count == 1


def test_disjoint_prediction():
    acc = IoUAccumulator()
    assert acc.add(brow(1, 1, 0, 0), row(0, 0, 1, 1)) == 0.0
    assert acc.giou == 0.0
    assert acc.ciou == 0.0


def test_partial_overlap_exact_fraction():
    # I = 2 (columns 1, 2), U = 4.
    assert intersection_union(brow(1, 1, 1, 0), row(0, 1, 1, 1)) == (2, 4)
    acc = IoUAccumulator()
    assert acc.add(brow(1, 1, 1, 0), row(0, 1, 1, 1)) == 2 / (4 + EPS)
    assert acc.ciou == 0.5


def test_ignore_pixels_excluded_from_intersection_and_union():
    pred = brow(1, 0, 1, 1, 1)
    gt = row(1, 1, 255, 0, 255)
    # Columns 2 and 4 are ignored: I = 1 (col 0), U = 3 (cols 0, 1, 3).
    assert intersection_union(pred, gt) == (1, 3)
    # The same without the ignore label would be I = 1, U = 5.
    assert intersection_union(pred, np.where(gt == 255, 0, gt).astype(np.uint8)) == (1, 5)


def test_bool_ground_truth_ignores_nothing():
    assert intersection_union(brow(1, 1, 0), brow(1, 0, 0)) == (1, 2)


def test_empty_union_scores_one():
    acc = IoUAccumulator()
    assert acc.add(np.zeros((3, 3), dtype=bool), np.zeros((3, 3), dtype=np.uint8)) == 1.0
    # A prediction only on ignored pixels also leaves the union empty.
    assert acc.add(np.ones((2, 2), dtype=bool), np.full((2, 2), 255, dtype=np.uint8)) == 1.0
    assert acc.giou == 1.0
    assert acc.ciou == 1.0  # sum(U) == 0: no foreground anywhere


def test_ciou_and_giou_differ_on_images_of_different_sizes():
    acc = IoUAccumulator()
    small_gt = np.ones((2, 2), dtype=np.uint8)
    acc.add(small_gt == 1, small_gt)  # I = 4, U = 4
    big_gt = np.zeros((10, 10), dtype=np.uint8)
    big_gt[:5] = 1
    acc.add(np.zeros((10, 10), dtype=bool), big_gt)  # I = 0, U = 50
    assert acc.giou == pytest.approx((4 / (4 + EPS) + 0.0) / 2)
    assert acc.ciou == 4 / 54
    assert acc.as_dict() == {
        "giou": acc.giou,
        "ciou": 4 / 54,
        "count": 2,
        "intersection": 4,
        "union": 54,
    }


def test_empty_accumulator_raises():
    acc = IoUAccumulator()
    with pytest.raises(ValueError, match="no images"):
        _ = acc.giou
    with pytest.raises(ValueError, match="no images"):
        acc.as_dict()


def test_bad_inputs():
    acc = IoUAccumulator()
    with pytest.raises(ValueError, match="shapes differ"):
        acc.add(np.zeros((2, 3), dtype=bool), np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match="bool"):
        acc.add(np.zeros((2, 2), dtype=np.float32), np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="0, 1 or 255"):
        acc.add(np.zeros((1, 2), dtype=bool), row(0, 2))
    with pytest.raises(ValueError, match="2-D"):
        acc.add(np.zeros((2, 2, 1), dtype=bool), np.zeros((2, 2, 1), dtype=np.uint8))
    assert acc.count == 0


def test_mask_iou():
    assert mask_iou(brow(1, 1, 1, 0), brow(0, 1, 1, 1)) == 0.5
    assert mask_iou(brow(1, 0, 0), brow(1, 0, 0)) == 1.0
    assert mask_iou(brow(1, 0), brow(0, 1)) == 0.0
    assert mask_iou(np.zeros((3, 3), dtype=bool), np.zeros((3, 3), dtype=bool)) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(np.zeros((2, 2), dtype=bool), np.zeros((2, 3), dtype=bool))
