"""BitmaskLabels: a level's mask as a PNG data URL (``{"imageDataURL": "data:image/png;base64,..."}``).

Label Studio 1.23 draws the PNG onto a canvas of the PNG's own size and colours it with the label's colour
through the alpha channel only: RGB is ignored, and a PNG without alpha covers the whole image. So a
prediction is a greyscale+alpha (``LA``) PNG of exactly the original image size with alpha = 255 on the
mask and 0 elsewhere, saved with Pillow's ``optimize=True``. Reading a submitted bitmask (the annotator's
strokes are RGBA PNGs with anti-aliased alpha 0..255) takes alpha >= ``MIN_ALPHA`` (1: any visible pixel,
the rule Label Studio's own hover and bounding box use) as foreground.

Bounds, checked before anything is decoded: the data URL must be a base64 PNG data URL no longer than the
base64 of an uncompressed 8-bit RGBA PNG of the declared size, and the PNG's header must give exactly the
declared ``original_width`` x ``original_height``.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

TYPE = "bitmasklabels"
DATA_URL_PREFIX = "data:image/png;base64,"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_ALPHA = 1
"""A decoded pixel is foreground where its alpha is at least this."""
_SLACK_BYTES = 64 * 1024  # PNG chunks, zlib block headers and ancillary chunks


class BitmaskError(ValueError):
    """A bitmask value that is not a PNG data URL of the region's size; the message says what was found."""


def encode_png(mask: np.ndarray) -> bytes:
    """The PNG bytes of an HxW bool mask: mode ``LA``, L = 0, A = 255 on the mask, optimised."""
    array = np.asarray(mask)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty HxW mask, got shape {array.shape}")
    la = np.zeros((*array.shape, 2), dtype=np.uint8)
    la[:, :, 1] = np.where(array != 0, 255, 0)
    buffer = io.BytesIO()
    Image.fromarray(la, mode="LA").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def bitmask_value(mask: np.ndarray) -> dict[str, str]:
    """The ``value`` of a bitmasklabels result for an HxW bool mask (labels not included)."""
    return {"imageDataURL": DATA_URL_PREFIX + base64.b64encode(encode_png(mask)).decode("ascii")}


def max_data_url_chars(height: int, width: int) -> int:
    """The longest data URL accepted for a ``height`` x ``width`` region: base64 of an uncompressed 8-bit
    RGBA PNG (4 bytes a pixel and a filter byte a row) plus 64 KiB of chunks."""
    raw = height * (4 * width + 1) + _SLACK_BYTES
    return len(DATA_URL_PREFIX) + 4 * ((raw + 2) // 3)


def decode_bitmask(url: object, height: int, width: int) -> np.ndarray:
    """An HxW bool mask (alpha >= ``MIN_ALPHA``) from a bitmasklabels ``imageDataURL``.

    Raises:
        BitmaskError: not a string, not a ``data:image/png;base64,`` URL (a JPEG or SVG data URL, a plain
            URL), longer than ``max_data_url_chars``, not base64, not a PNG, or a PNG whose size is not
            ``width`` x ``height``.
    """
    if not isinstance(url, str):
        raise BitmaskError(
            f"expected value.imageDataURL to be a PNG data URL string, got {type(url).__name__}"
        )
    if not url.startswith(DATA_URL_PREFIX):
        raise BitmaskError(
            f"expected value.imageDataURL to start with {DATA_URL_PREFIX!r} (a base64 PNG), "
            f"found {url[:40]!r}"
        )
    limit = max_data_url_chars(height, width)
    if len(url) > limit:
        raise BitmaskError(
            f"value.imageDataURL holds {len(url)} characters, more than an uncompressed {width}x{height} "
            f"RGBA PNG needs ({limit}); not decoded"
        )
    try:
        raw = base64.b64decode(url[len(DATA_URL_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BitmaskError(f"value.imageDataURL is not valid base64: {exc}") from None
    if not raw.startswith(PNG_SIGNATURE):
        raise BitmaskError("value.imageDataURL says image/png but its bytes are not a PNG")
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            if image.size != (width, height):
                raise BitmaskError(
                    f"the bitmask PNG is {image.size[0]}x{image.size[1]} but the region's original size is "
                    f"{width}x{height}; Label Studio needs a PNG of exactly the image's size"
                )
            alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise BitmaskError(f"value.imageDataURL is not a readable PNG: {exc}") from None
    return alpha >= MIN_ALPHA
