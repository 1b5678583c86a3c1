"""Segmentation metrics as LISA (and CoReS) report them on ReasonSeg: gIoU and cIoU.

Per image, the foreground intersection ``I`` and union ``U`` are taken between a binarised
prediction and the ground truth, with ground-truth pixels equal to :data:`IGNORE_INDEX` left out
of both. Then

- gIoU is the mean over images of ``I / (U + 1e-5)``, an image whose union is empty scoring 1.0;
- cIoU is ``sum(I) / sum(U)`` over the dataset. When ``sum(U) == 0`` (no image had any foreground
  in either the prediction or the ground truth) it is defined as 1.0, in line with the per-image rule.

LISA divides the dataset sums by ``sum(U) + 1e-10``; the difference is far below reporting precision.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
"""Ground-truth value of pixels that are excluded from both intersection and union."""

GIOU_EPS = 1e-5
"""Added to each image's union before dividing, exactly as LISA does."""


def _check_pred(pred: np.ndarray, name: str = "prediction") -> None:
    if pred.ndim != 2:
        raise ValueError(f"{name} must be a 2-D HxW mask, got shape {pred.shape}")
    if pred.dtype != np.bool_:
        raise TypeError(
            f"{name} must be a bool mask (binarise it first, e.g. logits > 0), got dtype {pred.dtype}"
        )


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}; resize to the same HxW first")


def _gt_masks(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a ground truth into (foreground, valid) bool masks, checking its values."""
    if gt.ndim != 2:
        raise ValueError(f"ground truth must be a 2-D HxW mask, got shape {gt.shape}")
    if gt.dtype == np.bool_:
        return gt, np.ones(gt.shape, dtype=bool)
    if not np.issubdtype(gt.dtype, np.integer):
        raise TypeError(f"ground truth must be uint8 (0/1/{IGNORE_INDEX}) or bool, got dtype {gt.dtype}")
    bad = (gt != 0) & (gt != 1) & (gt != IGNORE_INDEX)
    if bad.any():
        found = np.unique(gt[bad])[:5].tolist()
        raise ValueError(f"ground truth values must be 0, 1 or {IGNORE_INDEX}; found {found}")
    return gt == 1, gt != IGNORE_INDEX


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Foreground intersection and union of one image, in pixels.

    Args:
        pred: HxW bool prediction.
        gt: HxW ground truth, uint8 with 0 = background, 1 = target and 255 = ignore (or bool,
            meaning nothing is ignored). Ignored pixels count in neither the intersection nor the union.

    Returns:
        ``(I, U)`` pixel counts.

    Raises:
        ValueError: if the shapes differ, are not 2-D, or ``gt`` holds values other than 0/1/255.
        TypeError: if ``pred`` is not bool or ``gt`` is neither integer nor bool.
    """
    _check_pred(pred)
    target, valid = _gt_masks(gt)
    _check_same_shape(pred, gt, "prediction vs ground truth")
    pred_valid = pred & valid
    inter = int(np.count_nonzero(pred_valid & target))
    union = int(np.count_nonzero(pred_valid | target))
    return inter, union


def image_iou(inter: int, union: int) -> float:
    """LISA's per-image IoU: ``inter / (union + 1e-5)``, or 1.0 when ``union == 0``."""
    if union == 0:
        return 1.0
    return inter / (union + GIOU_EPS)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Exact IoU (no epsilon) of two HxW bool masks; two empty masks score 1.0.

    Used to measure how much an annotator changed a predicted mask.

    Raises:
        ValueError: if the masks are not 2-D or their shapes differ.
        TypeError: if either mask is not bool.
    """
    _check_pred(a, "first mask")
    _check_pred(b, "second mask")
    _check_same_shape(a, b, "mask_iou")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


class IoUAccumulator:
    """Accumulates gIoU and cIoU over a dataset, one image at a time.

    Example::

        acc = IoUAccumulator()
        for pred, gt in pairs:
            acc.add(pred, gt)
        acc.as_dict()  # {"giou": ..., "ciou": ..., "count": ..., "intersection": ..., "union": ...}
    """

    def __init__(self) -> None:
        self.count = 0
        self.intersection = 0
        self.union = 0
        self._iou_sum = 0.0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one image and return its IoU (see :func:`intersection_union` for inputs and errors)."""
        inter, union = intersection_union(pred, gt)
        iou = image_iou(inter, union)
        self.count += 1
        self.intersection += inter
        self.union += union
        self._iou_sum += iou
        return iou

    def _require_images(self) -> None:
        if self.count == 0:
            raise ValueError("no images were added; gIoU/cIoU are undefined on an empty set")

    @property
    def giou(self) -> float:
        """Mean per-image IoU. Raises ValueError if no image was added."""
        self._require_images()
        return self._iou_sum / self.count

    @property
    def ciou(self) -> float:
        """Cumulative IoU ``sum(I) / sum(U)``; 1.0 if no image had any foreground.

        Raises ValueError if no image was added.
        """
        self._require_images()
        if self.union == 0:
            return 1.0
        return self.intersection / self.union

    def as_dict(self) -> dict[str, float | int]:
        """JSON-safe summary: giou, ciou, count and the summed intersection and union in pixels."""
        return {
            "giou": self.giou,
            "ciou": self.ciou,
            "count": self.count,
            "intersection": self.intersection,
            "union": self.union,
        }
