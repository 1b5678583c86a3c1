"""gIoU/cIoU per chain level of a pipeline on fine-tuning samples (every level that has a ground truth),
and how much an annotator would still correct."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from cores.evaluation.metrics import IoUAccumulator
from cores.inference.pipeline import CoresPipeline
from cores.training.data import TrainingSample

logger = logging.getLogger(__name__)

CORRECTED_BELOW_IOU = 0.95
"""A level counts as corrected when its IoU with the ground truth is below this."""


def level_scores(
    pipe: CoresPipeline,
    samples: Sequence[TrainingSample],
    *,
    progress: bool = False,
    corrected_below: float = CORRECTED_BELOW_IOU,
) -> dict[str, Any]:
    """Segment every sample with its first query (``answer`` mode, as ``cores eval``) and score each
    supervised level against its mask (LISA's gIoU/cIoU, 255 ignored; see :mod:`cores.evaluation.metrics`).

    Returns:
        ``{"giou", "ciou", "count"}`` of the last level (the target; None when no sample supervises it)
        and ``"levels"``: ``[{"level", "token", "giou", "ciou", "count", "intersection", "union",
        "mean_correction", "correction_rate"}]`` for the levels that some sample supervises, where
        ``mean_correction`` is the mean of ``1 - IoU`` (what the annotator would still change) and
        ``correction_rate`` the share of samples with IoU below ``corrected_below``.
    """
    chain = pipe.chain_tokens
    accs = [IoUAccumulator() for _ in chain]
    ious: list[list[float]] = [[] for _ in chain]
    for sample in tqdm(samples, desc="validate", unit="img", file=sys.stderr, disable=not progress):
        image, masks = sample.load()
        result = pipe.segment(image, sample.texts[0], is_sentence=sample.is_sentence)
        for k, supervised in enumerate(sample.supervised):
            if supervised:
                ious[k].append(accs[k].add(result.levels[k].mask, masks[k]))
    levels = [
        {
            "level": k + 1,
            "token": token,
            **acc.as_dict(),
            "mean_correction": sum(1.0 - iou for iou in ious[k]) / acc.count,
            "correction_rate": sum(iou < corrected_below for iou in ious[k]) / acc.count,
        }
        for k, (token, acc) in enumerate(zip(chain, accs, strict=True))
        if acc.count
    ]
    target = accs[-1]
    scores: dict[str, Any] = {
        "giou": target.giou if target.count else None,
        "ciou": target.ciou if target.count else None,
        "count": target.count,
        "levels": levels,
    }
    logger.info("validation gIoU per level: %s", {lv["token"]: lv["giou"] for lv in levels})
    return scores
