"""The boundary margin (``cores.inference.confidence``) on crafted logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cores.inference.confidence import level_statistics


def test_boundary_margin_is_high_for_decided_logits_and_low_near_one_half() -> None:
    grid = torch.zeros(3, 32, 32)
    grid[:, 8:24, 8:24] = 1.0
    crisp = grid * 24 - 12  # +-12 everywhere: decided
    soft = grid * 0.4 - 0.2  # +-0.2: probabilities near 0.5
    empty = torch.full((32, 32), -6.0)
    stats = level_statistics(torch.stack([crisp[0], soft[0], empty]))
    assert stats[0]["margin"] == pytest.approx(float(np.tanh(6.0)), abs=1e-6)
    assert stats[1]["margin"] == pytest.approx(float(np.tanh(0.1)), abs=1e-6)
    assert stats[2]["margin"] == pytest.approx(float(np.tanh(3.0)), abs=1e-6)  # no boundary: every pixel
    assert stats[2]["band_fraction"] == 0.0
    assert 0.0 < stats[0]["band_fraction"] < 0.5
    assert stats[0]["foreground_fraction"] == pytest.approx(16 * 16 / 32**2)
    # only the band counts: a soft interior far from the boundary does not lower the margin
    mixed = crisp[0].clone()
    mixed[14:18, 14:18] = 0.1
    assert level_statistics(mixed[None])[0]["margin"] == pytest.approx(stats[0]["margin"], abs=1e-6)
    with pytest.raises(ValueError, match="NxHxW"):
        level_statistics(torch.zeros(32, 32))
