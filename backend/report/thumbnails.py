"""A correction as a thumbnail: the task image with the predicted and the accepted mask of one level
overlaid (red: predicted only, green: accepted only, yellow: both), scaled to ``SIDE`` pixels on its longer
side (small images are enlarged without smoothing, so every mask pixel stays visible)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIDE = 240
PREDICTED = np.array([230, 40, 40], dtype=np.float32)
ACCEPTED = np.array([40, 200, 60], dtype=np.float32)
BOTH = np.array([240, 220, 40], dtype=np.float32)
GREY = 128


def thumbnail(image: np.ndarray | None, predicted: np.ndarray, accepted: np.ndarray) -> bytes:
    """PNG bytes of the overlay.

    Args:
        image: HxWx3 uint8 RGB, or None (a grey background); an image of another size than the masks is
            resized to them.
        predicted, accepted: HxW bool masks.

    Raises:
        ValueError: masks of different shapes.
    """
    if predicted.shape != accepted.shape:
        raise ValueError(f"predicted {predicted.shape} and accepted {accepted.shape} masks differ in shape")
    height, width = predicted.shape
    if image is None:
        base = np.full((height, width, 3), GREY, dtype=np.float32)
    else:
        if image.shape[:2] != (height, width):
            image = np.asarray(Image.fromarray(image).resize((width, height)))
        base = image[:, :, :3].astype(np.float32)
    out = base.copy()
    for where, colour in (
        (predicted & ~accepted, PREDICTED),
        (accepted & ~predicted, ACCEPTED),
        (predicted & accepted, BOTH),
    ):
        out[where] = 0.45 * base[where] + 0.55 * colour
    picture = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    scale = SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = picture.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
