"""Refinement with clicks and boxes: coordinates as SAM's predictor maps them, level cascading, PE dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import PromptEncoder
from segment_anything.utils.transforms import ResizeLongestSide

from cores.errors import PromptError
from cores.inference.pipeline import CoresPipeline
from cores.inference.refine import LevelPrompt, level_tokens, prompt_tokens, to_sam_boxes, to_sam_coords
from cores.modeling.sam import DtypePositionEmbedding

QUERY = "the thing you would use to cut the bread"


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint) -> CoresPipeline:
    return CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")


def _image(seed: int, h: int = 48, w: int = 80) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(48, 80), (480, 640), (1000, 333), (7, 1024)])
def test_coordinates_match_segment_anythings_transform(size):
    rng = np.random.default_rng(0)
    h, w = size
    points = rng.random((5, 2)) * [w, h]
    boxes = np.sort(rng.random((3, 2, 2)) * [w, h], axis=1).reshape(3, 4)
    transform = ResizeLongestSide(1024)
    assert np.allclose(to_sam_coords(points, size, 1024), transform.apply_coords(points.copy(), size))
    assert np.allclose(to_sam_boxes(boxes, size, 1024), transform.apply_boxes(boxes.copy(), size))
    # the longest side maps to 1024 exactly (the resized image's edge), the other by the same scale
    corner = to_sam_coords(np.array([[w, h]]), size, 1024)[0]
    assert max(corner) == pytest.approx(1024, abs=1e-3)


def test_point_tokens_are_the_prompt_encoders_with_padding(pipe):
    encoder = pipe.model.sam.prompt_encoder
    size, img = (48, 80), pipe.model.sam.image_encoder.img_size
    prompt = LevelPrompt(points=((10.0, 20.0, 1), (70.0, 5.0, 0)))
    tokens = prompt_tokens(encoder, prompt, size, img)
    coords = torch.from_numpy(
        ResizeLongestSide(img).apply_coords(np.array([[10.0, 20.0], [70.0, 5.0]]), size)
    )
    sparse, _ = PromptEncoder.forward(
        encoder, points=(coords.float()[None], torch.tensor([[1, 0]])), boxes=None, masks=None
    )
    assert tokens.shape == (1, 3, encoder.embed_dim)  # two points + SAM's padding point
    assert torch.equal(tokens, sparse)
    boxed = prompt_tokens(
        encoder, LevelPrompt(points=prompt.points, boxes=((1.0, 2.0, 30.0, 40.0),)), size, img
    )
    assert boxed.shape == (1, 4, encoder.embed_dim)  # no padding point with a box: 2 points + 2 corners


def test_point_encoding_follows_the_dtype_rule():
    pe = DtypePositionEmbedding(16)
    coords = torch.tensor([[[100.0, 900.0]]])
    reference = pe.forward_with_coords(coords, (1024, 1024))
    pe16 = pe.to(torch.bfloat16)
    encoded = pe16.point_encoding(coords, (1024, 1024))
    assert encoded.dtype == torch.bfloat16
    normalised = (coords / 1024).float()
    manual = 2 * np.pi * ((2 * normalised - 1).to(torch.bfloat16) @ pe16.positional_encoding_gaussian_matrix)
    assert torch.equal(encoded, torch.cat([manual.sin(), manual.cos()], dim=-1))
    assert not torch.equal(encoded.float(), reference)  # bf16 really differs from float32


def test_a_click_changes_the_clicked_level_and_only_later_ones(pipe):
    image = _image(1)
    base = pipe.segment(image, QUERY)
    assert base.chain_embeddings is not None
    assert base.chain_embeddings.shape == (2, 32)
    again = pipe.refine(image, QUERY, base.chain_embeddings, {})
    for a, b in zip(base.levels, again.levels, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert a.score == b.score
    clicks = {2: LevelPrompt(points=((20.0, 10.0, 1), (60.0, 40.0, 0)))}
    refined = pipe.refine(image, QUERY, base.chain_embeddings, clicks)
    assert np.array_equal(refined.levels[0].mask, base.levels[0].mask)  # level 1 bit-equal
    assert refined.levels[0].score == base.levels[0].score
    assert not np.array_equal(refined.levels[1].mask, base.levels[1].mask)


@torch.no_grad()
def test_a_click_on_level_one_cascades_to_level_two(pipe):
    """On the random tiny model level 2 barely depends on its dense prompt, so this compares logits: level 2
    after a level-1 box is exactly level 2 decoded from the refined level-1 logits, and not the old one."""
    image = _image(2)
    base = pipe.segment(image, QUERY)
    state = pipe.set_image(image)
    model, encoder = pipe.model, pipe.model.sam.prompt_encoder
    embeds = base.chain_embeddings.unsqueeze(0)
    extra = level_tokens(encoder, {1: LevelPrompt(boxes=((5.0, 5.0, 60.0, 40.0),))}, 2, image.shape[:2], 128)
    before, _ = model.decode_chain(state.sam_embedding, embeds)
    after, _ = model.decode_chain(state.sam_embedding, embeds, extra)
    assert not torch.equal(after[:, 0], before[:, 0])
    assert not torch.equal(after[:, 1], before[:, 1])
    sparse, dense = encoder(points=None, boxes=None, masks=after[:, :1])
    expected, _ = model.sam.mask_decoder(
        image_embeddings=torch.zeros_like(state.sam_embedding),
        image_pe=encoder.get_dense_pe(),
        sparse_prompt_embeddings=torch.cat([sparse, embeds[:, 1:2]], dim=1),
        dense_prompt_embeddings=dense + state.sam_embedding,
        multimask_output=False,
    )
    assert torch.equal(after[:, 1:2], expected)
    refined = pipe.refine(
        image, QUERY, base.chain_embeddings, {1: LevelPrompt(boxes=((5.0, 5.0, 60.0, 40.0),))}
    )
    assert not np.array_equal(refined.levels[0].mask, base.levels[0].mask)


def test_refine_does_not_run_the_language_model_or_the_encoders(pipe):
    image = _image(3)
    base = pipe.segment(image, QUERY)
    calls = []
    hooks = [
        module.register_forward_hook(lambda *a, name=name: calls.append(name))
        for name, module in (
            ("llm", pipe.model.llm),
            ("sam", pipe.model.sam.image_encoder),
            ("clip", pipe.model.vision_tower),
        )
    ]
    try:
        pipe.refine(image, QUERY, base.chain_embeddings, {2: LevelPrompt(points=((3.0, 3.0, 1),))})
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []


def test_bad_prompts_are_clear_errors(pipe):
    image = _image(4)
    base = pipe.segment(image, QUERY)
    with pytest.raises(PromptError, match=r"levels 1\.\.2"):
        pipe.refine(image, QUERY, base.chain_embeddings, {3: LevelPrompt(points=((1.0, 1.0, 1),))})
    with pytest.raises(PromptError, match="outside"):
        pipe.refine(image, QUERY, base.chain_embeddings, {2: LevelPrompt(points=((500.0, 1.0, 1),))})
    with pytest.raises(PromptError, match="shape"):
        pipe.refine(image, QUERY, torch.zeros(3, 32), {})
    with pytest.raises(PromptError, match=r"0 \(negative"):
        LevelPrompt(points=((1.0, 1.0, 2),))
    with pytest.raises(PromptError, match="x0 <= x1"):
        LevelPrompt(boxes=((10.0, 1.0, 2.0, 5.0),))
