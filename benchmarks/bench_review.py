"""Benchmark: what review scoring adds to one prediction, against work the worker does anyway.

Usage::

    .venv/bin/python benchmarks/bench_review.py [--levels 2] [--height 768] [--width 1024]

Prints, best of 7 rounds of 10 calls, the milliseconds of ``cores.inference.confidence.level_statistics`` on
the levels' 256x256 low-resolution logits (in the worker, beside SAM's decoder) and of
``backend.review.score.review_score`` on full-size masks, each next to a baseline in the same process: the
bilinear upscale of the same logits to 1024x1024 that SAM's postprocessing does for every prediction.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.review.score import review_score
from cores.inference.confidence import level_statistics


def best_ms(fn: Callable[[], object], calls: int = 10, rounds: int = 7) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1000)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    torch.manual_seed(0)
    logits = torch.randn(args.levels, 256, 256).cumsum(-1).cumsum(-2) / 50  # smooth blobs
    upscale = best_ms(
        lambda: F.interpolate(logits[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    )
    stats = best_ms(lambda: level_statistics(logits))
    masks = (F.interpolate(logits[:, None], (args.height, args.width), mode="bilinear")[:, 0] > 0).numpy()
    levels = [
        {"index": k + 1, "mask": masks[k], "score": 0.8, "stats": {"margin": 0.7}} for k in range(args.levels)
    ]
    score = best_ms(lambda: review_score(levels))
    print(f"torch threads {torch.get_num_threads()}, {args.levels} levels, masks {args.height}x{args.width}")
    print(f"baseline: upscale to 1024x1024     {upscale:8.2f} ms")
    print(f"level_statistics (boundary margin) {stats:8.2f} ms  ({stats / upscale:.2f}x the baseline)")
    print(f"review_score (the whole score)     {score:8.2f} ms  ({score / upscale:.2f}x the baseline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
