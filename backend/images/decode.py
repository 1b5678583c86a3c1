"""Decode encoded image bytes to upright HxWx3 uint8 RGB arrays, safely.

Only formats a browser (and so Label Studio) can show are opened, plus TIFF (``IMAGE_FORMATS``; never EPS,
which runs Ghostscript). The pixel cap is checked from the header before any pixel is decoded; the EXIF
orientation is applied and every PIL mode is converted to RGB (transparency composited onto white).
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from backend.images.errors import ImageFetchError
from cores.inference.images import to_rgb, upright

logger = logging.getLogger(__name__)

# Formats a browser (and so Label Studio) can show, plus TIFF; never EPS (it runs Ghostscript).
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


def decode_image(data: bytes, max_pixels: int, shown: str) -> npt.NDArray[np.uint8]:
    """Decode encoded image bytes to a read-only HxWx3 uint8 RGB array, upright per EXIF.

    Raises:
        ImageFetchError: ``too_large`` when width*height > ``max_pixels`` (checked from the header, before
            decoding), ``not_image`` for HTML, ``corrupt`` for anything else that does not decode.
    """
    Image.init()
    formats = tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageFetchError("too_large", shown, f"{exc} (max_pixels={max_pixels})") from exc
    except UnidentifiedImageError as exc:
        if data.lstrip()[:1] == b"<":
            raise ImageFetchError(
                "not_image", shown, "the bytes are an HTML/XML/SVG document, not a raster image"
            ) from exc
        raise ImageFetchError(
            "corrupt", shown, f"not a readable image (supported formats: {', '.join(formats)})"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageFetchError("corrupt", shown, f"not a readable image ({exc})") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageFetchError(
                "too_large",
                shown,
                f"the image is {width}x{height} = {width * height / 1e6:.1f} MP, above max_pixels="
                f"{max_pixels / 1e6:.1f} MP; downscale it or raise max_pixels",
            )
        if width <= 0 or height <= 0:
            raise ImageFetchError("corrupt", shown, f"the image has an empty size {width}x{height}")
        try:
            image.load()
            array = to_rgb(upright(image))
        except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
            raise ImageFetchError("corrupt", shown, f"the image data is damaged ({exc})") from exc
    array.flags.writeable = False
    return array
