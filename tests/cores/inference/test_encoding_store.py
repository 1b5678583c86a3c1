"""The persistent encoding store: hits skip both encoders, corrupt entries are recomputed, eviction by size,
and entries are isolated by the encoders' weights (not by the rest of the model)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from cores.inference.encoding_store import EncodingStore, StoredEncoding
from cores.inference.pipeline import CoresPipeline, image_key

QUERY = "the red cup"


def _image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((40, 56, 3)) * 255).astype(np.uint8)


def _pipe(checkpoint, store: EncodingStore | None) -> CoresPipeline:
    return CoresPipeline.from_pretrained(checkpoint, device="cpu", dtype="float32", encoding_store=store)


def _count_encoder_calls(pipe: CoresPipeline) -> tuple[list[str], list]:
    calls: list[str] = []
    hooks = [
        pipe.model.sam.image_encoder.register_forward_hook(lambda *a: calls.append("sam")),
        pipe.model.vision_tower.register_forward_hook(lambda *a: calls.append("clip")),
    ]
    return calls, hooks


def test_a_fresh_pipeline_reads_the_store_instead_of_encoding(tiny_checkpoint, tmp_path):
    store = EncodingStore(tmp_path / "enc", max_bytes=10**8)
    image = _image(1)
    first = _pipe(tiny_checkpoint, store).segment(image, QUERY)
    assert len(list(store.entries())) == 1
    second_pipe = _pipe(tiny_checkpoint, store)  # another worker sharing MODEL_DIR
    calls, hooks = _count_encoder_calls(second_pipe)
    try:
        second = second_pipe.segment(image, QUERY)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
    assert second.timings["image_cache_hit"] == 1.0
    for a, b in zip(first.levels, second.levels, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert a.score == b.score


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupt_entry_is_dropped_and_recomputed(tiny_checkpoint, tmp_path, damage, caplog):
    store = EncodingStore(tmp_path / "enc", max_bytes=10**8)
    image = _image(2)
    expected = _pipe(tiny_checkpoint, store).segment(image, QUERY)
    ((path, _),) = store.entries()
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-10] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not an entry")
    path.write_bytes(bytes(data))
    pipe = _pipe(tiny_checkpoint, store)
    calls, hooks = _count_encoder_calls(pipe)
    try:
        with caplog.at_level("WARNING"):
            again = pipe.segment(image, QUERY)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ["sam", "clip"]  # recomputed
    assert "corrupt entry" in caplog.text
    assert np.array_equal(again.final.mask, expected.final.mask)
    assert store.get(pipe.encodings.fingerprint, image_key(image)) is not None  # rewritten, verified


def test_eviction_keeps_the_store_under_its_size_least_recently_used_first(tmp_path):
    entry = StoredEncoding(torch.zeros(1, 4, 8, 8), torch.zeros(16, 8), (8, 8), (8, 8))
    probe = EncodingStore(tmp_path / "probe", max_bytes=10**9)
    probe.put("ab" * 16, "01", entry)
    one = probe.size()
    store = EncodingStore(tmp_path / "enc", max_bytes=3 * one)
    fp = "cd" * 16
    for i, key in enumerate(["a1", "b2", "c3"]):
        store.put(fp, key, entry)
        os.utime(store.path(fp, key), (time.time() - 100 + i, time.time() - 100 + i))
    assert store.get(fp, "a1") is not None  # read: now the most recently used
    store.put(fp, "d4", entry)
    assert store.size() <= 3 * one
    assert not store.contains(fp, "b2")  # the least recently used went
    assert all(store.contains(fp, key) for key in ("a1", "c3", "d4"))


def test_entries_are_isolated_by_encoder_weights_only(tiny_checkpoints, tmp_path):
    store = EncodingStore(tmp_path / "enc", max_bytes=10**8)
    base = _pipe(tiny_checkpoints["cores"], store)
    tuned = _pipe(tiny_checkpoints["cores"], store)
    with torch.no_grad():  # a fine-tune that leaves the encoders frozen
        next(tuned.model.llm.parameters()).add_(1.0)
        next(tuned.model.text_hidden_fcs.parameters()).add_(1.0)
    assert tuned.encodings.fingerprint == base.encodings.fingerprint
    other = _pipe(tiny_checkpoints["cores"], store)
    with torch.no_grad():  # a version whose SAM encoder differs
        other.model.sam.image_encoder.patch_embed.proj.bias.add_(0.5)
    assert other.encodings.fingerprint != base.encodings.fingerprint
    image = _image(3)
    base.segment(image, QUERY)
    assert other.encodings.load(image_key(image)) is None
    projector = _pipe(tiny_checkpoints["cores"], store)
    with torch.no_grad():
        projector.model.mm_projector.bias.add_(0.5)
    assert projector.encodings.fingerprint not in {base.encodings.fingerprint, other.encodings.fingerprint}


def test_a_store_that_cannot_be_written_is_logged_not_fatal(tiny_checkpoint, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    pipe = _pipe(tiny_checkpoint, EncodingStore(blocker, max_bytes=10**8))
    with caplog.at_level("WARNING"):
        result = pipe.segment(_image(4), QUERY)
    assert result.final.mask.shape == (40, 56)
    assert "cannot write image" in caplog.text
