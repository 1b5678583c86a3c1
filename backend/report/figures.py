"""The report's plots as PNG bytes, drawn with matplotlib's Agg backend (no display, no files)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from backend.report.data import ReportData, VersionScores

DPI = 100
SIZE = (7.5, 3.4)


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def version_plot(versions: Sequence[VersionScores]) -> bytes:
    """Grouped bars: per version (x), gIoU and cIoU of each level on the held-out split."""
    figure, axes = _figure()
    scored = [v for v in versions if v.levels]
    levels = sorted({level for v in scored for level in v.levels})
    series = [(metric, level) for level in levels for metric in ("giou", "ciou")]
    width = 0.8 / max(1, len(series))
    for i, (metric, level) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(scored))]
        ys = [v.levels.get(level, {}).get(metric, 0.0) for v in scored]
        axes.bar(xs, ys, width, label=f"{'gIoU' if metric == 'giou' else 'cIoU'} level {level}")
    axes.set_xticks(range(len(scored)), [v.name for v in scored], rotation=15, fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("held-out score")
    axes.set_title("Held-out gIoU / cIoU per version and chain level")
    if series:
        axes.legend(fontsize=7, ncols=2)
    return _png(figure)


def rate_plot(data: ReportData) -> bytes:
    """Lines: per level, the correction rate per day."""
    figure, axes = _figure()
    days = sorted({day for per_day in data.rates.values() for day in per_day})
    for level, per_day in data.rates.items():
        xs = [days.index(day) for day in per_day]
        axes.plot(xs, [data.rate(level, day) for day in per_day], marker="o", label=f"level {level}")
    axes.set_xticks(range(len(days)), days, rotation=15, fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("share corrected")
    axes.set_title("Correction rate per level over time")
    if data.rates:
        axes.legend(fontsize=8)
    return _png(figure)


def iou_histogram(data: ReportData, bins: int = 10) -> bytes:
    """Histograms: per level, the IoU between prediction and accepted mask."""
    figure, axes = _figure()
    for level, values in sorted(data.ious.items()):
        axes.hist(values, bins=bins, range=(0.0, 1.0), alpha=0.6, label=f"level {level} ({len(values)})")
    axes.set_xlabel("IoU(prediction, accepted mask)")
    axes.set_ylabel("annotations")
    axes.set_title("IoU between prediction and accepted mask, per level")
    if data.ious:
        axes.legend(fontsize=8)
    return _png(figure)
