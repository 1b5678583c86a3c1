"""PolygonLabels: a level's mask as polygon regions, and polygons back to a mask.

Label Studio's polygon value is ``{"points": [[x%, y%], ...], "closed": true}``: one ring, no holes, in
percent of the original image size; Label Studio checks nothing (a self-intersecting ring renders as
drawn), so this module guarantees simple rings. Coordinates are continuous image coordinates: pixel
``(col, row)`` covers ``[col, col + 1) x [row, row + 1)``, so the polygon of a pixel-exact outline runs
along pixel edges.

**Mask -> polygons** (``mask_polygons``): 8-connected components under ``MIN_AREA_PX`` pixels are dropped
and holes (4-connected background) under ``MIN_AREA_PX`` pixels are filled, counted on the raster. OpenCV's
``findContours`` (``RETR_CCOMP``: outer borders and their holes; ``CHAIN_APPROX_SIMPLE``) traces each
component through its border pixels' centres; shapely grows each outer contour by half a pixel (mitred,
square caps: a one-pixel line or a single pixel keeps its pixel squares) and shrinks each hole by half a
pixel, so the outline runs along pixel edges, clips it to the image and simplifies it
(``simplify(TOLERANCE_PX, preserve_topology=True)``: no vertex moves more than ``TOLERANCE_PX`` pixels off
the outline; half a pixel keeps one-pixel lines as lines). **Holes are kept**: each hole is opened by a
cut, a ``CUT_WIDTH_PX`` wide slit centred on a pixel-grid line from the hole to the outside (the shortest of
the four directions), so the ring stays simple and no pixel centre falls inside the cut; a component whose
slit splits it becomes several polygons. Every ring is checked with shapely (``is_valid``, no interior)
after rounding to ``DECIMALS`` decimals of a percent.

**Polygons -> mask** (``rasterise``): pycocotools' ``frPyObjects`` (COCO's own polygon rasteriser) at the
region's ``original_width`` x ``original_height``, percent points scaled by ``width / 100`` and
``height / 100``; a region's polygons are OR-ed. The correction log, the IoU reported in each predicted
polygon's meta and the COCO export all use it, so they agree with what COCO tools decode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TYPE = "polygonlabels"
TOLERANCE_PX = 0.5
"""Simplification tolerance: the largest distance, in pixels, between a simplified polygon and the mask's
pixel outline."""
MIN_AREA_PX = 16
"""Connected components smaller than this many pixels get no polygon; holes smaller than this are filled."""
CUT_WIDTH_PX = 0.5
"""Width of the slit that opens a hole, centred on a pixel-grid line (it holds no pixel centre)."""
DECIMALS = 4
"""Decimals of a percent kept in each point (1e-4 % of a 10000 px side is 0.01 px)."""
_MIN_PIECE_AREA = 0.5  # pieces a cut leaves that are smaller than this (pixels) are numerical slivers


class PolygonError(ValueError):
    """A polygon value that cannot be rasterised; the message says what was found."""


def _without_small_parts(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its 8-connected components under ``MIN_AREA_PX`` pixels, and with its holes
    (4-connected background not touching the border) under ``MIN_AREA_PX`` pixels filled."""
    import cv2

    def small(binary: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            binary.astype(np.uint8), connectivity=connectivity
        )
        return labels, stats[:, cv2.CC_STAT_AREA] < MIN_AREA_PX

    labels, tiny = small(mask, 8)
    tiny[0] = False  # the background
    kept = mask & ~tiny[labels]
    labels, tiny = small(~kept, 4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    tiny[border] = False
    tiny[0] = False  # the foreground
    return kept | tiny[labels]


def _outlines(mask: np.ndarray) -> list[Any]:
    """One shapely geometry per outer contour of ``mask`` minus its holes, along pixel edges.

    Contours run through border-pixel centres; an outer one grows by half a pixel (mitred, square caps:
    a one-pixel line or a single pixel becomes its pixel squares), a hole shrinks by half a pixel.
    """
    import cv2
    from shapely import make_valid
    from shapely.geometry import LineString, Point, Polygon

    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]

    def centres(index: int) -> Any:
        ring = contours[index][:, 0, :].astype(np.float64) + 0.5
        if len(ring) == 1:
            return Point(ring[0])
        if len(ring) == 2:
            return LineString(ring)
        return make_valid(Polygon(ring))  # collapsed parts (one-pixel lines) stay as lines

    shapes = []
    for i in range(len(contours)):
        if links[i][3] != -1:
            continue  # a hole; read with its outer contour
        outline = centres(i).buffer(0.5, cap_style="square", join_style="mitre")
        child = links[i][2]
        while child != -1:
            hole = centres(child).buffer(-0.5, join_style="mitre")
            if not hole.is_empty:
                outline = outline.difference(hole)
            child = links[child][0]
        shapes.append(outline)
    return shapes


