"""ReasonSeg folders: read samples and ground-truth masks, write new samples.

A ReasonSeg folder holds one LabelMe-style ``.json`` per image (same stem; ``.jpg`` in the release,
``.jpeg``/``.png`` also accepted here) with

- ``text``: list of queries (evaluation uses ``text[0]``),
- ``is_sentence``: whether the queries are long sentences,
- ``shapes``: ``{"label", "points": [[x, y], ...], "shape_type"}`` polygons in pixel coordinates.

Ground truth is rasterised exactly as the released LISA/CoReS evaluation does (``utils/data_processing.py``,
OpenCV 4.8 and numpy 1.24; ``tests/cores/evaluation/test_fidelity_eval.py`` compares live): shapes labelled
``flag`` are skipped; every other shape's points are cast to int32 (truncated towards zero) and drawn with
``cv2.polylines(mask, [pts], True, value, 1)`` then OpenCV 4.8's ``cv2.fillPoly(mask, [pts], value)`` (see
:mod:`cores.evaluation.polygon_raster`: later OpenCV fills differently); shapes are drawn
in the order ``np.argsort(areas)[::-1]`` of their own rasterised areas under numpy 1.24 (largest first;
equal areas in that introsort's order, see :mod:`cores.evaluation.introsort`), so smaller ones overwrite
larger ones; labels containing ``ignore`` are written as 255, all others as 1. The json files are read as
UTF-8 (the default encoding of the machines the released code ran on), falling back to cp1252.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cores.errors import CoresError, ImageError
from cores.evaluation.introsort import argsort_numpy124
from cores.evaluation.metrics import IGNORE_INDEX
from cores.evaluation.polygon_raster import draw_polygon
from cores.inference.images import load_image as load_image_file

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Image extensions looked for next to each json, in this order (case-insensitive)."""

JPEG_QUALITY = 95


class ReasonSegError(CoresError, ValueError):
    """A ReasonSeg folder or file that cannot be read or written as such."""


@dataclass(frozen=True)
class ReasonSegSample:
    """One annotated image of a ReasonSeg folder (nothing is decoded until asked for)."""

    image_path: Path
    json_path: Path
    texts: list[str]
    is_sentence: bool
    shapes: list[dict[str, Any]]

    @property
    def stem(self) -> str:
        """The shared file name stem of the image and its json."""
        return self.json_path.stem


# --------------------------------------------------------------------------------------------- reading


INT32_RANGE = (-(2**31), 2**31 - 1)


def _valid_points(points: object) -> bool:
    if not isinstance(points, list) or not points:
        return False
    return all(
        isinstance(p, list | tuple)
        and len(p) == 2
        and all(
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and INT32_RANGE[0] <= v <= INT32_RANGE[1]
            for v in p
        )
        for p in points
    )


