"""SAM encoder fast paths (SDPA / Flex kernels, trimmed windows, compile) against segment-anything's own."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, Block

from cores.modeling.flex_attention import FlexAttention
from cores.modeling.sam import SAM_GEOMETRIES, build_sam, reset_sam_buffers
from cores.modeling.sam_attention import SdpaAttention
from cores.modeling.sam_encoder import (
    TrimmedWindowBlock,
    compile_encoder,
    configure_encoder,
    pad_with_bias,
    set_kernel,
)

# A 10x10 token grid in 4x4 windows: padded to 12x12 by segment-anything (like ViT-H's 64 -> 70).
PADDED = dataclasses.replace(
    SAM_GEOMETRIES["tiny"], img_size=160, encoder_depth=3, window_size=4, global_attn_indexes=(1,)
)


def _reference_sam(geometry=PADDED):
    torch.manual_seed(0)
    sam = build_sam(geometry).eval()
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention):  # released rel-pos tables are not zero
            torch.nn.init.normal_(module.rel_pos_h, std=0.5)
            torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    return sam


@pytest.mark.parametrize("kind", ["sdpa", "flex"])
def test_fast_encoders_match_segment_anything(kind):
    reference = _reference_sam()
    fast = copy.deepcopy(reference)
    assert configure_encoder(fast, kind) == kind
    blocks = list(fast.image_encoder.blocks)
    assert {type(b) for b in blocks} == {TrimmedWindowBlock}
    assert {type(b.attn) for b in blocks} == {SdpaAttention if kind == "sdpa" else FlexAttention}
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = reference.image_encoder(x)
        got = fast.image_encoder(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert fast.state_dict().keys() == reference.state_dict().keys()


def test_trimmed_windows_equal_the_padded_blocks_exactly():
    """Same kernel, with and without trimming: qkv/proj on real tokens give the same output to the bit."""
    sam = _reference_sam()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        set_kernel(sam, "sdpa", trim_windows=False)
        assert {type(b) for b in sam.image_encoder.blocks} == {Block}
        padded = sam.image_encoder(x)
        set_kernel(sam, "sdpa", trim_windows=True)
        trimmed = sam.image_encoder(x)
    assert torch.equal(trimmed, padded)


def test_padded_tokens_get_what_qkv_gives_a_zero_token():
    linear = torch.nn.Linear(8, 24)
    qkv = linear(torch.randn(1, 5, 6, 8))
    out = pad_with_bias(qkv, linear.bias, 4)
    assert out.shape == (1, 8, 8, 24)
    assert torch.equal(out[:, :5, :6], qkv)
    zero_token = linear(torch.zeros(24 // 3))
    assert torch.equal(out[0, 7, 7], zero_token)
    assert torch.equal(out[0, 0, 6], zero_token)
    assert pad_with_bias(out, linear.bias, 4) is out  # nothing to pad


def test_reference_kind_restores_the_stock_modules():
    sam = _reference_sam()
    configure_encoder(sam, "flex")
    configure_encoder(sam, "reference")
    assert {type(b) for b in sam.image_encoder.blocks} == {Block}
    assert {type(b.attn) for b in sam.image_encoder.blocks} == {Attention}
    with pytest.raises(ValueError, match="sam_attention"):
        configure_encoder(sam, "flash")


def test_auto_picks_sdpa_off_cuda():
    sam = _reference_sam()
    assert configure_encoder(sam, "auto") == "sdpa"


def test_vit_h_shapes_on_the_meta_device():
    """The full-size encoder's trimmed windows (64x64 tokens in 70x70 windows) and folded SDPA on ``meta``
    (FlexAttention refuses the meta device)."""
    with torch.device("meta"):
        sam = build_sam(SAM_GEOMETRIES["vit_h"])
    reset_sam_buffers(sam, torch.device("meta"))
    set_kernel(sam, "sdpa")
    assert sum(type(b) is TrimmedWindowBlock and b.window_size == 14 for b in sam.image_encoder.blocks) == 28
    with torch.no_grad():
        out = sam.image_encoder(torch.empty(2, 3, 1024, 1024, device="meta"))
    assert out.shape == (2, 256, 64, 64)


def test_compiled_encoder_traces_without_graph_breaks():
    reference = _reference_sam()
    fast = copy.deepcopy(reference)
    configure_encoder(fast, "sdpa")
    compile_encoder(fast, mode=None, backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(fast.image_encoder(x), reference.image_encoder(x), rtol=1e-5, atol=1e-5)
    assert fast.state_dict().keys() == reference.state_dict().keys()
