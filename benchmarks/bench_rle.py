"""Benchmark: Label Studio brush RLE encoding, ``backend.label_studio.rle.encode_mask`` vs the SDK's
``mask2rle``.

Usage::

    .venv/bin/python benchmarks/bench_rle.py [--height 768] [--width 1024] [--repeats 20] [--json out.json]

Prints milliseconds per mask for both encoders and the speedup on a few realistic mask kinds, after
checking that both produce the same bytes. Exits with status 1 if any output differs.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.label_studio.rle import encode_mask

logger = logging.getLogger("bench_rle")


def _star(height: int, width: int, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A star-shaped blob covering ~1/4 of the image; ``jitter`` px of per-pixel boundary noise."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    radius = np.hypot(yy - cy, xx - cx)
    angle = np.arctan2(yy - cy, xx - cx)
    limit = min(height, width) * (0.3 + 0.04 * np.sin(7 * angle + rng.uniform(0, np.pi)))
    if jitter:
        limit = limit + rng.normal(0.0, jitter, size=(height, width))
    return radius < limit


def _multi(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A dozen ragged ellipses of assorted sizes, some with holes (e.g. a shelf of objects)."""
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(12):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.03, 0.15) * height, rng.uniform(0.03, 0.15) * width
        dist = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        noisy = dist + rng.normal(0.0, 0.05, size=(height, width))
        mask |= noisy < 1.0
        if rng.random() < 0.3:
            mask &= ~(noisy < 0.2)
    return mask


def mask_kinds(height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """The benchmark masks, by name: smooth, ragged, many ragged objects, speckled, and random noise."""
    rng = np.random.default_rng(seed)
    speckle = _star(height, width, rng, jitter=0.0) ^ (rng.random((height, width)) < 0.01)
    return {
        "smooth_blob": _star(height, width, rng, jitter=0.0),
        "ragged_blob": _star(height, width, rng, jitter=3.0),
        "ragged_multi": _multi(height, width, rng),
        "speckled_blob": speckle,
        "noise_50pct": rng.random((height, width)) < 0.5,
    }


def _time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in milliseconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the process exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--height", type=int, default=768, help="mask height in pixels (default 768)")
    parser.add_argument("--width", type=int, default=1024, help="mask width in pixels (default 1024)")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed runs of our encoder per mask (best of)"
    )
    parser.add_argument("--sdk-repeats", type=int, default=3, help="timed runs of the SDK encoder per mask")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the masks")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from label_studio_sdk.converter.brush import mask2rle

    rows = []
    mismatches = 0
    print(f"{'mask':<16}{'runs':>9}{'rle bytes':>11}{'ours ms':>10}{'sdk ms':>10}{'speedup':>9}")
    for name, mask in mask_kinds(args.height, args.width, args.seed).items():
        sdk_input = mask.astype(np.uint8) * 255
        ours = encode_mask(mask)
        same = ours == mask2rle(sdk_input)
        mismatches += not same
        ours_ms = _time_ms(functools.partial(encode_mask, mask), args.repeats)
        sdk_ms = _time_ms(functools.partial(mask2rle, sdk_input), args.sdk_repeats)
        flat = mask.ravel()
        runs = int(np.count_nonzero(flat[1:] != flat[:-1])) + 1
        row = {
            "mask": name,
            "runs": runs,
            "rle_bytes": len(ours),
            "ours_ms": round(ours_ms, 3),
            "sdk_ms": round(sdk_ms, 3),
            "speedup": round(sdk_ms / ours_ms, 1),
            "identical": same,
        }
        rows.append(row)
        flag = "" if same else "  OUTPUT DIFFERS"
        speedup = f"{sdk_ms / ours_ms:.1f}x"
        print(f"{name:<16}{runs:>9}{len(ours):>11}{ours_ms:>10.2f}{sdk_ms:>10.1f}{speedup:>9}{flag}")

    if args.json is not None:
        report = {
            "height": args.height,
            "width": args.width,
            "repeats": args.repeats,
            "sdk_repeats": args.sdk_repeats,
            "seed": args.seed,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        logger.info("wrote %s", args.json)
    if mismatches:
        logger.error("%d mask(s) encoded differently from the SDK", mismatches)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
