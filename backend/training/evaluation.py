"""Scoring model versions on the held-out split of the correction log (``backend.corrections.held_out``),
in the worker after a fine-tune: the trained version and the served one on the same exported samples."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from backend.corrections.held_out import CORRECTED_BELOW_IOU
from backend.operations.settings import Settings

logger = logging.getLogger(__name__)


def held_out_scores(checkpoint: str, data: Path, settings: Settings) -> dict[str, Any]:
    """Load ``checkpoint`` on the worker's device, segment every exported held-out sample of ``data`` (a
    ReasonSeg folder from ``export_records``) and score it per level.

    Returns:
        ``cores.training.validation.level_scores``'s dict (``giou``, ``ciou``, ``count`` of the final
        level; ``levels`` with ``giou``, ``ciou``, ``count``, ``mean_correction``, ``correction_rate``)
        plus ``seconds``.
    """
    from cores.inference.pipeline import CoresPipeline
    from cores.training.data import load_training_samples
    from cores.training.validation import level_scores

    started = time.perf_counter()
    pipe = CoresPipeline.from_pretrained(checkpoint, device=settings.device, dtype=settings.dtype)
    device = pipe.device
    try:
        samples = load_training_samples(data, pipe.chain_tokens)
        scores = level_scores(pipe, samples, corrected_below=CORRECTED_BELOW_IOU)
    finally:
        del pipe  # free the model now: the worker loads the served one again after training
        gc.collect()
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
    scores["seconds"] = round(time.perf_counter() - started, 2)
    logger.info("held-out scores of %s on %d sample(s): gIoU %s", checkpoint, len(samples), scores["giou"])
    return scores
