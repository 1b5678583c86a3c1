"""The pipeline: answer vs generate, the per-image cache, batching, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cores.errors import ChainError, DeviceError, ImageError, QueryError
from cores.inference.devices import resolve_device, resolve_dtype
from cores.inference.pipeline import CoresPipeline, load_image


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint) -> CoresPipeline:
    return CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")


def _image(seed: int, h: int = 40, w: int = 56) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _forced_answer(pipe: CoresPipeline, query: str):
    prompt = pipe.prompt_ids(query, is_sentence=None, with_answer=False).tolist()
    full = pipe.prompt_ids(query, is_sentence=None, with_answer=True).tolist()
    assert full[: len(prompt)] == prompt
    answer = full[len(prompt) :]
    return lambda generated: [answer[len(generated)]] if len(generated) < len(answer) else None


def test_generate_equals_answer_when_it_generates_the_fixed_answer(pipe):
    image = _image(1)
    query = "the thing you would use to cut the bread"
    answered = pipe.segment(image, query, mode="answer")
    generated = pipe.segment(image, query, mode="generate", allowed_tokens=_forced_answer(pipe, query))
    assert generated.text == answered.text == "It usually appears on [SEG_SEMA]. It is [SEG]."
    assert [lv.text for lv in generated.levels] == [lv.text for lv in answered.levels]
    for a, g in zip(answered.levels, generated.levels, strict=True):
        assert np.array_equal(a.mask, g.mask)
        assert g.score == pytest.approx(a.score, abs=1e-4)


def test_generate_reports_a_broken_chain_with_the_models_text(pipe):
    with pytest.raises(ChainError, match="it answered"):
        pipe.segment(_image(2), "the red cup", mode="generate")


def test_second_query_on_the_same_image_skips_both_encoders(pipe):
    calls = {"sam": 0, "clip": 0}
    h1 = pipe.model.sam.image_encoder.register_forward_hook(
        lambda *a: calls.__setitem__("sam", calls["sam"] + 1)
    )
    h2 = pipe.model.vision_tower.register_forward_hook(
        lambda *a: calls.__setitem__("clip", calls["clip"] + 1)
    )
    try:
        image = _image(3)
        first = pipe.segment(image, "the red cup")
        second = pipe.segment(image.copy(), "the blue cup")
    finally:
        h1.remove()
        h2.remove()
    assert calls == {"sam": 1, "clip": 1}
    assert first.timings["image_cache_hit"] == 0.0
    assert second.timings["image_cache_hit"] == 1.0


def test_cache_is_bounded_by_bytes(tiny_checkpoint):
    pipe = CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu", cache_bytes=1)
    pipe.set_image(_image(4))
    pipe.set_image(_image(5))
    assert len(pipe._cache) == 1


def test_batch_matches_single_queries(pipe):
    items = [(_image(6), "the red cup", None), (_image(7, 64, 30), "where would you sit when tired?", None)]
    batched = pipe.segment_batch(items)
    for (image, query, _), got in zip(items, batched, strict=True):
        single = pipe.segment(image, query)
        for a, b in zip(single.levels, got.levels, strict=True):
            assert np.array_equal(a.mask, b.mask)
            assert a.score == pytest.approx(b.score, abs=1e-5)


@pytest.mark.parametrize("query", ["", "   \n "])
def test_empty_query(pipe, query):
    with pytest.raises(QueryError, match="empty"):
        pipe.segment(_image(8), query)


def test_query_too_long_for_the_context(pipe):
    words = "ü " * 900  # under the character cap; byte-fallback tokens overflow the tiny 1024 positions
    with pytest.raises(QueryError, match="context holds 1024"):
        pipe.segment(_image(8), words)
    with pytest.raises(QueryError, match="characters"):
        pipe.segment(_image(8), "x" * 3000)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_bad_image_arrays(pipe, bad):
    with pytest.raises(ImageError):
        pipe.segment(bad, "the cup")


def test_unreadable_image_files(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "corrupt.jpg")


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_image(9, 10, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (20, 10, 3)


def test_device_and_dtype_errors():
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16


def test_unknown_mode(pipe):
    with pytest.raises(ValueError, match="unknown mode"):
        pipe.segment(_image(1), "cup", mode="beam")


def test_one_level_lisa_checkpoint(tiny_checkpoints):
    pipe = CoresPipeline.from_pretrained(tiny_checkpoints["lisa"], device="cpu")
    result = pipe.segment(_image(10), "the dog")
    assert [lv.token for lv in result.levels] == ["[SEG]"]
    assert result.text == "[SEG]."


def test_eval_with_the_real_tiny_model_on_a_synthetic_reasonseg_folder(pipe, tmp_path):
    from cores.evaluation.evaluate import evaluate
    from cores.evaluation.reasonseg import write_sample

    for i in range(3):
        image = _image(20 + i, 32, 48)
        mask = np.zeros((32, 48), bool)
        mask[4 + i : 20, 6 : 30 + i] = True
        write_sample(tmp_path, f"s{i}", image, [f"the object number {i}"], False, [("target", mask)])
    report = evaluate(pipe, tmp_path, progress=False)
    assert report.count == 3
    assert 0.0 <= report.giou <= 1.0
    assert 0.0 <= report.ciou <= 1.0
    # The report is computed from the model's real masks: recompute one by hand.
    from cores.evaluation.metrics import intersection_union
    from cores.evaluation.reasonseg import iter_samples, load_gt_mask
    from cores.evaluation.reasonseg import load_image as load_rs_image

    sample = next(iter_samples(tmp_path))
    image = load_rs_image(sample)
    pred = pipe.segment(image, sample.texts[0], is_sentence=sample.is_sentence).levels[-1].mask
    inter, union = intersection_union(pred, load_gt_mask(sample, *image.shape[:2]))
    assert report.per_sample[0].iou == pytest.approx(inter / (union + 1e-5) if union else 1.0)