def _polygons(geometry: Any) -> list[Any]:
    """The polygons inside any shapely geometry (collections flattened; lines and points dropped)."""
    if geometry.is_empty:
        return []
    if geometry.geom_type == "Polygon":
        return [geometry]
    if hasattr(geometry, "geoms"):
        return [p for part in geometry.geoms for p in _polygons(part)]
    return []


def _cut_for(polygon: Any, hole: Any) -> Any | None:
    """A slit (a thin box) from inside ``hole`` out of ``polygon``'s bounds along a pixel-grid line, or None
    when no grid line crosses the hole."""
    from shapely.geometry import LineString, box

    minx, miny, maxx, maxy = polygon.bounds
    hx0, hy0, hx1, hy1 = hole.bounds
    centre = hole.representative_point()
    half = CUT_WIDTH_PX / 2
    # (distance to the outside, vertical?, towards the low side?)
    directions = sorted(
        [
            (hy0 - miny, True, True),
            (maxy - hy1, True, False),
            (hx0 - minx, False, True),
            (maxx - hx1, False, False),
        ]
    )
    for _, vertical, low in directions:
        lo, hi, at = (hx0, hx1, centre.x) if vertical else (hy0, hy1, centre.y)
        lines = sorted(range(math.floor(lo) + 1, math.ceil(hi)), key=lambda k: abs(k - at))
        for k in lines[:16]:
            probe = LineString([(k, hy0 - 1), (k, hy1 + 1)] if vertical else [(hx0 - 1, k), (hx1 + 1, k)])
            inside = probe.intersection(hole)
            if inside.is_empty or inside.length <= 0:
                continue
            point = inside.interpolate(0.5, normalized=True)
            if vertical:
                return (
                    box(k - half, miny - 1, k + half, point.y)
                    if low
                    else box(k - half, point.y, k + half, maxy + 1)
                )
            return (
                box(minx - 1, k - half, point.x, k + half)
                if low
                else box(point.x, k - half, maxx + 1, k + half)
            )
    return None


