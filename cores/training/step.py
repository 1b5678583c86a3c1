"""The teacher-forced training forward: the inference pieces of :class:`CoresModel`, plus losses.

Per batch: cached image encodings (frozen SAM/CLIP, no gradient) from :meth:`CoresPipeline.set_image`;
:meth:`~CoresModel.embed_sequence` and one :meth:`~CoresModel.hidden_states` pass over the batch;
cross-entropy on the answer tokens; :meth:`~CoresModel.select_chain_states` ->
:meth:`~CoresModel.seg_embeddings` -> :meth:`~CoresModel.decode_chain` per sample, the low-res logits
upscaled to the image size (:func:`cores.modeling.sam.upscale_logits`, as for inference) and scored against
every supervised level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cores.inference.pipeline import CoresPipeline
from cores.modeling.model import CoresModel
from cores.modeling.sam import upscale_logits
from cores.training.data import TrainingExample
from cores.training.losses import (
    BCE_WEIGHT,
    CE_WEIGHT,
    DICE_WEIGHT,
    IGNORE_LABEL,
    masked_bce,
    masked_dice,
    shifted_ce,
)


@dataclass
class BatchLoss:
    """``total`` carries the gradient; the parts are detached floats for logging.

    ``mask`` is the mean of ``2*BCE + 0.5*Dice`` over the batch's supervised (sample, level) masks;
    ``bce``/``dice`` are their unweighted means; ``masks`` counts them; ``tokens`` counts answer tokens.
    """

    total: torch.Tensor
    ce: float
    mask: float
    bce: float
    dice: float
    masks: int
    tokens: int


def answer_labels(expanded_ids: torch.Tensor, answer_start: int) -> torch.Tensor:
    """Labels over the image-expanded sequence: its ids from ``answer_start`` (an index into the expanded
    sequence) on, :data:`IGNORE_LABEL` before (prompt, image tokens)."""
    labels = expanded_ids.clone()
    labels[:answer_start] = IGNORE_LABEL
    return labels


def batch_loss(model: CoresModel, pipe: CoresPipeline, examples: Sequence[TrainingExample]) -> BatchLoss:
    """``CE_WEIGHT * CE`` (mean over the batch's answer tokens) + the mean mask loss over every supervised
    level of every example. Runs in the caller's grad/autocast context; image encoders never get gradients.
    """
    states = pipe.set_images([ex.image for ex in examples], keys=[ex.image_key for ex in examples])
    embeds, expanded = [], []
    for ex, state in zip(examples, states, strict=True):
        e, x = model.embed_sequence(ex.ids, state.clip_tokens)
        embeds.append(e)
        expanded.append(x)
    hidden = model.hidden_states(embeds)
    ce_sum = hidden[0].new_zeros((), dtype=torch.float32)
    tokens = 0
    per_mask, bce, dice = [], [], []
    for ex, state, h, x in zip(examples, states, hidden, expanded, strict=True):
        shift = x.shape[0] - ex.ids.shape[0]  # image tokens - 1, all before the answer
        total, count = shifted_ce(h, answer_labels(x, ex.answer_start + shift), model.llm.lm_head)
        ce_sum = ce_sum + total
        tokens += count
        if not bool(ex.supervised.any()):
            continue
        prompts = model.seg_embeddings(model.select_chain_states(h, x)).unsqueeze(0)  # 1xNxD
        low_res, _ = model.decode_chain(state.sam_embedding, prompts)  # 1xNxLxL
        logits = upscale_logits(model.sam, low_res[0].unsqueeze(1), state.sam_input)[:, 0]  # NxHxW
        keep = ex.supervised.to(logits.device)
        target = ex.masks.to(logits.device)[keep]
        level_bce, level_dice = masked_bce(logits[keep], target), masked_dice(logits[keep], target)
        per_mask.append(BCE_WEIGHT * level_bce + DICE_WEIGHT * level_dice)
        bce.append(level_bce.detach())
        dice.append(level_dice.detach())
    ce = ce_sum / max(tokens, 1)
    mask = torch.cat(per_mask).mean() if per_mask else ce.new_zeros(())
    return BatchLoss(
        total=CE_WEIGHT * ce + mask,
        ce=float(ce.detach()),
        mask=float(mask.detach()),
        bce=float(torch.cat(bce).mean()) if bce else 0.0,
        dice=float(torch.cat(dice).mean()) if dice else 0.0,
        masks=sum(int(m.numel()) for m in per_mask),
        tokens=tokens,
    )
