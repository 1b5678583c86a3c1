"""What the report shows, read from the correction log and the version store.

- Per version: its held-out scores per chain level (gIoU, cIoU, mean correction), from its
  ``version.json`` (``metrics.after``); a version that was only ever scored as the served one (the base) is
  shown with the newest run's ``metrics.before`` of it.
- Per day (``received_at``, UTC) and level: the correction rate, the share of the newest revisions of
  annotations whose level IoU between prediction and accepted mask is below ``CORRECTED_BELOW_IOU``.
- Per level: every such IoU (the histogram).
- The worst recent corrections: among the ``RECENT`` newest records with a prediction, the ``WORST`` with
  the lowest final-level IoU.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.corrections.held_out import CORRECTED_BELOW_IOU
from backend.corrections.records import CorrectionRecord
from backend.corrections.store import CorrectionStore
from backend.versions.store import VersionStore

RECENT = 200
WORST = 6


@dataclass(frozen=True)
class VersionScores:
    """One version's held-out scores, by level: ``{level: {"giou", "ciou", "mean_correction", "count"}}``;
    ``scored_as`` is ``trained`` (its own run) or ``served`` (as a later run's served version)."""

    name: str
    created_at: str | None
    current: bool
    gate: str | None
    reason: str | None
    scored_as: str | None
    levels: Mapping[int, Mapping[str, float]]


@dataclass
class ReportData:
    """Everything the page shows (see the module docstring)."""

    versions: list[VersionScores] = field(default_factory=list)
    records: int = 0
    rates: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)
    """level -> day -> (corrected, with a prediction)."""
    ious: dict[int, list[float]] = field(default_factory=dict)
    worst: list[CorrectionRecord] = field(default_factory=list)

    def rate(self, level: int, day: str) -> float:
        corrected, total = self.rates[level][day]
        return corrected / total


def _levels(scores: Mapping[str, Any] | None) -> dict[int, dict[str, float]]:
    found: dict[int, dict[str, float]] = {}
    for level in (scores or {}).get("levels") or []:
        if level.get("giou") is None:
            continue
        found[int(level["level"])] = {
            key: float(level[key]) for key in ("giou", "ciou", "mean_correction", "count") if key in level
        }
    return found


def version_scores(store: VersionStore, served: str | None) -> list[VersionScores]:
    """Every version with held-out scores, oldest first."""
    versions = store.list()
    as_served: dict[str, dict[int, dict[str, float]]] = {}
    for version in versions:  # oldest first: the newest run's view of its parent wins
        parent = version.parent
        before = _levels((version.info.get("metrics") or {}).get("before"))
        if parent and before:
            as_served[parent] = before
    rows = []
    for version in versions:
        own = _levels((version.info.get("metrics") or {}).get("after"))
        levels, scored_as = (own, "trained") if own else (as_served.get(version.name, {}), "served")
        gate = version.info.get("gate") or {}
        promoted = gate.get("promoted")
        rows.append(
            VersionScores(
                name=version.name,
                created_at=version.created_at,
                current=version.name == served,
                gate=None if promoted is None else ("promoted" if promoted else "candidate"),
                reason=gate.get("reason"),
                scored_as=scored_as if levels else None,
                levels=levels,
            )
        )
    return rows


def correction_data(store: CorrectionStore, project: int | None = None) -> ReportData:
    """Correction rates, IoUs and the worst recent corrections of the newest revision of every annotation."""
    data = ReportData()
    records = store.list(project=project, latest_only=True, masks=False)  # IoUs only: bounded memory
    data.records = len(records)
    counts: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for record in records:
        day = record.received_at[:10]
        for level in record.levels:
            if level.iou is None:
                continue
            data.ious.setdefault(level.level, []).append(level.iou)
            cell = counts[level.level][day]
            cell[0] += level.iou < CORRECTED_BELOW_IOU
            cell[1] += 1
    data.rates = {
        level: {day: (c, t) for day, (c, t) in sorted(days.items())} for level, days in sorted(counts.items())
    }
    recent = sorted(records, key=lambda r: r.received_at)[-RECENT:]
    predicted = [r for r in recent if r.final_iou is not None]
    worst = sorted(predicted, key=lambda r: (r.final_iou, r.id))[:WORST]
    data.worst = [found for r in worst if (found := store.get(r.id)) is not None]  # with their masks
    return data
