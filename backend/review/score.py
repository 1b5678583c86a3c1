"""The review score of one prediction: how much it needs a human, from what the model gives.

Per chain level k (1: the context, n: the target) the worker has SAM's IoU-head score ``q_k`` and the
boundary margin ``m_k`` (``cores.inference.confidence``: mean ``|2*sigmoid(logit) - 1|`` on a band around
the mask boundary). From the masks: containment ``c = |L_n & L_1| / |L_n|`` (how much of the target lies
inside the level-1 context; 0 for an empty target) and agreement ``a = 1 - (max_k q_k - min_k q_k)`` (the
levels are about as sure as each other). The score is the weighted geometric mean::

    score = q_n^0.4 * m_n^0.3 * c^0.2 * a^0.1        (each part clipped to [0, 1])

A one-level chain has no ``c`` or ``a``; a part that was not measured (an old worker's prediction) is left
out and the other weights are renormalised. An empty target mask scores 0. Lowest first = most in need of
review: Label Studio's Data Manager sorts tasks by a prediction's top-level ``score``.

Each region's ``meta.review`` keeps its level's parts (``level``, ``iou_head``, ``margin``, ``area``) and
the chain's (``score``, ``containment``, ``agreement``), so the reasons can be rebuilt from a stored
prediction (``ReviewScore.from_result``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WEIGHTS = {"iou_head": 0.4, "margin": 0.3, "containment": 0.2, "agreement": 0.1}
"""Weights of the parts in the geometric mean."""
LOW = {"iou_head": 0.5, "margin": 0.5, "containment": 0.9, "agreement": 0.7}
"""A part below its value is named as a reason."""


@dataclass(frozen=True)
class LevelParts:
    """One level's parts: ``iou_head`` (SAM's predicted IoU), ``margin`` (None: not measured), ``area``
    (mask pixels)."""

    level: int
    iou_head: float
    margin: float | None
    area: int

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "iou_head": self.iou_head, "margin": self.margin, "area": self.area}


@dataclass(frozen=True)
class ReviewScore:
    """A prediction's review score, its parts and the reasons it is low."""

    score: float
    levels: tuple[LevelParts, ...]
    containment: float | None
    agreement: float | None

    @property
    def final(self) -> LevelParts:
        return self.levels[-1]

    def reasons(self) -> list[str]:
        """Why the score is low, worst first; empty when no part is below its threshold (``LOW``)."""
        found: list[tuple[float, str]] = []
        final = self.final
        if final.area == 0:
            found.append((0.0, f"level {final.level} (the target) is empty"))
        if final.iou_head < LOW["iou_head"]:
            found.append((final.iou_head, f"low IoU-head score on the target ({final.iou_head:.2f})"))
        if final.margin is not None and final.margin < LOW["margin"]:
            found.append((final.margin, f"uncertain target boundary (margin {final.margin:.2f})"))
        if self.containment is not None and final.area and self.containment < LOW["containment"]:
            outside = 1.0 - self.containment
            found.append((self.containment, f"{outside:.0%} of the target lies outside the level-1 context"))
        if self.agreement is not None and self.agreement < LOW["agreement"]:
            heads = ", ".join(f"{lv.iou_head:.2f}" for lv in self.levels)
            found.append((self.agreement, f"the levels disagree (IoU heads {heads})"))
        for level in self.levels[:-1]:
            if level.iou_head < LOW["iou_head"]:
                found.append(
                    (level.iou_head, f"low IoU-head score on level {level.level} ({level.iou_head:.2f})")
                )
        return [text for _, text in sorted(found, key=lambda item: item[0])]

    def level_meta(self, level: int) -> dict[str, Any]:
        """What a region of ``level`` keeps in ``meta.review``."""
        parts = next(lv for lv in self.levels if lv.level == level)
        return parts.to_json() | {
            "score": round(self.score, 6),
            "containment": self.containment,
            "agreement": self.agreement,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "levels": [lv.to_json() for lv in self.levels],
            "containment": self.containment,
            "agreement": self.agreement,
            "reasons": self.reasons(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewScore:
        """Read ``to_json``'s form.

        Raises:
            ValueError: not that form.
        """
        try:
            levels = tuple(
                LevelParts(
                    int(lv["level"]), float(lv["iou_head"]), _optional(lv.get("margin")), int(lv["area"])
                )
                for lv in data["levels"]
            )
            if not levels:
                raise ValueError("no levels")
            return cls(
                float(data["score"]),
                levels,
                _optional(data.get("containment")),
                _optional(data.get("agreement")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a review score: {exc!r}") from exc

    @classmethod
    def from_result(cls, result: Iterable[Mapping[str, Any]]) -> ReviewScore | None:
        """Rebuild from a prediction's ``result`` items' ``meta.review``; None when no region has one."""
        levels: dict[int, LevelParts] = {}
        chain: dict[str, Any] = {}
        for item in result:
            meta = item.get("meta") if isinstance(item, Mapping) else None
            review = meta.get("review") if isinstance(meta, Mapping) else None
            if not isinstance(review, Mapping):
                continue
            try:
                parts = LevelParts(
                    int(review["level"]),
                    float(review["iou_head"]),
                    _optional(review.get("margin")),
                    int(review["area"]),
                )
                score = float(review["score"])
            except (KeyError, TypeError, ValueError):
                continue
            if parts.level in levels:  # polygon regions of one level: one per component
                parts = LevelParts(
                    parts.level, parts.iou_head, parts.margin, max(parts.area, levels[parts.level].area)
                )
            levels[parts.level] = parts
            chain = {
                "score": score,
                "containment": review.get("containment"),
                "agreement": review.get("agreement"),
            }
        if not levels:
            return None
        return cls(
            float(chain["score"]),
            tuple(levels[k] for k in sorted(levels)),
            _optional(chain.get("containment")),
            _optional(chain.get("agreement")),
        )


def _optional(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    return float(value)


def _clip(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def review_score(levels: Sequence[Mapping[str, Any]]) -> ReviewScore:
    """Score one chain result (module docstring).

    Args:
        levels: per level, in any order: ``index`` (1-based), ``mask`` (HxW, nonzero = foreground),
            ``score`` (SAM's predicted IoU) and optionally ``stats`` with ``margin``
            (``cores.inference.confidence.level_statistics``).

    Raises:
        ValueError: no levels, or masks of different shapes.
    """
    if not levels:
        raise ValueError("expected at least one chain level, got none")
    ordered = sorted(levels, key=lambda level: int(level["index"]))
    masks = [np.asarray(level["mask"]) != 0 for level in ordered]
    if len({mask.shape for mask in masks}) != 1:
        raise ValueError(f"the levels' masks differ in shape: {[mask.shape for mask in masks]}")
    parts = tuple(
        LevelParts(
            int(level["index"]),
            _clip(level["score"]),
            None if (level.get("stats") or {}).get("margin") is None else _clip(level["stats"]["margin"]),
            int(mask.sum()),
        )
        for level, mask in zip(ordered, masks, strict=True)
    )
    containment = agreement = None
    if len(parts) >= 2:
        target = masks[-1]
        area = int(target.sum())
        containment = int((target & masks[0]).sum()) / area if area else 0.0
        heads = [p.iou_head for p in parts]
        agreement = 1.0 - (max(heads) - min(heads))
    return ReviewScore(combine(parts[-1], containment, agreement), parts, containment, agreement)


def combine(final: LevelParts, containment: float | None, agreement: float | None) -> float:
    """The weighted geometric mean of the measured parts (0 for an empty target)."""
    if final.area == 0:
        return 0.0
    values = {
        "iou_head": final.iou_head,
        "margin": final.margin,
        "containment": containment,
        "agreement": agreement,
    }
    measured = {name: _clip(v) for name, v in values.items() if v is not None}
    total = sum(WEIGHTS[name] for name in measured)
    if any(v == 0.0 for v in measured.values()):
        return 0.0
    return math.exp(sum(WEIGHTS[name] * math.log(v) for name, v in measured.items()) / total)
