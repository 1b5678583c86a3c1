"""What the pipeline keeps per image: its encodings (``ImageState``), and its model inputs resized ahead of
the encoding (``PreparedInputs``: SAM's longest-side resize and CLIP's pixels, prepared on an image
loader's thread pool while the model works on earlier images, kept by the image's cache key until the
encoding of that key takes them; at most ``MAX_PREPARED``, oldest dropped first)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from cores.modeling.sam import SamInput

MAX_PREPARED = 64


@dataclass
class ImageState:
    """Per-image work shared by every query: SAM embedding 1xCxGxG, projected CLIP tokens PxH."""

    key: str
    sam_input: SamInput
    sam_embedding: torch.Tensor
    clip_tokens: torch.Tensor

    @property
    def nbytes(self) -> int:
        tensors = (self.sam_embedding, self.clip_tokens)
        return sum(t.numel() * t.element_size() for t in tensors)


Prepared = tuple[SamInput, torch.Tensor]
"""SAM input and CLIP pixels of one image."""


class PreparedInputs:
    """A thread-safe, bounded key -> ``Prepared`` holder (each entry is taken once)."""

    def __init__(self, limit: int = MAX_PREPARED) -> None:
        self._held: OrderedDict[str, Prepared] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def put(self, key: str, inputs: Prepared) -> None:
        with self._lock:
            self._held[key] = inputs
            while len(self._held) > self._limit:
                self._held.popitem(last=False)

    def take(self, key: str) -> Prepared | None:
        """The inputs prepared for ``key`` (removed), or None."""
        with self._lock:
            return self._held.pop(key, None)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._held

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._held)
