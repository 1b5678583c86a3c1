"""Reference ReasonSeg ground truth: the released rule (LISA's ``utils/data_processing.py``) under OpenCV 4.8
and numpy 1.24.

Runs in ``.venv-ref``. Request (JSON on stdin)::

    {"samples": [{"json": PATH, "height": H, "width": W, "out": NPY}], "argsort": [[int]],
     "heapsort": [[int]], "rasters": {"height": H, "width": W, "polygons": [[[x, y]]], "out": NPY}}

For each sample the annotation is read with the default encoding, falling back to cp1252; shapes labelled
"flag" are skipped; each polygon's area is that of its own rasterisation (outline + fill on int32 points);
polygons are drawn in ``np.argsort(areas)[::-1]`` order, "ignore" labels as 255, others as 1; the HxW uint8
mask is saved to ``out``. Answer (JSON on stdout): ``texts`` (each sample's ``text``), ``argsort`` and
``heapsort`` (numpy 1.24's ``np.argsort`` of each list, default kind and ``kind="heapsort"``). ``rasters``
saves an Nx2xHxW uint8 array: per polygon, ``fillPoly`` alone and ``polylines`` then ``fillPoly`` (value 1).
"""

from __future__ import annotations

import json
import locale
import sys

import cv2
import numpy as np


def read(path: str) -> dict:
    try:
        with open(path) as handle:  # the default encoding, as the released code reads it
            return json.loads(handle.read())
    except Exception:
        with open(path, encoding="cp1252") as handle:
            return json.loads(handle.read())


def draw(mask: np.ndarray, points: list, value: int) -> None:
    polygon = np.array([points], dtype=np.int32)
    cv2.polylines(mask, polygon, True, value, 1)
    cv2.fillPoly(mask, polygon, value)


def ground_truth(anno: dict, height: int, width: int) -> np.ndarray:
    areas, kept = [], []
    for shape in anno["shapes"]:
        if shape["label"].lower() == "flag":
            continue
        alone = np.zeros((height, width), dtype=np.uint8)
        draw(alone, shape["points"], 1)
        areas.append(alone.sum())
        kept.append(shape)
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in list(np.argsort(areas)[::-1].astype(np.int32)):
        shape = kept[index]
        draw(mask, shape["points"], 255 if "ignore" in shape["label"].lower() else 1)
    return mask


def main() -> None:
    assert cv2.__version__.startswith("4.8.0"), cv2.__version__
    assert np.__version__ == "1.24.2", np.__version__
    assert locale.getpreferredencoding(False).lower().replace("-", "") == "utf8"
    request = json.load(sys.stdin)
    texts = []
    for sample in request.get("samples", []):
        anno = read(sample["json"])
        texts.append(anno["text"])
        np.save(sample["out"], ground_truth(anno, sample["height"], sample["width"]))
    rasters = request.get("rasters")
    if rasters:
        h, w = rasters["height"], rasters["width"]
        out = np.zeros((len(rasters["polygons"]), 2, h, w), np.uint8)
        for i, points in enumerate(rasters["polygons"]):
            polygon = np.array([points], dtype=np.int32)
            cv2.fillPoly(out[i, 0], polygon, 1)
            draw(out[i, 1], points, 1)
        np.save(rasters["out"], out)
    answer = {
        "texts": texts,
        "argsort": [np.argsort(np.array(v, dtype=np.uint64)).tolist() for v in request.get("argsort", [])],
        "heapsort": [
            np.argsort(np.array(v, dtype=np.uint64), kind="heapsort").tolist()
            for v in request.get("heapsort", [])
        ],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
