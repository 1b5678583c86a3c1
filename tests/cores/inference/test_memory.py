"""The bulk micro-batch rule, on the full-size model's shapes (built on the meta device)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from cores.inference.memory import RESERVE_BYTES, item_bytes, micro_batch_size
from cores.modeling.build import build_model
from cores.modeling.config import CORES_7B
from cores.modeling.sam import SAM_GEOMETRIES
from cores.modeling.vision import CLIP_VIT_L14


@pytest.fixture(scope="module")
def full_size():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            tower = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L14.to_dict()))
            return build_model(
                CORES_7B, SAM_GEOMETRIES["vit_h"], vision_tower=tower, chain_token_ids=(1, 2), refiner=False
            )
    finally:
        torch.set_default_dtype(previous)


def test_one_item_is_the_sam_and_language_model_activations(full_size):
    sam = 24 * 64 * 64 * 1280 * 2  # ViT-H tokens x width, bf16
    llm = 16 * 640 * 4096 * 2  # LLaMA-7B at 640 positions, bf16
    assert item_bytes(full_size) == sam + llm  # ~336 MB


def test_the_micro_batch_fits_free_memory_and_never_exceeds_the_request(full_size):
    per_item = item_bytes(full_size)
    assert micro_batch_size(full_size, 32, None) == 32  # no device memory to ask (CPU)
    assert micro_batch_size(full_size, 32, 40 * 2**30) == 32
    assert micro_batch_size(full_size, 32, RESERVE_BYTES + 10 * per_item + 1) == 10
    assert micro_batch_size(full_size, 32, RESERVE_BYTES // 2) == 1  # always at least one
    with pytest.raises(ValueError, match="at least one"):
        micro_batch_size(full_size, 0, None)
