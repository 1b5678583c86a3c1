"""Which weights fine-tuning trains: LoRA on the language model's q/v projections, plus whole modules.

The recipe (LISA, CoReS): LoRA r=8, alpha=16, dropout 0.05 on ``q_proj`` and ``v_proj`` of the LLaMA only
(not CLIP, SAM, the projector or the seg head, some of which also have ``q_proj``/``v_proj``); trained in
full: ``lm_head``, ``embed_tokens``, SAM's mask decoder, the seg head ``text_hidden_fcs`` and the token
refiner when there is one; everything else frozen. LoRA comes from unmodified peft (``LoraModel`` injected
into ``model.llm`` in place) and is merged back into the base weights with peft's ``merge_and_unload``.
"""

from __future__ import annotations

import logging

from peft import LoraConfig, LoraModel
from torch import nn

from cores.modeling.model import CoresModel

logger = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "v_proj")
#: Sub-modules of :class:`CoresModel` trained in full (those that exist).
FULLY_TRAINED = ("llm.lm_head", "llm.model.embed_tokens", "sam.mask_decoder", "text_hidden_fcs", "refiner")
ADAPTER = "default"


def add_lora(model: CoresModel, *, r: int, alpha: int, dropout: float) -> LoraModel:
    """Freeze ``model``, inject LoRA into its language model's q/v projections and unfreeze the fully
    trained modules. Returns peft's tuner (keep it for :func:`merge_lora`); ``model.llm`` is changed in
    place, so the model's own methods run the adapted language model.

    Raises:
        ValueError: ``r`` or ``alpha`` < 1, or ``dropout`` outside [0, 1).
    """
    if r < 1 or alpha < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA needs r >= 1, alpha >= 1 and 0 <= dropout < 1; got {r}, {alpha}, {dropout}")
    model.requires_grad_(False)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS), bias="none"
    )
    tuner = LoraModel(model.llm, config, ADAPTER)
    for name in FULLY_TRAINED:
        module = _submodule(model, name)
        if module is not None:
            module.requires_grad_(True)
    counts = trainable_counts(model)
    logger.info("trainable parameters: %s", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return tuner


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter of everything that requires a gradient, in registration order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def trainable_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts grouped as ``lora`` and the fully trained module names."""
    counts: dict[str, int] = {}
    for name, p in trainable_parameters(model).items():
        group = "lora" if ".lora_" in name else next((m for m in FULLY_TRAINED if name.startswith(m)), name)
        counts[group] = counts.get(group, 0) + p.numel()
    return counts


def merge_lora(tuner: LoraModel) -> nn.Module:
    """Fold the LoRA update into the q/v weights and restore plain ``nn.Linear`` layers (in place)."""
    return tuner.merge_and_unload()
