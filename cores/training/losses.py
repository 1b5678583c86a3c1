"""Fine-tuning losses: next-token cross-entropy on the answer, and mask BCE + Dice with ignored pixels.

Weights follow the LISA/CoReS recipe: ``1.0 * CE + 2.0 * BCE + 0.5 * Dice``. Mask targets use the ReasonSeg
values (0 background, 1 target, :data:`cores.evaluation.metrics.IGNORE_INDEX` = 255 ignored): ignored pixels
count in neither term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cores.evaluation.metrics import IGNORE_INDEX

#: Label of token positions that the cross-entropy skips (prompt, image slot, padding).
IGNORE_LABEL = -100
CE_WEIGHT = 1.0
BCE_WEIGHT = 2.0
DICE_WEIGHT = 0.5
#: Added to the Dice numerator and denominator (in pixels): an empty target predicted empty costs 0.
DICE_SMOOTH = 1.0


def _split_target(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground 0/1, valid 0/1) float tensors of ``target``, checked against ``logits``' shape."""
    if logits.shape != target.shape:
        raise ValueError(f"mask logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ")
    valid = (target != IGNORE_INDEX).float()
    return (target == 1).float(), valid


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask binary cross-entropy, averaged over the mask's valid pixels.

    Args:
        logits: NxHxW raw mask logits.
        target: NxHxW integer masks (0, 1, 255 = ignored).

    Returns:
        N losses; a mask with no valid pixel scores 0.
    """
    fg, valid = _split_target(logits, target)
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), fg, reduction="none")
    return (per_pixel * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)


def masked_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask Dice loss ``1 - (2|P∩T| + s) / (|P| + |T| + s)`` over valid pixels, P = sigmoid(logits).

    Args:
        logits: NxHxW raw mask logits.
        target: NxHxW integer masks (0, 1, 255 = ignored).

    Returns:
        N losses in [0, 1]; ``s`` = :data:`DICE_SMOOTH`.
    """
    fg, valid = _split_target(logits, target)
    prob = torch.sigmoid(logits.float()) * valid
    inter = (prob * fg).flatten(1).sum(1)
    total = prob.flatten(1).sum(1) + (fg * valid).flatten(1).sum(1)
    return 1.0 - (2.0 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)


def shifted_ce(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of one sequence: the state at ``t - 1`` predicts ``labels[t]``.

    The output head runs only on the states that predict a supervised label, so the full TxV logits are
    never built.

    Args:
        hidden: TxH last-layer hidden states.
        labels: T target ids, :data:`IGNORE_LABEL` where nothing is predicted.
        head: the language model's output head (H -> V).

    Returns:
        (summed loss, number of supervised tokens).
    """
    if hidden.shape[0] != labels.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden states for {labels.shape[0]} labels")
    targets = labels[1:]
    keep = (targets != IGNORE_LABEL).nonzero().flatten()
    logits = head(hidden[:-1][keep]).float()
    return F.cross_entropy(logits, targets[keep], reduction="sum"), int(keep.numel())