def _open_holes(polygon: Any) -> list[Any]:
    """Hole-free polygons covering ``polygon`` but for the slits that open its holes (see the module)."""
    from shapely.geometry import Polygon

    todo, done = [polygon], []
    budget = 4 * len(polygon.interiors) + 8
    while todo:
        current = todo.pop()
        if not current.interiors:
            done.append(current)
            continue
        budget -= 1
        hole = Polygon(current.interiors[0])
        cut = _cut_for(current, hole) if budget > 0 else None
        if cut is None:
            logger.debug("a hole of %.0f px has no slit; filled", hole.area)
            todo.append(Polygon(current.exterior, current.interiors[1:]))
            continue
        todo.extend(p for p in _polygons(current.difference(cut)) if p.area >= _MIN_PIECE_AREA)
    return done


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The simple, hole-free rings of an HxW mask, in pixel coordinates (see the module docstring).

    Returns:
        One ``(N, 2)`` float array of ``(x, y)`` vertices per polygon (N >= 3, not closed: the first vertex
        is not repeated), largest first. An empty mask, or one whose components are all under
        ``MIN_AREA_PX``, gives none.

    Raises:
        ValueError: a mask that is not 2-D or is empty.
    """
    from shapely import make_valid
    from shapely.geometry import box
    from shapely.geometry.polygon import orient

    array = np.asarray(mask) != 0
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty HxW mask, got shape {array.shape}")
    height, width = array.shape
    frame = box(0, 0, width, height)
    pieces = []
    for shape in _outlines(_without_small_parts(array)):
        simple = shape.intersection(frame).simplify(TOLERANCE_PX, preserve_topology=True)
        if not simple.is_valid:
            simple = make_valid(simple)
        for polygon in _polygons(simple):
            if polygon.area >= _MIN_PIECE_AREA:
                pieces.extend(_open_holes(polygon))
    rings = []
    for polygon in sorted(pieces, key=lambda p: -p.area):
        if polygon.is_valid and not polygon.interiors:
            coords = np.asarray(orient(polygon).exterior.coords, dtype=np.float64)[:-1]
            if len(coords) >= 3:
                rings.append(coords)
    return rings


def to_percent(ring: np.ndarray, width: int, height: int) -> list[list[float]]:
    """Pixel vertices -> Label Studio points ``[[x%, y%], ...]``, rounded to ``DECIMALS`` unless rounding
    would make the ring invalid (then kept unrounded)."""
    from shapely.geometry import Polygon

    scaled = np.clip(ring * np.array([100.0 / width, 100.0 / height]), 0.0, 100.0)
    rounded = np.round(scaled, DECIMALS)
    distinct = len(np.unique(rounded, axis=0)) == len(rounded)
    chosen = rounded if distinct and Polygon(rounded).is_valid else scaled
    return [[float(x), float(y)] for x, y in chosen]


def _points_px(points: Any, width: int, height: int, where: str) -> list[float] | None:
    """Percent points -> flat pixel coordinates for pycocotools; None for fewer than 3 points."""
    if not isinstance(points, list):
        raise PolygonError(f"{where}: expected value.points to be a list of [x, y] pairs")
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise PolygonError(f"{where}: expected value.points to be [x, y] number pairs") from None
    if array.size == 0:
        return None
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise PolygonError(
            f"{where}: expected value.points to be finite [x, y] pairs, got shape {array.shape}"
        )
    if len(array) < 3:
        return None  # a point or a line covers no area
    flat: list[float] = (array * np.array([width / 100.0, height / 100.0])).ravel().tolist()
    return flat


def rasterise(polygons: Iterable[Any], width: int, height: int, where: str = "polygon") -> np.ndarray:
    """The HxW bool mask of Label Studio polygons (each a ``points`` list in percent), OR-ed, as pycocotools
    rasterises them at ``width`` x ``height``.

    Raises:
        PolygonError: points that are not finite ``[x, y]`` number pairs.
    """
    from pycocotools import mask as coco_mask

    flat = [f for f in (_points_px(p, width, height, where) for p in polygons) if f is not None]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    rles = coco_mask.frPyObjects(flat, height, width)
    return np.asarray(coco_mask.decode(coco_mask.merge(rles)), dtype=bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two HxW bool masks; 1.0 when both are empty."""
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def polygon_values(mask: np.ndarray) -> tuple[list[dict[str, Any]], float]:
    """The polygonlabels ``value``s (labels not included) of an HxW mask and the IoU between the mask and
    their rasterisation (``rasterise`` of exactly the points written), rounded to 4 decimals."""
    array = np.asarray(mask) != 0
    height, width = array.shape
    values = [{"points": to_percent(ring, width, height), "closed": True} for ring in mask_polygons(array)]
    back = rasterise([v["points"] for v in values], width, height)
    return values, round(mask_iou(array, back), 4)
