"""The CLIP vision tower (transformers ``CLIPVisionModel``) and its image processor.

Released LISA/CoReS checkpoints do not hold the tower's weights; ``mm_vision_tower`` names it: a hub id
(``openai/clip-vit-large-patch14``) or a folder, which may be relative to the checkpoint folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from cores.errors import CheckpointError

logger = logging.getLogger(__name__)

#: CLIP ViT-L/14 at 224 px (``openai/clip-vit-large-patch14``): 256 patch tokens of 1024 dims.
CLIP_VIT_L14 = CLIPVisionConfig(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def resolve_vision_tower(name: str, checkpoint_dir: Path | None) -> str:
    """A folder relative to the checkpoint, an existing folder, else the name as a hub id."""
    if checkpoint_dir is not None and (checkpoint_dir / name).is_dir():
        return str(checkpoint_dir / name)
    return name


def load_vision_tower(
    name: str, *, dtype: torch.dtype, device: torch.device
) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    """Load the CLIP vision tower and its processor from a folder or the Hugging Face hub cache.

    Raises:
        CheckpointError: the tower cannot be found (say which name, and how to make it available offline).
    """
    try:
        tower = CLIPVisionModel.from_pretrained(name, dtype=dtype)
        processor = CLIPImageProcessor.from_pretrained(name)
    except OSError as exc:
        raise CheckpointError(
            f"cannot load the CLIP vision tower {name!r}: {exc}. Put it in the Hugging Face cache "
            "(huggingface-cli download) or point mm_vision_tower / CORES_VISION_TOWER at a local folder"
        ) from exc
    tower.requires_grad_(False)
    nn.Module.to(tower, device)
    return tower.eval(), processor


def clip_pixels(processor: CLIPImageProcessor, image: object) -> torch.Tensor:
    """HxWx3 uint8 RGB image -> 1x3xSxS float32 pixels (resize shortest side, centre crop, normalise)."""
    array = np.asarray(image)
    if not array.flags.writeable:
        array = array.copy()
    return processor(images=array, return_tensors="pt")["pixel_values"].float()
