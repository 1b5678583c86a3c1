"""gIoU/cIoU per chain level of a pipeline on fine-tuning samples (every level that has a ground truth)."""

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


def level_scores(
    pipe: CoresPipeline, samples: Sequence[TrainingSample], *, progress: bool = False
) -> dict[str, Any]:
    """Segment every sample with its first query (``answer`` mode, as ``cores eval``) and score each
    supervised level against its mask (LISA's gIoU/cIoU, 255 ignored; see :mod:`cores.evaluation.metrics`).

    Returns:
        ``{"giou", "ciou", "count"}`` of the last level (the target; None when no sample supervises it)
        and ``"levels"``: ``[{"level", "token", "giou", "ciou", "count", "intersection", "union"}]`` for
        the levels that some sample supervises.
    """
    chain = pipe.chain_tokens
    accs = [IoUAccumulator() for _ in chain]
    for sample in tqdm(samples, desc="validate", unit="img", file=sys.stderr, disable=not progress):
        image, masks = sample.load()
        result = pipe.segment(image, sample.texts[0], is_sentence=sample.is_sentence)
        for k, supervised in enumerate(sample.supervised):
            if supervised:
                accs[k].add(result.levels[k].mask, masks[k])
    levels = [
        {"level": k + 1, "token": token, **acc.as_dict()}
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
