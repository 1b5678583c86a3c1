"""A base checkpoint built from LLaVA-v1 + SAM weights loads strictly and keeps the source weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cores.checkpoints.base import build_base_checkpoint
from cores.checkpoints.loading import load_checkpoint
from cores.checkpoints.tiny import make_tiny_llava, make_tiny_sam
from cores.errors import CheckpointError
from cores.inference.pipeline import CoresPipeline


@pytest.mark.parametrize("layout", ["cores", "cores-refiner", "lisa"])
def test_base_from_llava_and_sam(tmp_path, layout):
    llava = make_tiny_llava(tmp_path / "llava")
    sam = make_tiny_sam(tmp_path / "sam.pth")
    out = build_base_checkpoint(llava, sam, tmp_path / "base", layout=layout, dtype=torch.float32)

    added = json.loads((out / "added_tokens.json").read_text())
    chain = ["[SEG]"] if layout == "lisa" else ["[SEG_SEMA]", "[SEG]"]
    assert list(added) == [*chain, "<im_start>", "<im_end>"]
    loaded = load_checkpoint(out)
    model = loaded.model
    assert model.chain_token_ids == tuple(added[t] for t in chain)

    source = torch.load(llava / "pytorch_model.bin", weights_only=True)
    embed = model.llm.model.embed_tokens.weight
    old = source["model.embed_tokens.weight"]
    assert torch.equal(embed[: old.shape[0]], old)
    torch.testing.assert_close(embed[old.shape[0] :], old.mean(0, keepdim=True).expand(len(added), -1))
    assert torch.equal(
        model.llm.model.layers[1].mlp.up_proj.weight, source["model.layers.1.mlp.up_proj.weight"]
    )
    assert torch.equal(model.mm_projector.weight, source["model.mm_projector.weight"])
    sam_state = torch.load(sam, weights_only=True)
    assert torch.equal(model.sam.mask_decoder.iou_token.weight, sam_state["mask_decoder.iou_token.weight"])
    if layout == "cores-refiner":
        assert torch.all(model.refiner.norm.weight == 1.0)
        assert torch.all(model.refiner.multihead_attn.in_proj_bias == 0.0)

    pipe = CoresPipeline(loaded)
    image = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    assert len(pipe.segment(image, "the cup").levels) == len(chain)


def test_base_needs_a_sam_checkpoint(tmp_path):
    llava = make_tiny_llava(tmp_path / "llava")
    with pytest.raises(CheckpointError, match="SAM checkpoint"):
        build_base_checkpoint(llava, tmp_path / "missing.pth", tmp_path / "base")
