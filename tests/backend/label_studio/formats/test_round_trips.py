"""Mask -> brush / bitmask / polygon value -> the parsers -> mask, on shapes that stress each format.

Where label-studio-sdk has a parser it is used: brush RLE through ``converter.brush.decode_rle``, and every
value through ``LabelInterface.validate_prediction`` (the SDK's JSON schemas of the three tags). The SDK has
no bitmask decoder and no polygon rasteriser (its COCO export only converts polygon points to pixels,
``converter.exports.brush_to_coco.generate_contour_from_polygon``, used here to check our points): bitmasks
are read back with Pillow's PNG decoder and polygons with pycocotools, as the correction log reads them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.converter.exports.brush_to_coco import generate_contour_from_polygon
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image
from shapely.geometry import LinearRing, Polygon

from backend.label_studio.formats import bitmask, polygon
from backend.label_studio.formats.regions import decode_value, level_values
from backend.label_studio.label_config import parse_label_config
from tests.paths import FIXTURES

H, W = 96, 128
YY, XX = np.mgrid[:H, :W]
CONFIG = (FIXTURES / "label_config_all_masks.xml").read_text(encoding="utf-8")


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((YY - cy) / ry) ** 2 + ((XX - cx) / rx) ** 2 <= 1


def _lines() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[10, 5:120] = True  # one pixel high
    mask[20:90, 60] = True  # one pixel wide
    for i in range(60):
        mask[30 + i, 5 + i] = True  # diagonal, 8-connected
    return mask


def _holes() -> np.ndarray:
    mask = _ellipse(48, 64, 40, 55) & ~_ellipse(48, 44, 14, 14) & ~_ellipse(48, 90, 10, 16)
    return mask | _ellipse(48, 44, 5, 5)  # an island inside a hole


def _grid() -> np.ndarray:
    mask = np.ones((H, W), dtype=bool)
    for y in range(6, H - 6, 14):
        for x in range(6, W - 6, 14):
            mask[y : y + 7, x : x + 7] = False
    return mask


def _components() -> np.ndarray:
    blocks = np.random.default_rng(3).random((H // 8, W // 8)) > 0.55
    return np.kron(blocks, np.ones((8, 8), dtype=bool))


def _border() -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[:, :20] = True
    mask[:15, :] = True
    mask[H - 30 :, W - 30 :] = True
    return mask


def _tiny() -> np.ndarray:
    mask = _ellipse(50, 60, 20, 30)
    mask[2:5, 2:5] = True  # 9 px: under MIN_AREA_PX, no polygon
    mask[90, 120] = True
    mask[50, 60] = False  # a one-pixel hole: filled
    return mask


SHAPES: dict[str, tuple[Callable[[], np.ndarray], float]] = {
    # shape -> (mask, the polygon IoU it must reach)
    "blob": (lambda: _ellipse(48, 64, 35, 50), 0.99),
    "thin_lines": (_lines, 0.99),
    "holes_and_an_island": (_holes, 0.98),
    "forty_holes": (_grid, 0.99),
    "many_components": (_components, 0.99),
    "touching_the_border": (_border, 0.99),
    "tiny_parts": (_tiny, 0.98),
    "full_image": (lambda: np.ones((H, W), dtype=bool), 1.0),
}


def _region(result_type: str, value: dict) -> dict:
    name = {"brushlabels": "brush", "bitmasklabels": "mask", "polygonlabels": "poly"}[result_type]
    label = parse_label_config(CONFIG).control(name, result_type).labels[0]  # type: ignore[union-attr]
    return {
        "id": "r1",
        "from_name": name,
        "to_name": "image",
        "type": result_type,
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": value | {result_type: [label]},
    }


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_brush_round_trip_is_exact_with_the_sdk_decoder(shape: str) -> None:
    mask = SHAPES[shape][0]()
    (part,) = level_values("brushlabels", mask)
    assert (
        LabelInterface(CONFIG).validate_prediction({"result": [_region("brushlabels", part.value)]}) is True
    )
    rgba = np.asarray(decode_rle(part.value["rle"])).reshape(H, W, 4)
    np.testing.assert_array_equal(rgba[:, :, 3] > 0, mask)
    np.testing.assert_array_equal(decode_value("brushlabels", part.value, H, W), mask)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_bitmask_round_trip_is_exact(shape: str) -> None:
    mask = SHAPES[shape][0]()
    (part,) = level_values("bitmasklabels", mask)
    url = part.value["imageDataURL"]
    assert (
        LabelInterface(CONFIG).validate_prediction({"result": [_region("bitmasklabels", part.value)]}) is True
    )
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as png:
        assert (png.format, png.mode, png.size) == ("PNG", "LA", (W, H))  # the original size, alpha = mask
        alpha = np.asarray(png.getchannel("A"))
    assert set(np.unique(alpha)) <= {0, 255}
    np.testing.assert_array_equal(alpha == 255, mask)
    np.testing.assert_array_equal(decode_value("bitmasklabels", part.value, H, W), mask)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_polygon_round_trip_keeps_simple_rings_and_the_iou_bound(shape: str) -> None:
    make, bound = SHAPES[shape]
    mask = make()
    parts = level_values("polygonlabels", mask)
    assert parts
    regions = [_region("polygonlabels", part.value) for part in parts]
    assert LabelInterface(CONFIG).validate_prediction({"result": regions}) is True
    for part in parts:
        points = np.asarray(part.value["points"])
        assert part.value["closed"] is True
        assert len(points) >= 3
        assert ((points >= 0) & (points <= 100)).all()
        assert LinearRing(points).is_simple  # never self-intersecting
        assert Polygon(points).is_valid
        assert points.round(polygon.DECIMALS).tolist() == points.tolist()
        # the SDK's COCO conversion of the points (rounded pixels) matches ours
        segmentation, _, _ = generate_contour_from_polygon(part.value["points"], W, H)
        ours = points * np.array([W / 100, H / 100])
        assert np.abs(np.asarray(segmentation[0]).reshape(-1, 2) - ours).max() <= 0.5 + 1e-9
    back = polygon.rasterise([p.value["points"] for p in parts], W, H)
    iou = polygon.mask_iou(mask, back)
    assert iou >= bound
    assert {p.meta["polygon_iou"] for p in parts} == {round(iou, 4)}  # the meta reports exactly this
    np.testing.assert_array_equal(
        sum(decode_value("polygonlabels", p.value, H, W).astype(int) for p in parts) > 0, back
    )


def test_polygons_are_exact_without_simplification(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outline itself (before simplification) loses nothing but the tiny parts it documents."""
    monkeypatch.setattr(polygon, "TOLERANCE_PX", 0.0)
    for shape in (
        "thin_lines",
        "holes_and_an_island",
        "forty_holes",
        "many_components",
        "touching_the_border",
    ):
        mask = SHAPES[shape][0]()
        _, iou = polygon.polygon_values(mask)
        assert iou == 1.0, shape


