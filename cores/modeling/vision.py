"""The CLIP vision tower's configuration and its input pixels.

``CLIP_VIT_L14`` is the tower LISA/CoReS use (``openai/clip-vit-large-patch14``); loading it lives in
:mod:`cores.checkpoints.vision_tower`.

Pixels equal transformers 4.31's ``CLIPImageProcessor`` (the trained stack: Pillow 9.4) bit for bit: the
shortest side is resized to the processor's size with Pillow's resampling filter (bicubic), then
transformers' PIL-backed ``CLIPImageProcessorPil`` centre-crops, rescales and normalises (its
torchvision-backed default does not give 4.31's pixels). The resize runs as two Pillow passes, horizontal
then vertical, because that is the order Pillow 9.4 always used; Pillow 13 runs the vertical pass first when
the height shrinks much more than the width (python-pillow/Pillow#9549), which moves tall images' pixels by
a few grey levels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig

from cores.errors import CheckpointError

__all__ = ["CLIP_VIT_L14", "clip_pixels", "resize_like_pillow_9", "resized_size"]

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


def resized_size(processor: CLIPImageProcessorPil, height: int, width: int) -> tuple[int, int]:
    """(h, w) after the processor's resize, by 4.31's rule: ``shortest_edge`` S gives the short side S and the
    long side ``int(S * long / short)``; ``height``/``width`` give that size.

    Raises:
        CheckpointError: a processor size of neither form.
    """
    size = processor.size
    shortest = getattr(size, "shortest_edge", None)
    fixed_h, fixed_w = getattr(size, "height", None), getattr(size, "width", None)
    if shortest:
        short, long = sorted((height, width))
        new_long = int(shortest * long / short)
        return (new_long, shortest) if width <= height else (shortest, new_long)
    if fixed_h and fixed_w:
        return int(fixed_h), int(fixed_w)
    raise CheckpointError(f"unsupported CLIP processor size {size}: expected shortest_edge or height/width")


def resize_like_pillow_9(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """HxWx3 uint8 -> hxwx3 uint8 with Pillow's filter ``resample``, horizontal pass first (Pillow 9.4's
    order; each pass an unmodified Pillow resize along one axis)."""
    h, w = size
    pil = Image.fromarray(image)
    if pil.width != w:
        pil = pil.resize((w, pil.height), resample=resample, reducing_gap=None)
    if pil.height != h:
        pil = pil.resize((w, h), resample=resample, reducing_gap=None)
    return np.asarray(pil)


def clip_pixels(processor: CLIPImageProcessorPil, image: object) -> torch.Tensor:
    """HxWx3 uint8 RGB image -> 1x3xSxS float32 pixels (resize shortest side, centre crop, normalise), equal
    to transformers 4.31's ``CLIPImageProcessor`` on Pillow 9.4 (see the module docstring).

    The channel axis is given (last), never guessed: an image 1 or 3 pixels tall stays an image.
    """
    array = np.ascontiguousarray(np.asarray(image))
    if processor.do_resize:
        size = resized_size(processor, array.shape[0], array.shape[1])
        array = resize_like_pillow_9(array, size, int(processor.resample))
    elif not array.flags.writeable:
        array = array.copy()
    out = processor(images=array, do_resize=False, return_tensors="pt", input_data_format="channels_last")
    return out["pixel_values"].float()