def read_annotation(json_path: Path) -> Any:
    """The parsed json of a ReasonSeg annotation: UTF-8, else cp1252 (the released reader's fallback).

    Raises:
        ReasonSegError: unreadable, or JSON in neither encoding.
    """
    try:
        data = json_path.read_bytes()
    except OSError as e:
        raise ReasonSegError(f"{json_path}: not a readable file ({e})") from e
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    try:
        return json.loads(data.decode("cp1252"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReasonSegError(f"{json_path}: not a readable JSON file in UTF-8 or cp1252 ({e})") from e


def _parse_json(json_path: Path, image_path: Path) -> ReasonSegSample:
    anno = read_annotation(json_path)
    if not isinstance(anno, dict):
        raise ReasonSegError(f"{json_path}: expected a JSON object, got {type(anno).__name__}")
    missing = [k for k in ("text", "is_sentence", "shapes") if k not in anno]
    if missing:
        raise ReasonSegError(f"{json_path}: missing field(s) {missing}")
    texts = anno["text"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ReasonSegError(f"{json_path}: 'text' must be a non-empty list of strings")
    if not isinstance(anno["is_sentence"], bool):
        raise ReasonSegError(f"{json_path}: 'is_sentence' must be true or false")
    shapes = anno["shapes"]
    if not isinstance(shapes, list):
        raise ReasonSegError(f"{json_path}: 'shapes' must be a list")
    for i, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise ReasonSegError(f"{json_path}: shapes[{i}] must be an object with a string 'label'")
        if not _valid_points(shape.get("points")):
            raise ReasonSegError(
                f"{json_path}: shapes[{i}].points must be a non-empty list of finite [x, y] in int32 range"
            )
    return ReasonSegSample(image_path, json_path, list(texts), anno["is_sentence"], shapes)


def iter_samples(data_dir: Path) -> Iterator[ReasonSegSample]:
    """Yield the samples of a ReasonSeg folder (not recursive), sorted by file name.

    Images without a json are skipped with a warning. The folder is listed when iteration starts;
    each json is parsed as it is yielded.

    Raises:
        ReasonSegError: if ``data_dir`` is not a directory or holds no json, or when a json is
            malformed, misses ``text``/``is_sentence``/``shapes``, or has no image beside it.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ReasonSegError(f"{data_dir}: not a directory")
    files = sorted(p for p in data_dir.iterdir() if p.is_file())
    images: dict[str, Path] = {}
    for suffix in reversed(IMAGE_SUFFIXES):  # earlier suffixes win
        images.update({p.stem: p for p in files if p.suffix.lower() == suffix})
    jsons = [p for p in files if p.suffix.lower() == ".json"]
    if not jsons:
        raise ReasonSegError(f"{data_dir}: no ReasonSeg samples (no .json files)")
    orphans = sorted(set(images) - {p.stem for p in jsons})
    if orphans:
        logger.warning(
            "%s: %d image(s) without a json are skipped, e.g. %s", data_dir, len(orphans), orphans[0]
        )
    for json_path in jsons:
        image_path = images.get(json_path.stem)
        if image_path is None:
            raise ReasonSegError(
                f"{json_path}: no image {json_path.stem}{{{','.join(IMAGE_SUFFIXES)}}} beside it"
            )
        yield _parse_json(json_path, image_path)


def load_image(sample: ReasonSegSample) -> np.ndarray:
    """Decode the sample's image as an HxWx3 uint8 RGB array, EXIF orientation applied.

    Raises:
        ReasonSegError: if the file cannot be read or decoded.
    """
    try:
        return load_image_file(sample.image_path)
    except ImageError as e:
        raise ReasonSegError(f"{sample.image_path}: cannot read image ({e})") from e


def _int32_points(shape: dict[str, Any]) -> np.ndarray:
    # The released code casts to int32, which truncates towards zero.
    return np.asarray(shape["points"], dtype=np.float64).astype(np.int32)


def fill_shapes(shapes: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Rasterise LabelMe shapes into an HxW uint8 mask: 0 background, 1 target, 255 ignore.

    The released rule (see the module docstring): ``flag`` shapes skipped, outline + fill with OpenCV,
    largest rasterised area first in numpy 1.24's argsort order, ``ignore`` labels as 255
    (:data:`cores.evaluation.metrics.IGNORE_INDEX`), all others as 1.

    Raises:
        ValueError: if ``height`` or ``width`` is not positive.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    kept: list[tuple[str, np.ndarray]] = []
    areas: list[int] = []
    for shape in shapes:
        label = shape["label"].lower()
        if label == "flag":
            continue
        points = _int32_points(shape)
        alone = np.zeros((height, width), np.uint8)
        draw_polygon(alone, points, 1)
        areas.append(int(alone.sum()))
        kept.append((label, points))
    mask = np.zeros((height, width), np.uint8)
    for index in reversed(argsort_numpy124(areas)):
        label, points = kept[index]
        draw_polygon(mask, points, IGNORE_INDEX if "ignore" in label else 1)
    return mask


def load_gt_mask(sample: ReasonSegSample, height: int, width: int) -> np.ndarray:
    """Rasterise the sample's shapes into an HxW uint8 mask: 0 background, 1 target, 255 ignore.

    ``height``/``width`` are those of the decoded image (see :func:`load_image`); see :func:`fill_shapes`.
    """
    return fill_shapes(sample.shapes, height, width)


# ------------------------------------------------------------------------------------ mask -> polygons

# The 8 neighbours in clockwise order (image coordinates, y down), starting West: (drow, dcol).
_RING = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))
_RING_INDEX = {d: i for i, d in enumerate(_RING)}


def _trace_outer(padded: np.ndarray, start: tuple[int, int]) -> list[tuple[int, int]]:
    """Moore-neighbour tracing of the outer boundary of the 8-connected component at ``start``.

    ``start`` must be the component's first pixel in raster order (so its West neighbour is
    background); ``padded`` has a False border so neighbours never fall outside. Returns the
    boundary pixels (row, col) in clockwise order, each visit listed (a pixel may repeat).
    """
    boundary = [start]
    cur = start
    back = 0  # direction (ring index) from cur to the last background pixel examined
    first_step: tuple[int, int] | None = None
    while True:
        for k in range(1, 9):
            d = (back + k) % 8
            nxt = (cur[0] + _RING[d][0], cur[1] + _RING[d][1])
            if padded[nxt]:
                break
        else:
            return boundary  # isolated pixel
        prev = _RING[(d - 1) % 8]
        back_abs = (cur[0] + prev[0], cur[1] + prev[1])
        if first_step is None:
            first_step = nxt
        elif cur == start and nxt == first_step:
            boundary.pop()  # the closing visit of start
            return boundary
        back = _RING_INDEX[(back_abs[0] - nxt[0], back_abs[1] - nxt[1])]
        cur = nxt
        boundary.append(cur)


def _drop_collinear(path: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Remove vertices where a closed path keeps the same step (exact for 8-connected steps)."""
    n = len(path)
    if n < 3:
        return path
    keep = []
    for i in range(n):
        a, b, c = path[i - 1], path[i], path[(i + 1) % n]
        if (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1]):
            keep.append(b)
    return keep or path[:1]


def mask_to_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """Outer boundaries of a bool mask as polygons ``[[x, y], ...]`` through pixel centres.

    One polygon per 8-connected component; holes are not represented, so filling the polygons
    (outline included) gives back the mask with its holes filled. Components lying inside another
    component's hole are covered by that component's polygon and get none of their own.

    Raises:
        ValueError: if ``mask`` is not a 2-D bool array.
    """
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"mask must be a 2-D bool array, got shape {mask.shape} dtype {mask.dtype}")
    padded = np.pad(mask, 1, constant_values=False)
    remaining = padded.copy()
    # Every component starts at a pixel whose West neighbour is background.
    starts = np.flatnonzero(padded[:, 1:] & ~padded[:, :-1])
    width = padded.shape[1] - 1
    polygons: list[list[list[int]]] = []
    for flat in starts:
        r, c = divmod(int(flat), width)
        c += 1
        if not remaining[r, c]:
            continue
        path = _drop_collinear(_trace_outer(padded, (r, c)))
        rows = [p[0] for p in path]
        cols = [p[1] for p in path]
        r0, c0 = min(rows), min(cols)
        filled = np.zeros((max(rows) - r0 + 1, max(cols) - c0 + 1), np.uint8)
        draw_polygon(filled, np.array([(x - c0, y - r0) for y, x in path], dtype=np.int32), 1)
        box = remaining[r0 : r0 + filled.shape[0], c0 : c0 + filled.shape[1]]
        box &= ~filled.astype(bool)
        remaining[r, c] = False
        polygons.append([[x - 1, y - 1] for y, x in path])
    return polygons


