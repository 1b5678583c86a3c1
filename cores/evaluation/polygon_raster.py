"""Polygon rasterisation exactly as OpenCV 4.8 does it (the released ReasonSeg ground truth's rule).

The released code draws each polygon with ``cv2.polylines(mask, [pts], True, value, 1)`` then
``cv2.fillPoly(mask, [pts], value)`` under OpenCV 4.8. The outline is plain 8-connected Bresenham lines, the
same in OpenCV 4.8 and in the 4.12 the product runs, so it is drawn with today's ``cv2.polylines`` /
``cv2.line``. The fill is not: OpenCV 4.11 changed ``fillPoly`` so that it no longer spills past the outline
(opencv/opencv#26187), which moves pixels of the ground truth. :func:`fill_poly_opencv48` reproduces OpenCV
4.8's scanline fill (``CollectPolyEdges`` and ``FillEdgeCollection`` of ``imgproc/src/drawing.cpp``):

* every edge is drawn as a line, and, unless horizontal, kept for the scanline fill with 16.16 fixed-point
  x: an edge inside the image carries half a pixel (``x + 0.5``, so the spans round); an edge reaching
  outside is clipped to the image first (Cohen-Sutherland, integer division truncating towards zero), its
  x taken from the clipped ends (no half pixel) and its start moved back along the clipped slope to its
  unclipped first row;
* ``dx`` is the fixed-point x step per row, truncated towards zero; an edge covers rows ``[y0, y1)``;
* rows are scanned from the top edge's first row; the edges crossing a row are paired in x order
  (even-odd), and each pair fills ``floor(left) .. floor(right)`` of their fixed-point x (clipped to the
  image) -- rows above the image are skipped, but their x still advance; active edges are re-sorted by x
  (a stable bubble sort) after each row.

``tests/cores/evaluation/test_fidelity_eval.py`` compares it with OpenCV 4.8 in ``.venv-ref`` on many random
polygons.
"""

from __future__ import annotations

import cv2
import numpy as np

XY_SHIFT = 16
XY_ONE = 1 << XY_SHIFT


def _div(a: int, b: int) -> int:
    """C integer division (truncates towards zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _clip_line(width: int, height: int, p1: list[int], p2: list[int]) -> None:
    """OpenCV's ``clipLine(Size, Point&, Point&)`` on ``[x, y]`` lists, in place."""
    right, bottom = width - 1, height - 1
    if width <= 0 or height <= 0:
        return

    def code(x: int, y: int, with_y: bool = True) -> int:
        c = (x < 0) + (x > right) * 2
        return c + ((y < 0) * 4 + (y > bottom) * 8 if with_y else 0)

    (x1, y1), (x2, y2) = p1, p2
    c1, c2 = code(x1, y1), code(x2, y2)
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += _div((a - y1) * (x2 - x1), y2 - y1)
            y1 = a
            c1 = code(x1, y1, with_y=False)
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += _div((a - y2) * (x2 - x1), y2 - y1)
            y2 = a
            c2 = code(x2, y2, with_y=False)
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += _div((a - x1) * (y2 - y1), x2 - x1)
                x1 = a
            if c2:
                a = 0 if c2 == 1 else right
                y2 += _div((a - x2) * (y2 - y1), x2 - x1)
                x2 = a
    p1[:] = [x1, y1]
    p2[:] = [x2, y2]


def _collect_edges(mask: np.ndarray, points: np.ndarray, value: int) -> list[list[int]]:
    """Draw every edge's line and return the fill edges ``[y0, y1, x, dx]`` (x, dx in 16.16 fixed point)."""
    height, width = mask.shape
    edges = []
    count = len(points)
    x0, y0 = int(points[-1][0]), int(points[-1][1])
    for i in range(count):
        x1, y1 = int(points[i][0]), int(points[i][1])
        cv2.line(mask, (x0, y0), (x1, y1), value, 1, cv2.LINE_8)
        start_x, start_y, end_x, end_y = x0 << XY_SHIFT, y0, x1 << XY_SHIFT, y1
        outside = not (0 <= x0 < width and 0 <= x1 < width and 0 <= y0 < height and 0 <= y1 < height)
        if outside:
            t0, t1 = [x0, y0], [x1, y1]
            _clip_line(width, height, t0, t1)
            if t0[1] != t1[1]:
                start_x, start_y, end_x, end_y = t0[0] << XY_SHIFT, t0[1], t1[0] << XY_SHIFT, t1[1]
        else:
            start_x += XY_ONE >> 1
            end_x += XY_ONE >> 1
        if y0 != y1:
            dx = _div(end_x - start_x, end_y - start_y)
            if y0 < y1:
                edges.append([y0, y1, start_x + (y0 - start_y) * dx, dx])
            else:
                edges.append([y1, y0, end_x + (y1 - end_y) * dx, dx])
        x0, y0 = x1, y1
    return edges


def _fill_edges(mask: np.ndarray, edges: list[list[int]], value: int) -> None:
    """OpenCV 4.8's ``FillEdgeCollection``: scan rows, pair active edges even-odd, fill between each pair."""
    height, width = mask.shape
    if len(edges) < 2:
        return
    y_min = min(e[0] for e in edges)
    y_max = max(e[1] for e in edges)
    ends = [x for y0, y1, x, dx in edges for x in (x, x + (y1 - y0) * dx)]
    if y_max < 0 or y_min >= height or max(ends) < 0 or min(ends) >= width << XY_SHIFT:
        return
    pending = sorted(edges, key=lambda e: (e[0], e[2], e[3]))
    active: list[list[int]] = []
    cursor = 0
    for y in range(pending[0][0], min(y_max, height)):
        active = [e for e in active if e[1] != y]
        merged: list[list[int]] = []
        k = 0
        while k < len(active) or (cursor < len(pending) and pending[cursor][0] == y):
            new = pending[cursor] if cursor < len(pending) and pending[cursor][0] == y else None
            if k < len(active) and (new is None or active[k][2] < new[2]):
                merged.append(active[k])
                k += 1
            else:
                assert new is not None
                merged.append(new)
                cursor += 1
        for left, right in zip(merged[0::2], merged[1::2], strict=False):
            if y >= 0:
                lo, hi = sorted((left[2], right[2]))
                x1, x2 = lo >> XY_SHIFT, hi >> XY_SHIFT
                if x1 < width and x2 >= 0:
                    mask[y, max(x1, 0) : min(x2, width - 1) + 1] = value
            left[2] += left[3]
            right[2] += right[3]
        active = sorted(merged, key=lambda e: e[2])  # OpenCV's bubble sort: stable, by x


def fill_poly_opencv48(mask: np.ndarray, points: np.ndarray, value: int) -> None:
    """``cv2.fillPoly(mask, [points], value)`` as OpenCV 4.8 draws it (see the module docstring), in place.

    Args:
        mask: HxW uint8.
        points: Nx2 int32 (x, y) pixel coordinates, N >= 1.
    """
    _fill_edges(mask, _collect_edges(mask, points, value), value)


def draw_polygon(mask: np.ndarray, points: np.ndarray, value: int) -> None:
    """The released rule for one shape, in place: ``cv2.polylines(mask, [pts], True, value, 1)`` then
    OpenCV 4.8's ``cv2.fillPoly(mask, [pts], value)``.

    Args:
        mask: HxW uint8.
        points: Nx2 int32 (x, y) pixel coordinates.
    """
    polygon = np.ascontiguousarray(points, dtype=np.int32).reshape(-1, 2)
    cv2.polylines(mask, [polygon.reshape(-1, 1, 2)], True, value, 1)
    fill_poly_opencv48(mask, polygon, value)
