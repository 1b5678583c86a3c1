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
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.images.errors import ImageFetchError

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
            array = _to_rgb(_upright(image))
        except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
            raise ImageFetchError("corrupt", shown, f"the image data is damaged ({exc})") from exc
    array.flags.writeable = False
    return array


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored rather than failing the image."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception as exc:  # EXIF parsing raises many types on malformed blocks
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return image
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb(image: Image.Image) -> npt.NDArray[np.uint8]:
    """HxWx3 uint8 RGB from any PIL mode. Transparency is composited onto white; 16-bit gray keeps its high
    byte (as browsers show it); 32-bit int and float gray are stretched min..max to 0..255."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if mode.startswith("I;16"):
        gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if mode == "I" and low >= 0 and high <= 65535:
            gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        else:
            gray = np.rint((values - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    rgb_image = image if mode == "RGB" else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb_image, dtype=np.uint8))
