"""The promotion gate: does a trained version beat the served one on the held-out split?

Both are scored on the same held-out records (``backend.training.evaluation``): gIoU per chain level. The
trained version is promoted only when

1. the final level was scored on at least ``MIN_EVAL_SAMPLES`` held-out samples,
2. its final-level gIoU is at least the served version's plus ``PROMOTE_MARGIN``, and
3. no other level's gIoU is lower than the served version's by more than ``PROMOTE_TOLERANCE``.

Otherwise it is published as a candidate (not served) with the reason; ``versions promote NAME`` serves it
anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backend.operations.loop_settings import LoopSettings


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote, and why (one sentence naming the numbers)."""

    promote: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"promoted": self.promote, "reason": self.reason}


def _levels(scores: Mapping[str, Any]) -> dict[int, float]:
    return {
        int(level["level"]): float(level["giou"])
        for level in scores.get("levels") or []
        if level.get("giou") is not None
    }


def decide(candidate: Mapping[str, Any], served: Mapping[str, Any], loop: LoopSettings) -> GateDecision:
    """Gate ``candidate`` against ``served``.

    Args:
        candidate, served: held-out scores, ``{"count": N final-level samples, "levels": [{"level",
            "giou", ...}]}`` (``backend.training.evaluation.held_out_scores``).
        loop: the margin, tolerance and minimum sample count.
    """
    count = int(candidate.get("count") or 0)
    if count < loop.min_eval_samples:
        return GateDecision(
            False,
            f"the held-out split has {count} sample(s) with a target mask, fewer than "
            f"MIN_EVAL_SAMPLES={loop.min_eval_samples}: not enough evidence to replace the served version",
        )
    mine, theirs = _levels(candidate), _levels(served)
    if not mine or not theirs:
        return GateDecision(False, "no level was scored on the held-out split")
    final = max(mine)
    if final not in theirs:
        return GateDecision(False, f"the served version has no score on level {final}")
    gain = mine[final] - theirs[final]
    if gain < loop.promote_margin:
        return GateDecision(
            False,
            f"final-level gIoU {mine[final]:.4f} vs served {theirs[final]:.4f} ({gain:+.4f}) does not beat "
            f"it by PROMOTE_MARGIN={loop.promote_margin}",
        )
    for level in sorted(set(mine) & set(theirs) - {final}):
        drop = theirs[level] - mine[level]
        if drop > loop.promote_tolerance:
            return GateDecision(
                False,
                f"level {level} gIoU drops {theirs[level]:.4f} -> {mine[level]:.4f} ({-drop:+.4f}), more "
                f"than PROMOTE_TOLERANCE={loop.promote_tolerance} (final level {gain:+.4f})",
            )
    return GateDecision(
        True,
        f"final-level gIoU {theirs[final]:.4f} -> {mine[final]:.4f} ({gain:+.4f} >= "
        f"PROMOTE_MARGIN={loop.promote_margin}) on {count} held-out sample(s); no other level drops by more "
        f"than PROMOTE_TOLERANCE={loop.promote_tolerance}",
    )
