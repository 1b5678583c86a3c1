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
    # the share of foreground in each pixel's window (inside the map) is strictly between 0 and 1 exactly
    # where the window holds both: one pooling pass instead of a dilation and an erosion
    share = F.avg_pool2d(foreground, 2 * band + 1, stride=1, padding=band, count_include_pad=False)
    boundary = ((share > 0) & (share < 1)).squeeze(1)
    decided = torch.tanh(values.abs() / 2)
    ring = boundary.float()
    in_band = ring.sum((1, 2))
    on_band = (decided * ring).sum((1, 2)) / in_band.clamp(min=1)
    margin = torch.where(in_band > 0, on_band, decided.mean((1, 2)))  # no boundary: every pixel
    pixels = values.shape[1] * values.shape[2]
    rows = torch.stack([margin, in_band / pixels, foreground.mean((1, 2, 3))], dim=1).tolist()
    return [{"margin": m, "band_fraction": b, "foreground_fraction": f} for m, b, f in rows]
