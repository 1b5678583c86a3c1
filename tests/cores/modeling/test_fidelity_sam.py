"""SAM's positional encoding as the released stack computes it in each dtype, and loading with the Gaussian
matrix stored in either dtype."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

from cores.checkpoints.loading import load_checkpoint
from cores.inference.pipeline import CoresPipeline
from cores.modeling.sam import DtypePositionEmbedding

G_KEY = "model.visual_model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _layers(features: int, seed: int, dtype: torch.dtype, device: str):
    torch.manual_seed(seed)
    pip = PositionEmbeddingRandom(features).to(device)
    ours = DtypePositionEmbedding(features).to(device)
    ours.load_state_dict(pip.state_dict())
    return pip, ours.to(dtype)


def _released_dense_pe(gaussian: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The released formula written out independently, every step in G's dtype: centres (i + 0.5) / size,
    2x - 1, @ G, * 2*pi, [sin, cos], channels first."""
    dtype, device = gaussian.dtype, gaussian.device
    ys = ((torch.arange(h, device=device).to(dtype) + 1) - 0.5) / h
    xs = ((torch.arange(w, device=device).to(dtype) + 1) - 0.5) / w
    grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], dim=-1)
    angles = (2 * math.pi) * ((2 * grid - 1) @ gaussian)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).permute(2, 0, 1)


def _released_point_pe(gaussian: torch.Tensor, points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Point coordinates normalised and centred in float32, then cast to G's dtype for the rest."""
    scale = torch.tensor([size[1], size[0]], dtype=torch.float32, device=points.device)
    centred = 2 * (points.float() / scale) - 1
    angles = (2 * math.pi) * (centred.to(gaussian.dtype) @ gaussian)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(64, 64), (8, 8), (5, 7)])
def test_float32_pe_is_pip_segment_anything_bit_for_bit(device, size):
    pip, ours = _layers(128, 0, torch.float32, device)
    assert torch.equal(ours(size), pip(size))
    points = torch.rand(3, 5, 2, device=device) * 1024
    assert torch.equal(
        ours.point_encoding(points, (1024, 1024)), pip.forward_with_coords(points, (1024, 1024))
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(64, 64), (8, 8), (5, 7)])
def test_bf16_pe_is_the_released_formula_in_bf16(device, size):
    _, ours = _layers(128, 1, torch.bfloat16, device)
    gaussian = ours.positional_encoding_gaussian_matrix
    assert gaussian.dtype == torch.bfloat16
    dense = ours(size)
    assert dense.dtype == torch.bfloat16
    assert torch.equal(dense, _released_dense_pe(gaussian, *size))
    # Not the float32 encoding rounded at the end: computing in bf16 is what the checkpoints saw.
    float32 = _released_dense_pe(gaussian.float(), *size).to(torch.bfloat16)
    assert not torch.equal(dense, float32)
    points = torch.rand(2, 7, 2, device=device) * 1024
    encoded = ours.point_encoding(points, (1024, 1024))
    assert encoded.dtype == torch.bfloat16
    assert torch.equal(encoded, _released_point_pe(gaussian, points, (1024, 1024)))


def test_prompt_encoder_takes_points_in_bf16(tiny_checkpoint):
    """pip SAM's own encoder fails here ("mat1 and mat2 must have the same dtype"); ours runs in bf16."""
    encoder = load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16).model.sam.prompt_encoder
    points = (torch.tensor([[[10.0, 20.0], [64.0, 100.0]]]), torch.tensor([[1, 0]]))
    with torch.no_grad():
        sparse, _ = encoder(points=points, boxes=None, masks=None)
        assert encoder.get_dense_pe().dtype == torch.bfloat16
    assert sparse.shape == (1, 3, encoder.embed_dim)


def _store_gaussian(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    shutil.copytree(src, dst)
    index = json.loads((dst / "pytorch_model.bin.index.json").read_text())
    shard = dst / index["weight_map"][G_KEY]
    state = torch.load(shard, weights_only=True)
    state[G_KEY] = state[G_KEY].to(dtype)
    torch.save(state, shard)
    return dst


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_gaussian_matrix_stored_in_either_dtype_loads_in_fp32_and_bf16(tiny_checkpoint, tmp_path, stored):
    path = _store_gaussian(tiny_checkpoint, tmp_path / "ck", stored)
    index = json.loads((path / "pytorch_model.bin.index.json").read_text())
    saved = torch.load(path / index["weight_map"][G_KEY], weights_only=True)[G_KEY]
    assert saved.dtype == stored
    image = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        pipe = CoresPipeline(load_checkpoint(path, dtype=dtype))
        gaussian = pipe.model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        assert gaussian.dtype == dtype
        assert torch.equal(gaussian, saved.to(dtype))  # as the released stack's .bfloat16() / .float()
        result = pipe.segment(image, "the red cup")
        assert [lv.mask.shape for lv in result.levels] == [(40, 52), (40, 52)]