def test_tiny_parts_are_dropped_and_tiny_holes_filled() -> None:
    mask = SHAPES["tiny_parts"][0]()
    back = polygon.rasterise([v["points"] for v in polygon.polygon_values(mask)[0]], W, H)
    assert not back[2:5, 2:5].any()
    assert not back[90, 120]
    assert back[50, 60]
    assert polygon.polygon_values(np.zeros((H, W), dtype=bool)) == ([], 1.0)


def test_holes_stay_holes() -> None:
    mask = _holes()
    back = polygon.rasterise([v["points"] for v in polygon.polygon_values(mask)[0]], W, H)
    assert not back[48, 30]  # inside the big hole
    assert back[48, 44]  # the island inside it
    assert not back[48, 90]


def test_rasterise_rules() -> None:
    square = [[25.0, 25.0], [75.0, 25.0], [75.0, 75.0], [25.0, 75.0]]
    mask = polygon.rasterise([square], 40, 20)
    assert mask.sum() == 20 * 10  # pixel centres inside, pixel-edge coordinates
    assert mask[5:15, 10:30].all()
    assert not polygon.rasterise([[[10, 10], [50, 50]]], 40, 20).any()  # two points cover no area
    assert not polygon.rasterise([], 40, 20).any()
    outside = polygon.rasterise([[[-50, -50], [150, -50], [150, 150], [-50, 150]]], 40, 20)
    assert outside.all()
    for bad in ("10,10", [[10, "x"], [1, 2], [3, 4]], [[float("nan"), 1], [2, 2], [3, 3]], [[1, 2, 3]]):
        with pytest.raises(polygon.PolygonError, match="points"):
            polygon.rasterise([bad], 40, 20)


def _data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    mime = "png" if fmt == "PNG" else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def test_bitmask_reads_what_label_studio_draws() -> None:
    """The editor submits RGBA PNGs, RGB 0, anti-aliased alpha: any alpha >= 1 is foreground (the rule
    Label Studio's hover and bounding box use); a PNG without alpha covers the whole image (as it renders)."""
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[20:40, 30:60, 3] = 255
    rgba[19, 30:60, 3] = 40  # a soft edge
    mask = bitmask.decode_bitmask(_data_url(Image.fromarray(rgba, "RGBA")), H, W)
    assert mask.sum() == 20 * 30 + 30
    grey = bitmask.decode_bitmask(_data_url(Image.fromarray(np.zeros((H, W), np.uint8), "L")), H, W)
    assert grey.all()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "PNG data URL string"),
        ("http://example.com/mask.png", "start with 'data:image/png;base64,'"),
        (_data_url(Image.new("RGB", (W, H)), "JPEG"), "start with 'data:image/png;base64,'"),
        ("data:image/png;base64,%%%", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"GIF89a....").decode(), "not a PNG"),
        (_data_url(Image.new("RGBA", (W // 2, H))), "64x96 but the region's original size is 128x96"),
        ("data:image/png;base64," + "A" * (4 * (H * (4 * W + 1) + 70000) // 3), "more than an uncompressed"),
    ],
)
def test_bitmask_refuses_what_is_not_a_png_of_the_regions_size(url: object, expected: str) -> None:
    with pytest.raises(bitmask.BitmaskError, match=expected):
        bitmask.decode_bitmask(url, H, W)


def test_bitmask_png_is_small_next_to_brush_rle() -> None:
    """Both stay far below the raw mask; the sizes themselves are measured by benchmarks/bench_masks.py."""
    mask = _ellipse(48, 64, 35, 50)
    png = bitmask.encode_png(mask)
    assert len(png) < mask.size // 8
