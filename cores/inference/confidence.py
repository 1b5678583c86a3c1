"""Per-level statistics of a mask's logits that say how sure the decoder was, for review scoring.

``boundary_margin``: on a band of pixels around the mask boundary (pixels whose ``(2*band+1)``-square
neighbourhood holds both foreground and background of ``logits > 0``), the mean of ``|2*sigmoid(l) - 1|``
(= ``tanh(|l| / 2)``): 1.0 when every boundary pixel is decided, 0.0 when every one sits at probability 0.5.
A mask with no boundary (empty or full) is measured over all its pixels. Computed on SAM's low-resolution
logits (256x256 per level), before they are upscaled to the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BOUNDARY_BAND = 2
"""Half-width in low-resolution pixels of the band around the boundary that ``boundary_margin`` reads."""


@torch.no_grad()
def level_statistics(logits: torch.Tensor, band: int = BOUNDARY_BAND) -> list[dict[str, float]]:
    """Statistics of each level's low-resolution mask logits.

    Args:
        logits: NxHxW mask logits, one map per chain level (any float dtype, any device).
        band: half-width of the boundary band in pixels.

    Returns:
        One dict per level: ``margin`` (see the module docstring, in [0, 1]), ``band_fraction`` (share of
        the map's pixels in the boundary band) and ``foreground_fraction`` (share with logit > 0).

    Raises:
        ValueError: ``logits`` is not 3-D, or ``band`` < 1.
    """
    if logits.ndim != 3:
        raise ValueError(f"expected NxHxW logits (one map per level), got shape {tuple(logits.shape)}")
    if band < 1:
        raise ValueError(f"band must be >= 1 pixel, got {band}")
    values = logits.detach().float()
    foreground = (values > 0).float().unsqueeze(1)
    size = 2 * band + 1
    grown = F.max_pool2d(foreground, size, stride=1, padding=band)
    shrunk = -F.max_pool2d(-foreground, size, stride=1, padding=band)
    boundary = (grown != shrunk).squeeze(1)
    decided = torch.tanh(values.abs() / 2)
    stats = []
    for k in range(values.shape[0]):
        ring = boundary[k]
        chosen = decided[k][ring] if bool(ring.any()) else decided[k].flatten()
        stats.append(
            {
                "margin": float(chosen.mean()),
                "band_fraction": float(ring.float().mean()),
                "foreground_fraction": float(foreground[k].mean()),
            }
        )
    return stats
