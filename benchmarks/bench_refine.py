"""Benchmark: a click's latency vs a query's on the same image, and a first query on a warmed image vs a cold
one, in one run, on the same weights.

Usage::

    .venv/bin/python benchmarks/bench_refine.py [--size tiny|7b] [--device cuda] [--repeats 20] [--json F]

``--size 7b`` builds LLaMA-7B + CLIP ViT-L/14 + SAM ViT-H with random weights on the device
(``cores.bench.random_checkpoint``; the real shapes, no download); ``tiny`` the test model (CPU smoke run).
Rows (milliseconds, p50 / p95 over ``--repeats``):

* ``query (repeated image)``: ``segment`` on an image whose encodings are in memory (LLM + decoder);
* ``click (model)``: ``CoresPipeline.refine`` with one positive and one negative point on the final level;
* ``click (worker)``: what a prediction job does for a click inside the worker: chain embeddings from the
  worker's ``ChainCache``, percent -> pixel prompts, ``refine``, the Label Studio brush regions;
* ``first query, cold``: a new image, nothing cached: both image encoders run;
* ``first query, warmed (store)``: a new pipeline whose memory is empty, the image in the persistent
  encoding store (what ``warm`` leaves behind);
* ``first query, warmed (memory)``: the warm job ran in this worker.

Ratios are printed against ``query (repeated image)`` and ``first query, cold``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.jobs.chain_cache import CachedChain, chain_key
from backend.jobs.payloads import TaskInput
from backend.jobs.refinement import CHAINS, refine_task
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.label_studio.predictions import build_prediction
from cores.bench import latency_stats, random_checkpoint
from cores.inference.devices import resolve_device, resolve_dtype
from cores.inference.encoding_store import EncodingStore
from cores.inference.pipeline import CoresPipeline, image_key
from cores.inference.refine import LevelPrompt

QUERY = "the thing you would use to cut the bread"
PROMPTS = ({"level": None, "points": [[40.0, 45.0, 1], [70.0, 20.0, 0]], "boxes": []},)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000


def _worker_click(pipe: CoresPipeline, image: np.ndarray, task: TaskInput) -> None:
    chain = refine_task(pipe, None, "bench", image, image_key(image), task, 0)
    assert not isinstance(chain, Exception), chain
    levels = [
        {"index": lv.index, "token": lv.token, "mask": lv.mask, "score": lv.score, "text": lv.text}
        for lv in chain.levels
    ]
    schema = parse_label_config(shipped_label_config())
    build_prediction(levels, schema, image.shape[1], image.shape[0], "bench", id_seed="1")


def run(
    size: str, device: torch.device, dtype: torch.dtype, repeats: int, hw: tuple[int, int]
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    images = [(rng.random((*hw, 3)) * 255).astype(np.uint8) for _ in range(2 * repeats + 2)]
    rows: dict[str, list[float]] = {
        k: [] for k in ("query", "click_model", "click_worker", "cold", "store", "memory")
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_checkpoint(size, device, dtype, Path(tmp))
        store = EncodingStore(Path(tmp) / "encodings", max_bytes=64 * 2**30)
        pipe = CoresPipeline(checkpoint, encoding_store=store)
        image = images[0]
        base = pipe.segment(image, QUERY)  # warm-up, fills the caches
        assert base.chain_embeddings is not None
        h, w = image.shape[:2]
        prompts = {2: LevelPrompt(points=((0.4 * w, 0.45 * h, 1), (0.7 * w, 0.2 * h, 0)))}
        CHAINS.put(
            None,
            chain_key("bench", image_key(image), QUERY),
            CachedChain(base.chain_embeddings.numpy(), base.text),
            0,
        )
        task = TaskInput(id=1, image="", query=QUERY, prompts=PROMPTS)
        _worker_click(pipe, image, task)
        for _ in range(repeats):
            rows["query"].append(_timed(lambda: pipe.segment(image, QUERY), device))
            rows["click_model"].append(
                _timed(lambda: pipe.refine(image, QUERY, base.chain_embeddings, prompts), device)
            )
            rows["click_worker"].append(_timed(lambda: _worker_click(pipe, image, task), device))
        fresh = iter(images[1:])
        other = CoresPipeline(checkpoint, encoding_store=store)  # another worker sharing the store
        for _ in range(repeats):
            cold = next(fresh)
            rows["cold"].append(
                _timed(lambda cold=cold: pipe.segment(cold, QUERY), device)
            )  # writes the store too
            other.clear_cache()  # its memory never holds the image: it reads the store
            rows["store"].append(_timed(lambda cold=cold: other.segment(cold, QUERY), device))
            warmed = next(fresh)
            pipe.set_image(warmed)  # the warm job in this worker
            rows["memory"].append(_timed(lambda warmed=warmed: pipe.segment(warmed, QUERY), device))
    return {name: latency_stats(values) for name, values in rows.items()}


LABELS = {
    "query": "query (repeated image)",
    "click_model": "click (model)",
    "click_worker": "click (worker)",
    "cold": "first query, cold",
    "store": "first query, warmed (store)",
    "memory": "first query, warmed (memory)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("7b", "tiny"), default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--image-size", default="768x1024", help="HxW of the random test images")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    h, w = (int(v) for v in args.image_size.split("x"))
    report = run(args.size, device, dtype, args.repeats, (h, w))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.size} model on {name} ({dtype}), {h}x{w} images, {args.repeats} repeats")
    query, cold = report["query"]["p50_ms"], report["cold"]["p50_ms"]
    print(f"{'path':32s} {'p50 ms':>10s} {'p95 ms':>10s} {'vs query':>9s} {'vs cold':>8s}")
    for key, label in LABELS.items():
        stats = report[key]
        p50 = stats["p50_ms"]
        print(f"{label:32s} {p50:10.2f} {stats['p95_ms']:10.2f} {p50 / query:8.3f}x {p50 / cold:7.3f}x")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "size": args.size, **report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
