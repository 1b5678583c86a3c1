"""The report as one self-contained HTML page: inline CSS, plots and thumbnails as base64 PNG data URLs,
no scripts, no external assets. Every number is also in a table cell with ``data-*`` attributes naming it
(``data-version``, ``data-level``, ``data-metric``), so a reader (or a test) can check it."""

from __future__ import annotations

import base64
import logging
import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import numpy as np

from backend.corrections.records import CorrectionRecord
from backend.corrections.store import CorrectionStore, correction_store_path
from backend.operations.settings import Settings
from backend.report.data import ReportData, VersionScores, correction_data, version_scores
from backend.report.figures import iou_histogram, rate_plot, version_plot
from backend.report.thumbnails import thumbnail
from backend.versions.serving import served_version, version_store

logger = logging.getLogger(__name__)

ImageLoader = Callable[[str, int | None], np.ndarray]
"""``(image ref, task id) -> HxWx3 uint8 RGB``; raises when the image cannot be read."""

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}.thumbs figure{margin:0;width:240px;font-size:12px}
.note{color:#666;font-size:13px}.legend span{padding:0 6px;margin-right:6px}
"""


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _version_table(versions: list[VersionScores]) -> str:
    levels = sorted({level for v in versions for level in v.levels})
    head = "".join(
        f"<th>level {k} gIoU</th><th>level {k} cIoU</th><th>level {k} correction</th>" for k in levels
    )
    rows = []
    for v in versions:
        cells = []
        for level in levels:
            scores = v.levels.get(level, {})
            for metric in ("giou", "ciou", "mean_correction"):
                cells.append(
                    f'<td class="num" data-version="{escape(v.name)}" data-level="{level}" '
                    f'data-metric="{metric}">{_num(scores.get(metric))}</td>'
                )
        name = escape(v.name) + (" <b>(served)</b>" if v.current else "")
        rows.append(
            f"<tr><td>{name}</td><td>{escape(v.scored_as or '-')}</td><td>{escape(v.gate or '-')}</td>"
            + "".join(cells)
            + "</tr>"
        )
    reasons = "".join(
        f"<li><b>{escape(v.name)}</b> ({escape(v.gate or '')}): {escape(v.reason)}</li>"
        for v in versions
        if v.reason
    )
    table = (
        "<table><tr><th>version</th><th>scored as</th><th>gate</th>"
        + head
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )
    return table + (f"<ul class='note'>{reasons}</ul>" if reasons else "")


def _rate_table(data: ReportData) -> str:
    rows = [
        f'<tr><td>{level}</td><td>{day}</td><td class="num" data-level="{level}" data-day="{day}" '
        f'data-metric="correction_rate">{_num(data.rate(level, day), 3)}</td>'
        f'<td class="num">{c} / {t}</td></tr>'
        for level, per_day in data.rates.items()
        for day, (c, t) in per_day.items()
    ]
    return (
        "<table><tr><th>level</th><th>day (UTC)</th><th>rate</th><th>corrected / predicted</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _iou_table(data: ReportData) -> str:
    rows = [
        f'<tr><td>{level}</td><td class="num" data-level="{level}" data-metric="count">{len(values)}</td>'
        f'<td class="num" data-level="{level}" data-metric="mean_iou">'
        f"{_num(statistics.fmean(values), 4)}</td>"
        f'<td class="num">{_num(statistics.median(values), 4)}</td></tr>'
        for level, values in sorted(data.ious.items())
    ]
    return (
        "<table><tr><th>level</th><th>annotations</th><th>mean IoU</th><th>median IoU</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _worst(records: list[CorrectionRecord], images: ImageLoader | None) -> str:
    figures = []
    for record in records:
        final = record.level(record.final_level or 0)
        if final is None:
            continue
        predicted, accepted = final.predicted_mask(), final.accepted_mask()
        if predicted is None:
            continue
        if accepted is None:
            accepted = np.zeros_like(predicted)
        image, note = None, ""
        if images is not None and record.image_ref:
            try:
                image = images(record.image_ref, record.task_id)
            except Exception as exc:  # one unreadable image must not lose the report
                note = f" (image unavailable: {type(exc).__name__})"
                logger.info("report: image of record %s unavailable: %s", record.id, exc)
        png = thumbnail(image, predicted, accepted)
        figures.append(
            f'<figure data-record="{record.id}"><img alt="record {record.id}" src="{_data_url(png)}">'
            f"<figcaption>record {record.id} &middot; task {record.task_id} &middot; final IoU "
            f'<span data-record="{record.id}" data-metric="final_iou">{_num(record.final_iou, 3)}</span>'
            f"{escape(note)}<br>{escape((record.query or '')[:120])}</figcaption></figure>"
        )
    if not figures:
        return "<p class='note'>No correction with a prediction yet.</p>"
    legend = (
        "<p class='legend'><span style='background:#e62828'>predicted only</span>"
        "<span style='background:#28c83c'>accepted only</span>"
        "<span style='background:#f0dc28'>both</span></p>"
    )
    return legend + "<div class='thumbs'>" + "".join(figures) + "</div>"


def render(data: ReportData, served: str | None, images: ImageLoader | None = None) -> str:
    """The HTML page for ``data``."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>CoReS loop report</title>",
        f"<style>{STYLE}</style></head><body><h1>CoReS active-learning report</h1>",
        f"<p class='note'>Generated {generated}; served version <b id='served'>{escape(served or '-')}</b>; "
        f"<span id='records'>{data.records}</span> annotation(s) in the correction log.</p>",
        "<h2>Versions on the held-out split</h2>",
        f"<img alt='held-out scores per version' src='{_data_url(version_plot(data.versions))}'>",
        _version_table(data.versions),
        "<h2>Correction rate per level over time</h2>",
        f"<img alt='correction rate' src='{_data_url(rate_plot(data))}'>",
        _rate_table(data),
        "<h2>IoU between prediction and accepted mask</h2>",
        f"<img alt='IoU histogram' src='{_data_url(iou_histogram(data))}'>",
        _iou_table(data),
        "<h2>Worst recent corrections</h2>",
        _worst(data.worst, images),
        "</body></html>",
    ]
    return "\n".join(parts)


def build_report(settings: Settings, *, project: int | None = None, images: ImageLoader | None = None) -> str:
    """The report of the correction log (``project``'s only, when given) and every model version."""
    path = correction_store_path(settings)
    if path.is_file():
        with CorrectionStore(path) as store:
            data = correction_data(store, project)
    else:
        data = ReportData()
    served = served_version(settings, project=project).name
    data.versions = version_scores(version_store(settings), served)
    return render(data, served, images)


def write_report(html: str, out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` (the folder is created); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "report.html"
    target.write_text(html, encoding="utf-8")
    return target
