"""A job's images fetched, decoded and resized on a thread pool while the model works on earlier ones.

``ImagePrefetch`` submits every task's fetch (download, decode, orientation: ``ImageFetcher.fetch``) and
then the model-side resizing (``CoresPipeline.prepare``: SAM's longest-side resize and CLIP's pixels, kept
by the image's cache key) to a small pool, in task order; the job takes the results group by group, so
group k+1's images are prepared while group k is on the GPU. PIL, numpy and the resizes release the GIL
for most of their work. A fetch's exception is raised by ``result`` for that task only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from backend.images.fetcher import FetchedImage

logger = logging.getLogger(__name__)

PREFETCH_THREADS = 4


def cache_key(image: FetchedImage) -> str:
    """The encoding cache key of a fetched image: its encoded bytes' digest (no pixel hashing)."""
    from cores.inference.image_keys import encoded_image_key

    return encoded_image_key(image.sha256)


class ImagePrefetch:
    """Fetch (and prepare) ``urls`` concurrently; ``result(i)`` waits for task ``i``'s image.

    Args:
        fetch: ``fetch(i)`` -> the i-th task's image (raises ``ImageFetchError`` and the like).
        count: number of tasks.
        prepare: ``prepare(image, key)`` run in the pool after a fetch (the pipeline's resizing); a
            failure there is logged and left to the model's own pass, which resizes again.
    """

    def __init__(
        self,
        fetch: Callable[[int], FetchedImage],
        count: int,
        prepare: Callable[[FetchedImage], None] | None = None,
        threads: int = PREFETCH_THREADS,
    ) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(threads, count)), thread_name_prefix="image-prefetch"
        )
        self._prepare = prepare
        self._futures: Sequence[Future[FetchedImage]] = [
            self._pool.submit(self._one, fetch, i) for i in range(count)
        ]

    def _one(self, fetch: Callable[[int], FetchedImage], index: int) -> FetchedImage:
        image = fetch(index)
        if self._prepare is not None:
            try:
                self._prepare(image)
            except Exception as exc:  # the model pass resizes it itself and reports a real problem
                logger.warning("preparing image %d ahead failed (%s: %s)", index, type(exc).__name__, exc)
        return image

    def result(self, index: int) -> FetchedImage:
        """Task ``index``'s image, waiting for it; raises what its fetch raised."""
        return self._futures[index].result()

    def close(self) -> None:
        """Cancel fetches not started and wait for the running ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)
