"""Every fast path keeps the masks of the reference path (same weights, no caches, one query at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from cores.checkpoints.loading import load_checkpoint
from cores.inference.pipeline import CoresPipeline
from cores.modeling.sam_attention import SdpaAttention, use_sdpa

QUERIES = ["the thing you would use to cut the bread", "the red cup", "where would a tired person sit?"]


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(42)
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((40, 60), (64, 48), (33, 33))]


@pytest.fixture(scope="module", params=["cores", "cores-refiner"])
def pipes(request, tiny_checkpoints):
    path = tiny_checkpoints[request.param]
    fast = CoresPipeline(load_checkpoint(path))
    reference = CoresPipeline(
        load_checkpoint(path, sam_attention="reference"), cache_bytes=0, prefix_cache=False
    )
    return fast, reference


def _same(a, b) -> None:
    for la, lb in zip(a.levels, b.levels, strict=True):
        assert np.array_equal(la.mask, lb.mask)
        assert la.score == pytest.approx(lb.score, abs=1e-4)
        assert la.text == lb.text


def test_fast_paths_keep_the_reference_masks(pipes):
    fast, reference = pipes
    items = [(image, query, None) for image in _images() for query in QUERIES]
    expected = [reference.segment(image, query) for image, query, _ in items]
    assert not reference._cache  # the reference path caches nothing
    # One query at a time, cached images and cached prefix (second pass hits the cache).
    for _ in range(2):
        for (image, query, _), want in zip(items, expected, strict=True):
            _same(fast.segment(image, query), want)
    # Bulk: every item in one batch, images encoded together.
    fast.clear_cache()
    for got, want in zip(fast.segment_batch(items), expected, strict=True):
        _same(got, want)


def test_prefix_cache_is_computed_once_and_reused(pipes):
    fast, _ = pipes
    calls = []
    original = fast.model.prefix_cache

    def spy(ids):
        calls.append(ids)
        return original(ids)

    fast._prefix = None
    fast.model.prefix_cache = spy  # type: ignore[method-assign]
    try:
        image = _images()[0]
        for query in QUERIES:
            fast.segment(image, query)
    finally:
        del fast.model.prefix_cache
    assert len(calls) == 1
    assert fast._prefix is not None
    assert fast._prefix.length > 20  # system prompt + in-context example + "USER: <im_start>"


def test_sdpa_attention_matches_segment_anything_attention(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint, sam_attention="reference").model
    for module in model.sam.image_encoder.modules():
        if hasattr(module, "rel_pos_h"):  # released rel-pos tables are not zero
            torch.nn.init.normal_(module.rel_pos_h, std=0.5)
            torch.nn.init.normal_(module.rel_pos_w, std=0.5)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert use_sdpa(model.sam, False) == 0
        eager = model.sam.image_encoder(x)
        assert use_sdpa(model.sam, True) == 2
        assert all(
            type(m) is SdpaAttention for m in model.sam.image_encoder.modules() if hasattr(m, "rel_pos_h")
        )
        fast = model.sam.image_encoder(x)
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)
    assert set(model.sam.state_dict()) == set(load_checkpoint(tiny_checkpoint).model.sam.state_dict())


def test_a_pipeline_never_changes_its_models_attention(tiny_checkpoint):
    """SAM's attention is chosen when the checkpoint loads; building pipelines on the model leaves it."""
    reference = load_checkpoint(tiny_checkpoint, sam_attention="reference")
    CoresPipeline(reference)
    CoresPipeline(reference, cache_bytes=0, prefix_cache=False)
    kinds = {type(m) for m in reference.model.sam.image_encoder.modules() if isinstance(m, Attention)}
    assert kinds == {Attention}
    fast = load_checkpoint(tiny_checkpoint)
    assert {type(m) for m in fast.model.sam.image_encoder.modules() if isinstance(m, Attention)} == {
        SdpaAttention
    }
    with pytest.raises(ValueError, match="sam_attention"):
        load_checkpoint(tiny_checkpoint, sam_attention="flash")
