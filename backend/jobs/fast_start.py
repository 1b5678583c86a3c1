"""The worker's model with its fast paths: built from ``FastPathSettings``, warmed up before the worker
registers, and switched to a new model version in place when the architecture is the same.

cores is imported inside the functions (the worker's process only).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from backend.operations.fast_path_settings import FastPathSettings
from backend.operations.settings import Settings

if TYPE_CHECKING:
    from cores.inference.pipeline import CoresPipeline

logger = logging.getLogger(__name__)


def build_pipeline(
    checkpoint: str, settings: Settings, fast: FastPathSettings | None = None
) -> CoresPipeline:
    """Load ``checkpoint`` with the fast paths ``fast`` (default: from the environment) turn on for the
    device, and the bulk micro-batch: ``CORES_MICRO_BATCH`` or ``PREDICT_BATCH_SIZE``, capped on CUDA by
    free memory (``cores.inference.memory``)."""
    from cores.inference.devices import resolve_device
    from cores.inference.fast_paths import FastPathConfig
    from cores.inference.memory import free_device_bytes, micro_batch_size
    from cores.inference.pipeline import CoresPipeline

    fast = fast or FastPathSettings.from_env()
    device = resolve_device(settings.device)
    config = None
    if fast.fast_paths_on(device.type):
        config = FastPathConfig(
            compile_sam=fast.compile_sam, batch_buckets=fast.batch_buckets, length_buckets=fast.length_buckets
        )
    pipeline = CoresPipeline.from_pretrained(
        checkpoint,
        device=str(device),
        dtype=settings.dtype,
        sam_attention=fast.sam_attention,
        fast_paths=config,
    )
    requested = fast.micro_batch or settings.predict_batch_size
    pipeline.micro_batch = micro_batch_size(pipeline.model, requested, free_device_bytes(pipeline.device))
    logger.info(
        "fast paths %s (graphs %s), bulk micro-batch %d",
        "on" if pipeline.fast is not None else "off",
        "captured" if pipeline.fast is not None and pipeline.fast.capture else "not captured",
        pipeline.micro_batch,
    )
    return pipeline


def warm_up_pipeline(
    pipeline: CoresPipeline, fast: FastPathSettings | None = None
) -> dict[str, float] | None:
    """Compile/capture every shape now (``CORES_WARMUP``; CPU workers skip it); None when skipped."""
    from cores.inference.warm_up import warm_up

    fast = fast or FastPathSettings.from_env()
    if pipeline.fast is None or not fast.warm_up_on(pipeline.device.type):
        logger.info("warm-up skipped on %s (fast paths %s)", pipeline.device, pipeline.fast is not None)
        return None
    return warm_up(pipeline)


def adopt_in_place(pipeline: CoresPipeline, checkpoint: str) -> bool:
    """Switch ``pipeline`` to ``checkpoint``'s weights in place when its graphs are captured and the
    architecture, chain and vocabulary are the same (captured graphs stay valid); False when it cannot
    (the caller loads a new pipeline, which captures again).
    """
    if pipeline.fast is None or not pipeline.fast.capture:
        return False
    from cores.checkpoints.loading import load_checkpoint

    new = load_checkpoint(checkpoint, device="cpu", dtype=pipeline.model.dtype, sam_attention="reference")
    same_text = new.model.chain_tokens == pipeline.model.chain_tokens and (
        new.tokenizer.get_vocab() == pipeline.tokenizer.get_vocab()
    )
    if not same_text:
        logger.info("new version has another chain or vocabulary: loading it anew")
        return False
    try:
        pipeline.fast.adopt_weights(new.model.state_dict())
    except ValueError as exc:
        logger.info("new version does not fit the captured model (%s): loading it anew", exc)
        return False
    pipeline.checkpoint = replace(pipeline.checkpoint, config=new.config, path=new.path)
    pipeline.clear_cache()
    if pipeline.encodings is not None:  # the stored encodings of other encoder weights must not be read
        pipeline.encodings = type(pipeline.encodings)(pipeline.encodings.store, pipeline.model)
    logger.info("adopted %s in place (captured graphs kept)", checkpoint)
    return True
