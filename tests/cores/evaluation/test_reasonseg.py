"""ReasonSeg reading (LISA's ground-truth rule) and writing (mask -> polygons round trip)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cores.evaluation.reasonseg import (
    ReasonSegError,
    iter_samples,
    load_gt_mask,
    load_image,
    mask_to_polygons,
    write_sample,
)


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Reference: background not 4-connected to the border is a hole."""
    outside = np.zeros_like(mask)
    outside[[0, -1], :] = ~mask[[0, -1], :]
    outside[:, [0, -1]] |= ~mask[:, [0, -1]]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= ~mask
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


def write_json(path: Path, anno: object) -> None:
    path.write_text(json.dumps(anno), encoding="utf-8")


def write_image(path: Path, h: int = 10, w: int = 10) -> None:
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)


def test_round_trip_reproduces_blobs(tmp_path: Path):
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([xx * 4, yy * 5, np.full_like(xx, 200)], axis=-1).astype(np.uint8)  # smooth RGB
    ellipse = ((yy - 20) / 12.0) ** 2 + ((xx - 40) / 18.0) ** 2 <= 1
    two_blobs = disk(h, w, 10, 10, 6) | disk(h, w, 38, 50, 7)
    sample = write_sample(tmp_path, "s1", image, ["the round thing", "alt"], True, [("target", two_blobs)])
    write_sample(tmp_path, "s0", image, ["an ellipse"], False, [("target", ellipse)])

    samples = list(iter_samples(tmp_path))
    assert [s.stem for s in samples] == ["s0", "s1"]
    assert samples[1] == sample
    assert samples[1].texts == ["the round thing", "alt"]
    assert samples[1].is_sentence is True
    assert samples[0].is_sentence is False
    assert len(samples[1].shapes) == 2  # one polygon per component

    loaded = load_image(samples[1])
    assert loaded.shape == (h, w, 3)
    assert loaded.dtype == np.uint8
    assert np.abs(loaded.astype(int) - image.astype(int)).max() <= 8  # JPEG q95, RGB order kept
    for s, mask in zip(samples, (ellipse, two_blobs), strict=True):
        gt = load_gt_mask(s, h, w)
        assert gt.dtype == np.uint8
        np.testing.assert_array_equal(gt, mask.astype(np.uint8))


def test_mask_to_polygons_fills_holes_and_handles_thin_shapes():
    ring = disk(30, 30, 15, 15, 10) & ~disk(30, 30, 15, 15, 5)
    polys = mask_to_polygons(ring)
    assert len(polys) == 1
    assert mask_to_polygons(np.zeros((5, 5), dtype=bool)) == []
    single = np.zeros((5, 5), dtype=bool)
    single[2, 3] = True
    assert mask_to_polygons(single) == [[[3, 2]]]
    line = np.eye(6, dtype=bool)  # one-pixel-wide diagonal
    polys = mask_to_polygons(line)
    assert len(polys) == 1
    assert {tuple(p) for p in polys[0]} == {(0, 0), (5, 5)}


def test_round_trip_random_masks_equals_hole_filled(tmp_path: Path):
    rng = np.random.default_rng(1)
    image = np.zeros((12, 14, 3), dtype=np.uint8)
    ring = disk(12, 14, 6, 7, 5) & ~disk(12, 14, 6, 7, 2)
    masks = [ring] + [rng.random((12, 14)) < p for p in (0.2, 0.5, 0.8) for _ in range(10)]
    for i, mask in enumerate(masks):
        sample = write_sample(tmp_path, f"r{i:02d}", image, ["q"], False, [("target", mask)])
        np.testing.assert_array_equal(load_gt_mask(sample, 12, 14), fill_holes(mask).astype(np.uint8))


