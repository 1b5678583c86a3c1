"""Images fetched and prepared on a thread pool, keyed by their encoded bytes; the masks do not change."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from backend.images.fetcher import FetchedImage, ImageFetcher, ImageFetchError
from backend.jobs.image_prefetch import ImagePrefetch, cache_key
from backend.jobs.predict import run_chains
from cores.checkpoints.loading import load_checkpoint
from cores.inference.image_keys import encoded_image_key
from cores.inference.pipeline import CoresPipeline
from tests.backend.fake_label_studio import data_uri, png_bytes


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint: Path) -> CoresPipeline:
    return CoresPipeline(load_checkpoint(tiny_checkpoint))


def test_prefetch_fetches_in_threads_prepares_and_keeps_errors_per_task(
    tmp_path: Path, pipeline: CoresPipeline
) -> None:
    fetcher = ImageFetcher(cache_dir=tmp_path / "cache")
    urls = [data_uri(png_bytes(40, 30, seed=s)) for s in range(3)] + ["data:image/png;base64,bm9wZQ=="]
    threads: set[str] = set()
    prepared: list[str] = []

    def fetch(i: int) -> FetchedImage:
        threads.add(threading.current_thread().name)
        return fetcher.fetch(urls[i])

    def prepare(image: FetchedImage) -> None:
        pipeline.prepare(image.array, cache_key(image))
        prepared.append(cache_key(image))

    prefetch = ImagePrefetch(fetch, len(urls), prepare=prepare)
    try:
        images = [prefetch.result(i) for i in range(3)]
        with pytest.raises(ImageFetchError):
            prefetch.result(3)
    finally:
        prefetch.close()
    assert all(name.startswith("image-prefetch") for name in threads), threads
    assert sorted(prepared) == sorted(cache_key(im) for im in images)
    assert cache_key(images[0]) == encoded_image_key(images[0].sha256)
    assert all(c in "0123456789abcdef" for c in cache_key(images[0]))  # a valid encoding-store key
    assert set(prepared) <= pipeline._prepared.keys()


def test_prepared_and_byte_keyed_images_give_the_same_masks(tmp_path: Path, pipeline: CoresPipeline) -> None:
    fetcher = ImageFetcher(cache_dir=tmp_path / "cache")
    images = [fetcher.fetch(data_uri(png_bytes(48, 40, seed=s))) for s in (11, 12)]
    items = [(im.array, "the red cup") for im in images]
    pipeline.clear_cache()
    plain = run_chains(pipeline, items, mode="answer", batch_size=2)
    pipeline.clear_cache()
    for image in images:
        pipeline.prepare(image.array, cache_key(image))
    keys = [cache_key(im) for im in images]
    keyed = run_chains(pipeline, items, mode="answer", batch_size=2, keys=keys)
    assert not set(keys) & pipeline._prepared.keys()  # used up by the encoding
    assert set(keys) <= set(pipeline._cache)  # cached by the bytes' digest, no pixel hash
    for a, b in zip(plain, keyed, strict=True):
        assert not isinstance(a, Exception)
        for la, lb in zip(a.levels, b.levels, strict=True):  # type: ignore[union-attr]
            assert np.array_equal(la.mask, lb.mask)
