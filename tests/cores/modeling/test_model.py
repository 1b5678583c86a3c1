"""The chain inside the model: hidden-state selection, level-2 dense prompt, refiner, shapes, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cores.errors import ChainError
from cores.inference.pipeline import CoresPipeline
from cores.modeling.refiner import TokenRefiner
from cores.modeling.tokenizer import IMAGE_TOKEN_ID


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint) -> CoresPipeline:
    return CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((48, 72, 3)) * 255).astype(np.uint8)


def test_select_chain_states_takes_the_state_before_each_token(pipe):
    model = pipe.model
    sema, seg = model.chain_token_ids
    ids = torch.tensor([1, 5, IMAGE_TOKEN_ID, IMAGE_TOKEN_ID, 7, sema, 9, seg, 2])
    hidden = torch.arange(len(ids), dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    states = model.select_chain_states(hidden, ids)
    assert states[:, 0].tolist() == [4.0, 6.0]  # positions of sema (5) and seg (7), minus one


@pytest.mark.parametrize(
    ("ids", "message"),
    [([1, 9, 2], "found 0"), ([1, 401, 400, 2], "out of order"), ([1, 400, 400, 401, 2], "found 2")],
)
def test_select_chain_states_rejects_bad_chains(pipe, ids, message):
    model = pipe.model
    ids_t = torch.tensor(ids)
    with pytest.raises(ChainError, match=message):
        model.select_chain_states(torch.zeros(len(ids), 4), ids_t)


def test_seg_head_is_fed_the_hidden_state_before_each_chain_token(pipe, image):
    """End to end: what enters ``text_hidden_fcs`` equals the independent forward's state at j-1, not j."""
    model = pipe.model
    seen = []
    hook = model.text_hidden_fcs[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        pipe.segment(image, "the thing you would use to cut the bread")
    finally:
        hook.remove()
    state = pipe.set_image(image)
    ids = pipe.prompt_ids("the thing you would use to cut the bread", is_sentence=None, with_answer=True)
    embeds, expanded = model.embed_sequence(ids, state.clip_tokens)
    with torch.no_grad():
        hidden = model.llm.model(inputs_embeds=embeds[None]).last_hidden_state[0]
    fed = seen[0].reshape(-1, hidden.shape[-1])
    for level, tid in enumerate(model.chain_token_ids):
        j = int((expanded == tid).nonzero())
        torch.testing.assert_close(fed[level], hidden[j - 1])
        assert not torch.allclose(fed[level], hidden[j])
    # The image expansion shifts positions by (P - 1): the token positions are found by id, not by offset.
    n_image = int((expanded == IMAGE_TOKEN_ID).sum())
    assert n_image == state.clip_tokens.shape[0] == 16
    assert len(expanded) == len(ids) - 1 + n_image


def test_level_two_dense_prompt_is_level_one_logits(pipe, image):
    model = pipe.model
    prompts, decoded = [], []
    h1 = model.sam.prompt_encoder.register_forward_hook(
        lambda m, args, kwargs, out: prompts.append(kwargs["masks"]), with_kwargs=True
    )
    h2 = model.sam.mask_decoder.register_forward_hook(lambda m, args, out: decoded.append(out[0].detach()))
    try:
        pipe.segment(image, "the red cup")
    finally:
        h1.remove()
        h2.remove()
    assert prompts[0] is None
    assert prompts[1] is decoded[0] or torch.equal(prompts[1], decoded[0])
    assert decoded[0].shape == (1, 1, 32, 32)  # low-res logits: 4x the 8x8 tiny SAM embedding grid
    assert decoded[0].min() < 0 < decoded[0].max()  # raw logits, not binarised or sigmoid


def test_output_shapes_dtypes_and_levels(pipe, image):
    result = pipe.segment(image, "the thing you would use to cut the bread")
    assert [lv.index for lv in result.levels] == [1, 2]
    assert [lv.token for lv in result.levels] == ["[SEG_SEMA]", "[SEG]"]
    assert [lv.text for lv in result.levels] == ["It usually appears on [SEG_SEMA].", "It is [SEG]."]
    for level in result.levels:
        assert level.mask.shape == image.shape[:2]
        assert level.mask.dtype == np.bool_
        assert isinstance(level.score, float)
    assert set(result.timings) >= {"encode_images", "language_model", "masks", "total"}


def test_bf16_runs_on_cpu(tiny_checkpoint, image):
    pipe = CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype="bfloat16")
    result = pipe.segment(image, "the red cup")
    assert pipe.model.dtype == torch.bfloat16
    assert result.levels[1].mask.shape == image.shape[:2]


