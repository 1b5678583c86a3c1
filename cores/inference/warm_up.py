"""Warm a pipeline's fast paths before it serves: every bucket shape compiled/captured once, timed."""

from __future__ import annotations

import logging
import time

from cores.inference.pipeline import CoresPipeline

logger = logging.getLogger(__name__)


def warm_up(pipeline: CoresPipeline, max_batch: int | None = None) -> dict[str, float]:
    """Run every fast-path shape up to ``max_batch`` rows (default: the pipeline's micro-batch, else the
    largest bucket) for both prompt templates' prefixes; returns seconds per shape plus ``total``.

    Raises:
        ValueError: the pipeline has no fast paths, or no prefix cache to build shapes on.
    """
    fast = pipeline.fast
    if fast is None or not pipeline.use_prefix_cache:
        raise ValueError("warm-up needs a pipeline with fast paths and the prefix cache")
    limit = max_batch or pipeline.micro_batch or max(fast.config.batch_buckets)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    prefixes = {}
    for is_sentence in (False, True):
        ids = pipeline.prompt_ids("warm-up", is_sentence=is_sentence, with_answer=True)
        prefix, _ = pipeline._split_prefix([ids])
        assert prefix is not None
        prefixes[prefix.ids] = prefix
    for n, prefix in enumerate(prefixes.values()):
        for name, seconds in fast.warm_up(prefix, max_batch=limit).items():
            timings[name if n == 0 else f"{name} prefix={n}"] = seconds
    timings["total"] = time.perf_counter() - started
    logger.info("warm-up done: %d shapes in %.1f s", len(timings) - 1, timings["total"])
    return timings
