"""Round-2 figures for ``python -m cores.bench``: the static-shape / CUDA-graph path, cold start, memory per
bulk batch size, the SDPA kernels that really ran, JPEG decoding inside the timings.

* The graphed path is warmed first (:func:`cores.inference.warm_up.warm_up`: every bucket shape compiled
  and captured once); that cold start is reported on its own, never inside a latency.
* New-image latencies include decoding the image's JPEG bytes (what a worker does per task); repeated-image
  latencies reuse the decoded array and the cached encodings, as the worker's caches do.
* Bulk: per batch size, one untimed run (shapes, allocator), then a timed one with JPEG decoding, and the
  peak memory allocated and reserved during it.
* Kernels: the profiler's op names of one pass per stage (``aten::_scaled_dot_product_flash_attention``,
  ``..._efficient_attention``, ``..._cudnn_attention``, the math fallback, FlexAttention).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

from cores.inference.fast_paths import FastPathConfig
from cores.inference.pipeline import CoresPipeline
from cores.inference.warm_up import warm_up
from cores.modeling.sam_encoder import choose_kernel, configure_encoder

ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "flex_attention", "cudnn")


def to_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """HxWx3 uint8 -> JPEG bytes."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> HxWx3 uint8 RGB (PIL, as the worker's fetcher decodes)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call, synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000


def memory_gib(device: torch.device) -> dict[str, float | None]:
    """Peak allocated and reserved GiB since the last reset (None off CUDA)."""
    if device.type != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def attention_kernels(pipe: CoresPipeline, image: np.ndarray, query: str) -> dict[str, list[str]]:
    """Per stage, the attention ops the profiler saw in one eager pass (graph replays hide their kernels
    from the profiler, so the stages run uncaptured here: the same kernels the graphs captured)."""
    model = pipe.model
    pipe.clear_cache()
    state = pipe.set_image(image)
    pixels = torch.zeros(1, 3, model.sam.image_encoder.img_size, model.sam.image_encoder.img_size)
    side = cast(int, model.vision_tower.config.image_size)
    ids = pipe.prompt_ids(query, is_sentence=None, with_answer=True)
    prefix, suffixes = pipe._split_prefix([ids])
    embeds, _ = model.embed_sequence(suffixes[0], state.clip_tokens)
    levels, width = len(model.chain_token_ids), model.sam.prompt_encoder.embed_dim
    stages: dict[str, Callable[[], Any]] = {
        "sam_encoder": partial(model.encode_sam, pixels.to(model.device)),
        "clip": partial(model.encode_clip, torch.zeros(1, 3, side, side, device=model.device)),
        "language_model": partial(model.hidden_states, [embeds], prefix),
        "sam_decoder": partial(
            model.decode_chain, state.sam_embedding, torch.zeros(1, levels, width, device=model.device)
        ),
    }
    found: dict[str, list[str]] = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with torch.no_grad():
        for name, run in stages.items():
            run()
            with profile(activities=activities) as prof:
                run()
            ops = {e.key for e in prof.key_averages() if any(a in e.key.lower() for a in ATTENTION_OPS)}
            found[name] = sorted(ops)
    return found


def measure_graphed(
    pipe: CoresPipeline,
    *,
    jpegs: list[bytes],
    queries: tuple[str, ...],
    repeats: int,
    batch_sizes: list[int],
) -> dict[str, Any]:
    """Cold start, interactive latencies (JPEG decode included on new images), bulk throughput and peak
    memory per batch size, of a pipeline with fast paths."""
    from cores.bench import latency_stats

    device = pipe.device
    started = time.perf_counter()
    cold = warm_up(pipe, max_batch=max(batch_sizes))
    cold_s = time.perf_counter() - started
    out: dict[str, Any] = {"cold_start_s": cold_s, "cold_start_shapes": len(cold) - 1}
    out["cold_start_slowest"] = dict(sorted(cold.items(), key=lambda kv: -kv[1])[1:6])
    pipe.clear_cache()

    def new_image(i: int) -> None:
        pipe.segment(decode_jpeg(jpegs[i % len(jpegs)]), queries[i % len(queries)])

    pipe.segment(decode_jpeg(jpegs[-1]), queries[0])  # one untimed pass
    out["new_image"] = latency_stats([timed_ms(partial(new_image, i), device) for i in range(repeats)])
    same = decode_jpeg(jpegs[0])
    pipe.segment(same, queries[0])
    out["repeated_image"] = latency_stats(
        [timed_ms(partial(pipe.segment, same, queries[i % len(queries)]), device) for i in range(repeats)]
    )
    out["bulk"] = {}
    for size in batch_sizes:
        chosen = [jpegs[i % len(jpegs)] for i in range(size)]

        def bulk(batch: list[bytes] = chosen) -> None:
            items = [(decode_jpeg(b), queries[i % len(queries)], None) for i, b in enumerate(batch)]
            pipe.segment_batch(items)

        pipe.clear_cache()
        bulk()  # untimed: first run of this size
        pipe.clear_cache()
        reset_peak(device)
        try:
            ms = timed_ms(bulk, device)
        except torch.OutOfMemoryError:
            out["bulk"][str(size)] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            continue
        out["bulk"][str(size)] = {"images_per_s": size / (ms / 1000), "ms": ms, **memory_gib(device)}
    rates = [v["images_per_s"] for v in out["bulk"].values() if "images_per_s" in v]
    out["bulk_best_images_per_s"] = max(rates) if rates else None
    out["attention_kernels"] = attention_kernels(pipe, decode_jpeg(jpegs[1 % len(jpegs)]), queries[0])
    kind, trial = choose_kernel(pipe.model.sam)  # what ``sam_attention="auto"`` picks here, and why
    out["sam_attention"] = {"auto_choice": kind, "attention_ms_per_image": trial}
    return out


def graphed_pipeline(checkpoint: Any, *, compile_sam: bool, batch_buckets: tuple[int, ...]) -> CoresPipeline:
    """A pipeline with fast paths (graphs on CUDA) sharing ``checkpoint``'s model, its SAM encoder set as a
    worker loads it (``sam_attention="auto"``, trimmed windows)."""
    configure_encoder(checkpoint.model.sam, "auto")
    config = FastPathConfig(compile_sam=compile_sam, batch_buckets=batch_buckets)
    return CoresPipeline(checkpoint, fast_paths=config, micro_batch=max(batch_buckets))