# --------------------------------------------------------------------------------------------- writing


def write_sample(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    text: list[str],
    is_sentence: bool,
    masks: list[tuple[str, np.ndarray]],
) -> ReasonSegSample:
    """Write ``<stem>.jpg`` (JPEG quality 95) and ``<stem>.json`` in ReasonSeg format.

    Args:
        out_dir: destination folder, created if missing.
        stem: file name stem, without directories or suffix.
        image: HxWx3 uint8 RGB.
        text: queries for the sample (at least one).
        is_sentence: whether the queries are sentences.
        masks: ``(label, HxW bool mask)`` pairs; each becomes one LabelMe polygon per connected
            component, outer boundary only (holes are filled). A label containing ``ignore`` marks
            pixels excluded from evaluation. On reading, overlapping polygons are filled largest first.

    Returns:
        The written sample, as :func:`iter_samples` would read it.

    Raises:
        ValueError: on a bad stem, image, text or mask shape.
    """
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(f"stem must be a plain file name stem, got {stem!r}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if not text or not all(isinstance(t, str) for t in text):
        raise ValueError("text must be a non-empty list of strings")
    height, width = image.shape[:2]
    shapes: list[dict[str, Any]] = []
    for label, mask in masks:
        if mask.shape != (height, width):
            raise ValueError(f"mask {label!r} has shape {mask.shape}, image is {height}x{width}")
        for points in mask_to_polygons(np.asarray(mask, dtype=bool)):
            shapes.append(
                {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_path = out_dir / f"{stem}.jpg"
    json_path = out_dir / f"{stem}.json"
    Image.fromarray(image, mode="RGB").save(image_path, format="JPEG", quality=JPEG_QUALITY)
    anno = {
        "text": list(text),
        "is_sentence": bool(is_sentence),
        "shapes": shapes,
        "imagePath": image_path.name,
        "imageHeight": height,
        "imageWidth": width,
    }
    json_path.write_text(json.dumps(anno, indent=1), encoding="utf-8")
    logger.debug("wrote %s (%d polygon(s))", json_path, len(shapes))
    return ReasonSegSample(image_path, json_path, list(text), bool(is_sentence), shapes)
