"""Static-shape paths (length/batch buckets, resident prefix, graph-ready calls) give today's numbers."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache

from cores.checkpoints.loading import load_checkpoint
from cores.checkpoints.tiny import make_tiny_checkpoint
from cores.inference.cuda_graphs import GraphedCall
from cores.inference.fast_paths import FastPathConfig, FastPaths, length_bucket, split_batch
from cores.inference.pipeline import CoresPipeline
from cores.modeling.static_cache import padded_causal_mask, refresh_in_place

QUERIES = ["the thing you would use to cut the bread", "the red cup", "where would a tired person sit?"]
# Small buckets so the tiny model's prompts are padded, and some lengths fall past the largest bucket.
SMALL = FastPathConfig(batch_buckets=(1, 2, 4), length_buckets=(48, 64), length_step=32)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((40, 60), (64, 48), (33, 33))]


def _suffix_embeds(pipe: CoresPipeline):
    states = pipe.set_images(_images())
    ids = [pipe.prompt_ids(q, is_sentence=None, with_answer=True) for q in QUERIES]
    prefix, suffixes = pipe._split_prefix(ids)
    embeds = [pipe.model.embed_sequence(i, s.clip_tokens)[0] for i, s in zip(suffixes, states, strict=True)]
    return prefix, embeds


def _stored_cache_states(model, embeds, prefix):
    """Yesterday's answer pass: a DynamicCache that keeps every layer's keys/values."""
    lengths = [int(e.shape[0]) for e in embeds]
    batch = torch.nn.utils.rnn.pad_sequence(list(embeds), batch_first=True)
    mask = torch.zeros((len(embeds), prefix.length + batch.shape[1]), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, : prefix.length + n] = 1
    cache = DynamicCache(config=model.llm.config)
    for layer, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
        cache.update(k.expand(len(embeds), -1, -1, -1), v.expand(len(embeds), -1, -1, -1), layer)
    out = model.llm.model(inputs_embeds=batch, attention_mask=mask, cache=cache, use_cache=True)
    return [out.last_hidden_state[row, :n] for row, n in enumerate(lengths)], cache


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return CoresPipeline(load_checkpoint(tiny_checkpoint))


def test_answer_mode_keeps_no_keys_values_and_the_same_states(pipe):
    prefix, embeds = _suffix_embeds(pipe)
    with torch.no_grad():
        stored, cache = _stored_cache_states(pipe.model, embeds, prefix)
        now = pipe.model.hidden_states(embeds, prefix)
    assert cache.get_seq_length() == prefix.length + max(e.shape[0] for e in embeds)  # it kept them all
    for a, b in zip(now, stored, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kernel", ["math", "default"])
def test_bucketed_static_states_equal_the_dynamic_ones(pipe, kernel):
    """Bit for bit with SDPA's math kernel; CPU's flash kernel blocks its sums by the key length, so a
    longer padded length moves the last bit of some states (masks stay equal, see below)."""
    prefix, embeds = _suffix_embeds(pipe)
    fast = FastPaths(pipe.model, SMALL)
    lengths = sorted({int(e.shape[0]) for e in embeds})
    assert all(length_bucket(n, SMALL.length_buckets, 32) > max(lengths) for n in lengths)  # all padded
    context = sdpa_kernel(SDPBackend.MATH) if kernel == "math" else contextlib.nullcontext()
    with torch.no_grad(), context:
        want = pipe.model.hidden_states(embeds, prefix)
        for rows in (embeds, embeds[:1], embeds * 2):  # 3 -> 2 + 1, 1, 6 -> 4 + 2
            got = fast.hidden_states(rows, prefix)
            for a, b in zip(got, (want * 2)[: len(rows)], strict=True):
                if kernel == "math":
                    assert torch.equal(a, b)
                else:
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    shapes = {key[2:] for key in fast._calls if key[0] == "language_model"}
    assert {b for b, _ in shapes} <= {1, 2, 4}
    assert not fast.capture  # CPU: the static calls run uncaptured


def test_fast_pipeline_masks_equal_the_reference_path(tiny_checkpoints):
    for layout in ("cores", "cores-refiner"):
        path = tiny_checkpoints[layout]
        fast = CoresPipeline(load_checkpoint(path), fast_paths=SMALL)
        reference = CoresPipeline(
            load_checkpoint(path, sam_attention="reference"), cache_bytes=0, prefix_cache=False
        )
        items = [(image, query, None) for image in _images() for query in QUERIES]
        expected = [reference.segment(image, query) for image, query, _ in items]
        batched = fast.segment_batch(items)
        one_by_one = [fast.segment(image, query) for image, query, _ in items]
        for got in (batched, one_by_one):
            for a, b in zip(got, expected, strict=True):
                for la, lb in zip(a.levels, b.levels, strict=True):
                    assert np.array_equal(la.mask, lb.mask)
                    assert la.score == pytest.approx(lb.score, abs=1e-5)
        assert {key[0] for key in fast.fast._calls} == {"clip", "sam_decoder", "language_model"}


def test_a_version_switch_copies_weights_and_prefix_in_place(tmp_path, tiny_checkpoint):
    other = make_tiny_checkpoint(tmp_path / "other", layout="cores", seed=3)
    pipe = CoresPipeline(load_checkpoint(tiny_checkpoint), fast_paths=SMALL)
    image, query = _images()[0], QUERIES[0]
    before = pipe.segment(image, query)
    prefix = pipe._prefix
    assert prefix is not None
    addresses = [t.data_ptr() for t in pipe.model.state_dict().values()]
    prefix_addresses = [t.data_ptr() for t in prefix.keys + prefix.values]
    new_weights = load_checkpoint(other).model.state_dict()
    pipe.fast.adopt_weights(new_weights)
    pipe.clear_cache()
    assert [t.data_ptr() for t in pipe.model.state_dict().values()] == addresses
    assert [t.data_ptr() for t in prefix.keys + prefix.values] == prefix_addresses
    after = pipe.segment(image, query)
    want = CoresPipeline(load_checkpoint(other), cache_bytes=0, prefix_cache=False).segment(image, query)
    changed = any(
        not np.array_equal(a.mask, b.mask) for a, b in zip(before.levels, after.levels, strict=True)
    )
    assert changed  # other weights, other masks
    for a, b in zip(after.levels, want.levels, strict=True):
        assert np.array_equal(a.mask, b.mask)
    broken = dict(new_weights)
    broken.pop(next(iter(broken)))
    with pytest.raises(ValueError, match="do not fit"):
        pipe.fast.adopt_weights(broken)


def test_resident_buffers_refuse_other_shapes():
    held = [torch.zeros(1, 2, 3, 4)]
    refresh_in_place(held, [torch.ones(1, 2, 3, 4)])
    assert held[0].sum() == 24
    with pytest.raises(ValueError, match="another model shape"):
        refresh_in_place(held, [torch.ones(1, 2, 5, 4)])


def test_buckets_and_masks():
    assert split_batch(13, (1, 2, 4, 8)) == [8, 4, 1]
    assert split_batch(32, (1, 2, 4, 8, 16, 32)) == [32]
    assert length_bucket(300, (320, 384), 64) == 320
    assert length_bucket(385, (320, 384), 64) == 448
    mask = padded_causal_mask(torch.tensor([2, 3]), past=2, length=3)
    assert mask.shape == (2, 1, 3, 5)
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    assert mask[1, 0].int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="hold 1"):
        FastPathConfig(batch_buckets=(2, 4))


def test_graphed_call_checks_shapes_and_runs_uncaptured_off_cuda():
    call = GraphedCall(lambda x: x * 2, (torch.ones(2, 3),))
    assert not call.captured
    assert torch.equal(call(torch.full((2, 3), 3.0)), torch.full((2, 3), 6.0))
    with pytest.raises(ValueError, match="built for shapes"):
        call(torch.ones(3, 3))


def test_warm_up_runs_every_shape_once(pipe):
    fast = FastPaths(pipe.model, SMALL)
    prefix, _ = _suffix_embeds(pipe)
    timings = fast.warm_up(prefix, max_batch=2)
    assert set(timings) == {
        f"{name} b={b}" for name in ("sam_encoder", "clip", "sam_decoder") for b in (1, 2)
    } | {f"language_model b={b} L={n}" for b in (1, 2) for n in (48, 64)}
    assert {key[2:] for key in fast._calls if key[0] == "language_model"} == {
        (b, n) for b in (1, 2) for n in (48, 64)
    }


def test_full_size_static_paths_on_the_meta_device():
    """LLaMA-7B + CLIP ViT-L/14 + SAM ViT-H shapes through every static call (no memory, no numbers)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from cores.modeling.build import build_model
    from cores.modeling.config import CORES_7B
    from cores.modeling.model import PrefixCache
    from cores.modeling.sam import SAM_GEOMETRIES, reset_sam_buffers
    from cores.modeling.vision import CLIP_VIT_L14

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            tower = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L14.to_dict()))
            model = build_model(
                CORES_7B, SAM_GEOMETRIES["vit_h"], vision_tower=tower, chain_token_ids=(1, 2), refiner=False
            )
    finally:
        torch.set_default_dtype(previous)
    reset_sam_buffers(model.sam, torch.device("meta"))
    config = model.llm.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads

    def kv() -> list[torch.Tensor]:
        return [torch.empty(1, heads, 90, dim, device="meta") for _ in range(config.num_hidden_layers)]

    prefix = PrefixCache(ids=tuple(range(90)), keys=kv(), values=kv())
    fast = FastPaths(model, FastPathConfig())
    with torch.no_grad():
        rows = [torch.empty(n, config.hidden_size, device="meta") for n in (290, 300, 350)]
        assert [tuple(h.shape) for h in fast.hidden_states(rows, prefix)] == [
            (n, 4096) for n in (290, 300, 350)
        ]
        assert {key[2:] for key in fast._calls} == {(2, 320), (1, 384)}
        assert fast.encode_clip(torch.empty(3, 3, 224, 224, device="meta")).shape == (3, 256, 4096)
        images = torch.empty(3, 256, 64, 64, device="meta")
        low_res, scores = fast.decode(images, torch.empty(3, 2, 4096, device="meta"))
        assert low_res.shape == (3, 2, 256, 256)
        assert scores.shape == (3, 2)
