"""Image identity: the checks an image array must pass and the keys the encoding cache knows it by.

* :func:`image_key`: the sha256 of an array's shape and pixels (any caller holding pixels);
* :func:`encoded_image_key`: from the sha256 of the encoded bytes the pixels were decoded from (cheaper:
  the worker's image fetcher already hashes what it downloads).
"""

from __future__ import annotations

import hashlib

import numpy as np

from cores.errors import ImageError


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        found = (getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__))
        raise ImageError(f"expected an HxWx3 uint8 RGB array, found shape/dtype {found}")
    if min(image.shape[:2]) < 1:
        raise ImageError(f"image has no pixels: shape {image.shape}")
    return np.ascontiguousarray(image)


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape + pixels)."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def encoded_image_key(sha256: str) -> str:
    """The cache key of an image decoded (orientation applied) from encoded bytes with this sha256 hex
    digest: the same bytes always decode to the same pixels, so hashing the (smaller) encoded bytes
    replaces hashing the pixels. A hex digest of its own namespace (``encoded:<sha256>``), so it is a valid
    encoding-store key and never equals :func:`image_key` of any array: the same pixels under the other
    key are a miss, never a wrong hit."""
    return hashlib.sha256(f"encoded:{sha256}".encode()).hexdigest()
