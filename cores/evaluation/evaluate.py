"""gIoU / cIoU of a segmenter on a ReasonSeg folder, the way LISA and CoReS report them.

Each sample is segmented with its first query (``text[0]``) and the mask of one chain level
(by default the last, i.e. the target) is scored against the LISA ground truth
(see :mod:`cores.evaluation.metrics` and :mod:`cores.evaluation.reasonseg`).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from cores.evaluation.metrics import IoUAccumulator
from cores.evaluation.reasonseg import iter_samples, load_gt_mask, load_image

logger = logging.getLogger(__name__)


class SegmentationLevel(Protocol):
    """One level of a segmentation chain; only its mask is needed here."""

    @property
    def mask(self) -> np.ndarray:
        """HxW bool mask at the original image size."""
        ...


class SegmentationResult(Protocol):
    """What a segmenter returns: the chain levels, coarse to fine."""

    @property
    def levels(self) -> Sequence[SegmentationLevel]:
        """Chain levels; the last one is the target."""
        ...


class Segmenter(Protocol):
    """Anything that segments an image from a query (e.g. ``cores.inference.pipeline.CoresPipeline``)."""

    def segment(
        self, image: np.ndarray, query: str, *, is_sentence: bool | None = None
    ) -> SegmentationResult:
        """Segment ``image`` (HxWx3 uint8 RGB) for ``query``."""
        ...


@dataclass(frozen=True)
class SampleScore:
    """The IoU (LISA's per-image ``I / (U + 1e-5)``) of one sample, named by its file stem."""

    stem: str
    iou: float


@dataclass
class EvalReport:
    """Result of :func:`evaluate`: dataset gIoU/cIoU, per-sample IoU and wall time in seconds."""

    giou: float
    ciou: float
    count: int
    per_sample: list[SampleScore] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with the same fields; ``per_sample`` as a list of ``{"stem", "iou"}``."""
        return asdict(self)


def _level_mask(levels: Sequence[SegmentationLevel], level: int, stem: str) -> np.ndarray:
    n = len(levels)
    if not -n <= level < n:
        raise ValueError(f"{stem}: level {level} requested but the segmenter returned {n} level(s)")
    return np.asarray(levels[level].mask)


def evaluate(
    segmenter: Segmenter,
    data_dir: Path,
    *,
    level: int = -1,
    limit: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Evaluate ``segmenter`` on the ReasonSeg folder ``data_dir``.

    Args:
        segmenter: object with ``segment(image, query, *, is_sentence=None)`` whose result has
            ``levels[i].mask`` (HxW bool at the original image size).
        data_dir: folder of ``.jpg`` + ``.json`` pairs (see :func:`cores.evaluation.reasonseg.iter_samples`).
        level: which chain level to score, Python indexing (-1 = the last, the target).
        limit: score only the first ``limit`` samples in name order (None = all).
        progress: show a tqdm bar on stderr.

    Returns:
        An :class:`EvalReport`.

    Raises:
        ValueError: if ``limit`` < 1, a result lacks ``level``, or a mask is not a bool array of
            the image's size (TypeError for a non-bool mask).
        cores.evaluation.reasonseg.ReasonSegError: for a missing, empty or malformed folder; every json is
            checked before the first image is segmented.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")
    samples = list(itertools.islice(iter_samples(Path(data_dir)), limit))
    acc = IoUAccumulator()
    scores: list[SampleScore] = []
    start = time.perf_counter()
    bar = tqdm(samples, desc="eval", unit="img", file=sys.stderr, disable=not progress)
    for sample in bar:
        image = load_image(sample)
        gt = load_gt_mask(sample, image.shape[0], image.shape[1])
        result = segmenter.segment(image, sample.texts[0], is_sentence=sample.is_sentence)
        iou = acc.add(_level_mask(result.levels, level, sample.stem), gt)
        scores.append(SampleScore(sample.stem, iou))
        logger.debug("%s: IoU %.4f", sample.stem, iou)
        bar.set_postfix(giou=f"{acc.giou:.3f}", ciou=f"{acc.ciou:.3f}")
    bar.close()
    report = EvalReport(acc.giou, acc.ciou, acc.count, scores, time.perf_counter() - start)
    logger.info(
        "evaluated %d sample(s) of %s: gIoU %.4f cIoU %.4f in %.1fs",
        report.count,
        data_dir,
        report.giou,
        report.ciou,
        report.seconds,
    )
    return report
