"""Builders: one place that turns a config and a SAM geometry into a :class:`CoresModel`."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionModel, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from cores.modeling.config import CoresConfig
from cores.modeling.model import CoresModel, build_seg_head
from cores.modeling.refiner import TokenRefiner
from cores.modeling.sam import SamGeometry, build_sam, reset_sam_buffers


def build_model(
    config: CoresConfig,
    geometry: SamGeometry,
    *,
    vision_tower: CLIPVisionModel,
    chain_token_ids: tuple[int, ...],
    refiner: bool,
) -> CoresModel:
    """Build a model with freshly initialised weights on the current default device.

    Use ``with torch.device("meta"):`` to build the full-size skeleton without memory; the vision tower is
    passed in already built (its weights live outside LISA/CoReS checkpoints).
    """
    if geometry.prompt_dim != config.out_dim:
        raise ValueError(f"SAM prompt width {geometry.prompt_dim} != seg head out_dim {config.out_dim}")
    return CoresModel(
        llm=LlamaForCausalLM(config.llama_config()),
        vision_tower=vision_tower,
        mm_projector=nn.Linear(config.mm_hidden_size, config.hidden_size),
        text_hidden_fcs=build_seg_head(config.hidden_size, config.out_dim),
        sam=build_sam(geometry),
        refiner=TokenRefiner(config.out_dim, heads=8) if refiner else None,
        chain_tokens=config.chain_tokens,
        chain_token_ids=chain_token_ids,
        vision_select_layer=config.mm_vision_select_layer,
    )


def reset_non_persistent_buffers(model: CoresModel, device: torch.device) -> None:
    """Recreate buffers that are computed, not stored (rotary frequencies, SAM pixel statistics)."""
    with torch.device(device):
        model.llm.model.rotary_emb = LlamaRotaryEmbedding(config=model.llm.config)
    reset_sam_buffers(model.sam, device)
