"""Draw chain masks over an image (one colour per level) for the CLI and demos."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: RGB colours of levels 1, 2, ... (level 1 context: blue, level 2 target: orange).
LEVEL_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def overlay(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend HxW bool masks over an HxWx3 uint8 image, later levels on top. Returns HxWx3 uint8."""
    out = image.astype(np.float32)
    for k, mask in enumerate(masks):
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {k + 1} is {mask.shape}, image is {image.shape[:2]}")
        colour = np.array(LEVEL_COLOURS[k % len(LEVEL_COLOURS)], dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.round().clip(0, 255).astype(np.uint8)