def test_refiner_variant_is_used_when_its_keys_exist(tiny_checkpoints, image):
    pipe = CoresPipeline.from_pretrained(tiny_checkpoints["cores-refiner"], device="cpu")
    calls = []
    hook = pipe.model.refiner.register_forward_hook(lambda m, args, out: calls.append(args))
    try:
        pipe.segment(image, "the red cup")
    finally:
        hook.remove()
    assert len(calls) == 1  # level 2 only: level 1 has no previous mask
    sparse, _, previous = calls[0]
    assert sparse.shape == (1, 1, 32)
    assert previous.shape == (1, 1, 32, 32)


def test_refiner_prototype_is_a_masked_mean():
    embedding = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[..., :2, :2] = 3.0
    proto = TokenRefiner.prototype(embedding, logits)
    expected = embedding[0, :, :2, :2].mean(dim=(-2, -1))
    torch.testing.assert_close(proto[0], expected * 4 / (4 + 5e-4))
    empty = TokenRefiner.prototype(embedding, torch.full((1, 1, 4, 4), -1.0))
    assert torch.equal(empty, torch.zeros_like(empty))


def test_refiner_math_matches_its_definition():
    torch.manual_seed(0)
    refiner = TokenRefiner(dim=8, heads=2).eval()
    sparse = torch.randn(3, 1, 8)
    embedding = torch.randn(1, 8, 4, 4)
    previous = torch.randn(3, 1, 16, 16)
    out = refiner(sparse, embedding, previous)
    proto = TokenRefiner.prototype(embedding, previous)  # 3x8
    w_v = refiner.multihead_attn.in_proj_weight[16:]
    b_v = refiner.multihead_attn.in_proj_bias[16:]
    attended = refiner.multihead_attn.out_proj(proto @ w_v.T + b_v)  # one key: softmax weight 1
    expected = sparse + refiner.norm(sparse + attended.unsqueeze(1))
    torch.testing.assert_close(out, expected)


def test_decoding_many_images_in_one_call_matches_one_call_per_image(pipe):
    """The image embedding rides in the dense prompt; SAM's decoder adds the two first, so one image per
    call is bit-identical to segment-anything's own call, and a batch differs only by matmul rounding."""
    model = pipe.model
    torch.manual_seed(0)
    grid = model.sam.prompt_encoder.image_embedding_size
    images = torch.randn(3, model.sam.prompt_encoder.embed_dim, *grid)
    prompts = torch.randn(3, 2, model.sam.prompt_encoder.embed_dim)
    with torch.no_grad():
        batched, batched_scores = model.decode_chain(images, prompts)
        for i in range(3):
            # One image per call, through the decoder exactly as segment-anything's predictor calls it.
            sparse, dense = model.sam.prompt_encoder(points=None, boxes=None, masks=None)
            sparse = torch.cat([sparse, prompts[i : i + 1, :1]], dim=1)
            low, score = model.sam.mask_decoder(
                image_embeddings=images[i : i + 1],
                image_pe=model.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            single, single_scores = model.decode_chain(images[i : i + 1], prompts[i : i + 1])
            assert torch.equal(single[0, :1], low[0])
            assert torch.equal(single_scores[0, :1], score[0])
            torch.testing.assert_close(batched[i], single[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(batched_scores[i], single_scores[0], rtol=1e-5, atol=1e-6)
            assert torch.equal(batched[i] > 0, single[0] > 0)
