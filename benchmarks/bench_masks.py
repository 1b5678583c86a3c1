"""Benchmark: how large each mask format is, and what polygons cost, on a few realistic masks.

Usage::

    .venv/bin/python benchmarks/bench_masks.py [--height 768] [--width 1024] [--json out.json]

One line per mask kind: brush RLE bytes (as JSON, the way Label Studio carries ``value.rle``), the bitmask
PNG data URL's characters (``backend.label_studio.formats.bitmask``), the polygons' point count and JSON
size, their IoU with the mask, and the milliseconds each encoder took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.label_studio.formats.bitmask import bitmask_value
from backend.label_studio.formats.brush import brush_value
from backend.label_studio.formats.polygon import polygon_values


def masks(height: int, width: int) -> dict[str, np.ndarray]:
    """Smooth blob, blob with holes, SAM-like blocky pieces, thin structures."""
    yy, xx = np.mgrid[:height, :width]

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((yy - cy * height) / (ry * height)) ** 2 + ((xx - cx * width) / (rx * width)) ** 2 <= 1

    blob = ellipse(0.5, 0.5, 0.3, 0.35)
    holes = blob & ~ellipse(0.45, 0.4, 0.08, 0.06) & ~ellipse(0.55, 0.62, 0.06, 0.09)
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.random((height // 16, width // 16)) > 0.6, np.ones((16, 16), dtype=bool))
    thin = np.zeros((height, width), dtype=bool)
    thin[:, width // 3 :: width // 6] = True
    thin[height // 2, :] = True
    return {"blob": blob, "blob_with_holes": holes, "blocky_pieces": blocks, "thin_lines": thin}


def measure(mask: np.ndarray) -> dict[str, float | int]:
    started = time.perf_counter()
    rle = brush_value(mask)["rle"]
    brush_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    url = bitmask_value(mask)["imageDataURL"]
    png_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    values, iou = polygon_values(mask)
    polygon_ms = (time.perf_counter() - started) * 1000
    return {
        "brush_rle_json_bytes": len(json.dumps(rle, separators=(",", ":"))),
        "bitmask_data_url_chars": len(url),
        "polygons": len(values),
        "polygon_points": sum(len(v["points"]) for v in values),
        "polygon_json_bytes": len(json.dumps(values, separators=(",", ":"))),
        "polygon_iou": iou,
        "brush_ms": round(brush_ms, 1),
        "bitmask_ms": round(png_ms, 1),
        "polygon_ms": round(polygon_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = {name: measure(mask) for name, mask in masks(args.height, args.width).items()}
    for name, row in results.items():
        print(
            f"{name:16s} brush RLE {row['brush_rle_json_bytes']:>7d} B"
            f" | bitmask PNG {row['bitmask_data_url_chars']:>7d} B"
            f" | {row['polygons']:>3d} polygon(s), {row['polygon_points']:>5d} points"
            f", {row['polygon_json_bytes']:>7d} B, IoU {row['polygon_iou']:.4f}"
            f" | {row['brush_ms']} / {row['bitmask_ms']} / {row['polygon_ms']} ms"
        )
    if args.json:
        args.json.write_text(json.dumps({"size": [args.height, args.width], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
