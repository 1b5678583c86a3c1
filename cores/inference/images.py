"""Image files -> upright HxWx3 uint8 RGB arrays: the one decoding rule of the product (PIL + numpy only).

The rule (the same as the backend's image fetcher, ``backend/images/decode.py``, so the command line,
evaluation, fine-tuning and the served model see the same pixels for the same file):

* the EXIF orientation is applied (a malformed EXIF block is ignored);
* transparency (RGBA, LA, PA, P with a transparent colour) is composited onto white;
* 16-bit grey keeps its high byte (as browsers show it); 32-bit integer grey within 0..65535 likewise, other
  32-bit integer and float grey are stretched min..max to 0..255;
* every other mode goes through PIL's ``convert("RGB")`` (grey is repeated, CMYK and YCbCr converted).

LISA read images with ``cv2.imread`` (which drops alpha as stored); JPEG decoders may also differ by a grey
level here and there. Everything after decoding -- the CLIP and SAM preprocessing -- matches the trained stack
exactly (see README, "Fidelity").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cores.errors import ImageError

logger = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (2..8); a malformed EXIF block leaves the image as stored."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception as exc:  # EXIF parsing raises many types on malformed blocks
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return image
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB of any PIL mode (see the module docstring for the rule)."""
    mode = image.mode
    if mode in TRANSPARENT_MODES or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        over_white = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(np.rint(over_white), 0, 255).astype(np.uint8))
    if mode.startswith("I;16"):
        return _grey_to_rgb((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if mode == "I" and low >= 0 and high <= 65535:
            return _grey_to_rgb((values.astype(np.uint32) >> 8).astype(np.uint8))
        return _grey_to_rgb(np.rint((values - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8))
    rgb = image if mode == "RGB" else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as an upright HxWx3 uint8 RGB array.

    Raises:
        ImageError: missing or undecodable file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(upright(image))
    except FileNotFoundError as exc:
        raise ImageError(f"image {path} does not exist") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"cannot decode image {path}: {exc}") from exc