def test_lisa_rule_flag_ignore_and_largest_first(tmp_path: Path):
    write_image(tmp_path / "a.jpg")
    shapes = [
        # Listed before the big target it lies in: only largest-first keeps it visible.
        {"label": "Ignore-occluded", "points": [[3, 3], [5, 3], [5, 5], [3, 5]], "shape_type": "polygon"},
        {"label": "flag", "points": [[0, 0], [9, 0], [9, 9], [0, 9]], "shape_type": "polygon"},
        # Float coordinates are truncated (8.9 -> 8), as LISA's int32 cast does.
        {"label": "target", "points": [[1, 1], [8.9, 1], [8.9, 8.2], [1, 8]], "shape_type": "polygon"},
        {"label": "target", "points": [[4, 4], [5, 4], [5, 5], [4, 5]], "shape_type": "polygon"},
    ]
    write_json(tmp_path / "a.json", {"text": ["what is it?"], "is_sentence": True, "shapes": shapes})
    (sample,) = iter_samples(tmp_path)
    expected = np.zeros((10, 10), dtype=np.uint8)
    expected[1:9, 1:9] = 1
    expected[3:6, 3:6] = 255
    expected[4:6, 4:6] = 1
    np.testing.assert_array_equal(load_gt_mask(sample, 10, 10), expected)


def test_png_jpeg_and_exif_orientation(tmp_path: Path):
    Image.new("RGB", (6, 4)).save(tmp_path / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (6, 4)).save(tmp_path / "c.jpeg", exif=exif)
    for stem in ("b", "c"):
        write_json(tmp_path / f"{stem}.json", {"text": "q", "is_sentence": False, "shapes": []})
    b, c = iter_samples(tmp_path)
    assert b.image_path.name == "b.png"
    assert b.texts == ["q"]
    assert load_image(b).shape == (4, 6, 3)
    assert load_image(c).shape == (6, 4, 3)
    np.testing.assert_array_equal(load_gt_mask(b, 4, 6), np.zeros((4, 6), dtype=np.uint8))


def test_image_without_json_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    write_image(tmp_path / "a.jpg")
    write_json(tmp_path / "a.json", {"text": ["q"], "is_sentence": False, "shapes": []})
    write_image(tmp_path / "lonely.jpg")
    with caplog.at_level(logging.WARNING, logger="cores.evaluation.reasonseg"):
        assert [s.stem for s in iter_samples(tmp_path)] == ["a"]
    assert "without a json" in caplog.text


def test_errors(tmp_path: Path):
    with pytest.raises(ReasonSegError, match="not a directory"):
        list(iter_samples(tmp_path / "missing"))
    with pytest.raises(ReasonSegError, match="no ReasonSeg samples"):
        list(iter_samples(tmp_path))

    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ReasonSegError, match=r"a\.json: not a readable JSON"):
        list(iter_samples(tmp_path))

    write_json(tmp_path / "a.json", {"text": ["q"], "shapes": []})
    with pytest.raises(ReasonSegError, match="missing field"):
        list(iter_samples(tmp_path))

    write_json(tmp_path / "a.json", {"text": ["q"], "is_sentence": False, "shapes": [{"label": "x"}]})
    with pytest.raises(ReasonSegError, match="points"):
        list(iter_samples(tmp_path))

    write_json(tmp_path / "a.json", {"text": [], "is_sentence": False, "shapes": []})
    with pytest.raises(ReasonSegError, match="'text'"):
        list(iter_samples(tmp_path))

    (tmp_path / "a.jpg").unlink()
    with pytest.raises(ReasonSegError, match="no image"):
        list(iter_samples(tmp_path))


def test_write_sample_rejects_bad_input(tmp_path: Path):
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        write_sample(tmp_path, "x", image, ["q"], False, [("t", np.zeros((5, 4), dtype=bool))])
    with pytest.raises(ValueError, match="stem"):
        write_sample(tmp_path, "../x", image, ["q"], False, [])
    with pytest.raises(ValueError, match="uint8"):
        write_sample(tmp_path, "x", image.astype(np.float32), ["q"], False, [])
    assert list(tmp_path.iterdir()) == []
