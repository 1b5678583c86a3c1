"""How many bulk items one batched pass may hold: the micro-batch rule.

One item (an image and its query) in ``segment_batch`` needs, at its peak, about

* SAM's image encoder: ``24 x tokens x width x element`` bytes (the block's input, its norm, q/k/v, the
  MLP's 4x hidden layer and the residuals for 64x64 = 4096 tokens of width 1280: ~250 MB for ViT-H in bf16);
* the language model: ``16 x positions x hidden x element`` bytes (hidden states, q/k/v, the MLP's ~2.7x
  hidden layer, and the one layer's prefix + new keys/values that answer mode keeps: ~85 MB for LLaMA-7B
  at 640 positions in bf16);

while the weights are already resident. :func:`micro_batch_size` divides the free device memory, less a
reserve, by that sum and caps it at the requested size. The factors are estimates from the layer shapes;
``python -m cores.bench`` measures the real peak (allocated and reserved) per batch size.
"""

from __future__ import annotations

import torch

from cores.modeling.model import CoresModel

SAM_FACTOR = 24
LLM_FACTOR = 16
RESERVE_BYTES = 2 * 2**30
"""Left free for the allocator's fragmentation and other processes' work."""


def item_bytes(model: CoresModel, positions: int = 640) -> int:
    """Estimated peak bytes one bulk item adds to a batched pass (see the module docstring)."""
    element = torch.finfo(model.dtype).bits // 8
    encoder = model.sam.image_encoder
    grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    width = encoder.patch_embed.proj.out_channels
    hidden = model.llm.config.hidden_size
    return SAM_FACTOR * grid * grid * width * element + LLM_FACTOR * positions * hidden * element


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``, plus what the caching allocator holds
    unused); None elsewhere (no rule: the requested size stands)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def micro_batch_size(
    model: CoresModel, requested: int, free_bytes: int | None, *, positions: int = 640
) -> int:
    """``requested`` capped by what ``free_bytes`` hold at :func:`item_bytes` each (after
    :data:`RESERVE_BYTES`); at least 1. ``free_bytes`` None: ``requested``."""
    if requested < 1:
        raise ValueError(f"a micro-batch holds at least one item, got {requested}")
    if free_bytes is None:
        return requested
    fits = (free_bytes - RESERVE_BYTES) // item_bytes(model, positions)
    return int(max(1, min(requested, fits)))
