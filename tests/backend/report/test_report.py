"""The report: every number on the page is the store's (versions' held-out scores, correction rates per
day, IoU counts, the worst recent corrections), the page is self-contained, ``GET /report`` serves it
behind basic auth and ``python -m backend report --out DIR`` writes it."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from backend.corrections.held_out import CORRECTED_BELOW_IOU
from backend.corrections.store import CorrectionStore, correction_store_path
from backend.operations.settings import Settings
from backend.report.cli import report_main
from backend.web.app import create_app
from tests.backend.report.loop_fixtures import DAYS, PER_DAY, record_loop, version_json


def cell(html: str, **attrs: str) -> str:
    """The text of the one element carrying these ``data-*`` attributes."""
    pattern = "".join(rf'(?=[^>]*data-{k.replace("_", "-")}="{re.escape(v)}")' for k, v in attrs.items())
    found = re.findall(rf"<[a-z]+{pattern}[^>]*>([^<]*)<", html)
    assert len(found) == 1, (attrs, found)
    return found[0]


def check_against_the_store(html: str, settings: Settings) -> None:
    for info in version_json(settings):
        for level in info["metrics"]["after"]["levels"]:
            for metric in ("giou", "ciou", "mean_correction"):
                shown = cell(html, version=info["name"], level=str(level["level"]), metric=metric)
                assert shown == f"{level[metric]:.4f}"
    base = "cores-cores"  # scored only as the first run's served version
    first = version_json(settings)[0]
    assert (
        cell(html, version=base, level="2", metric="giou")
        == f"{first['metrics']['before']['levels'][1]['giou']:.4f}"
    )

    with CorrectionStore(correction_store_path(settings)) as store:
        records = store.list(latest_only=True)
        light = store.list(latest_only=True, masks=False)  # what the report reads: IoUs without masks
    assert [[lv.iou for lv in r.levels] for r in light] == [[lv.iou for lv in r.levels] for r in records]
    assert all(lv.accepted is None and lv.predicted is None for r in light for lv in r.levels)
    assert all(lv.accepted is not None for r in records for lv in r.levels)
    assert re.search(rf"<span id='records'>{len(records)}</span>", html)
    counts: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    ious: dict[int, list[float]] = defaultdict(list)
    for record in records:
        for level in record.levels:
            assert level.iou is not None
            counts[(level.level, record.received_at[:10])][0] += level.iou < CORRECTED_BELOW_IOU
            counts[(level.level, record.received_at[:10])][1] += 1
            ious[level.level].append(level.iou)
    assert {day for _, day in counts} == set(DAYS)
    for (level, day), (corrected, total) in counts.items():
        assert total == PER_DAY
        assert cell(html, level=str(level), day=day, metric="correction_rate") == f"{corrected / total:.3f}"
    for level, values in ious.items():
        assert cell(html, level=str(level), metric="count") == str(len(values))
        assert cell(html, level=str(level), metric="mean_iou") == f"{statistics.fmean(values):.4f}"
    worst = sorted(records, key=lambda r: (r.final_iou, r.id))[:6]
    shown_ids = [int(i) for i in re.findall(r'<figure data-record="(\d+)"', html)]
    assert shown_ids == [r.id for r in worst]
    for record in worst:
        assert cell(html, record=str(record.id), metric="final_iou") == f"{record.final_iou:.3f}"
    # self-contained: every image inline, no script, no stylesheet or image from elsewhere
    assert "<script" not in html
    assert "<link" not in html
    sources = re.findall(r"src=['\"]([^'\"]+)['\"]", html)
    assert len(sources) == 3 + len(worst)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "image unavailable" not in html  # the data: URI images were drawn under the masks


def test_get_report_shows_the_stores_numbers(client: FlaskClient, settings: Settings) -> None:
    record_loop(settings)
    response = client.get("/report")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    check_against_the_store(html, settings)
    assert "level 1 drops" in html  # the candidate's reason
    assert client.get("/report?project=x").status_code == 400
    only = client.get("/report?project=99").get_data(as_text=True)
    assert "<span id='records'>0</span>" in only


def test_report_is_behind_basic_auth(settings: Settings, redis_conn: redis.Redis) -> None:
    secured = settings.with_changes(basic_auth_user="ops", basic_auth_pass="s3cret-pass")
    app = create_app(secured, connection=redis_conn).test_client()
    assert app.get("/report").status_code == 401
    assert app.get("/report", auth=("ops", "s3cret-pass")).status_code == 200


def test_report_command_writes_one_self_contained_file(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    record_loop(settings)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    assert report_main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert [p.name for p in out.iterdir()] == ["report.html"]
    check_against_the_store((out / "report.html").read_text(), settings)


def test_a_thumbnail_colours_predicted_accepted_and_both() -> None:
    import io

    import numpy as np
    from PIL import Image

    from backend.report.thumbnails import SIDE, thumbnail

    predicted = np.zeros((20, 40), dtype=bool)
    accepted = np.zeros((20, 40), dtype=bool)
    predicted[:, :20] = True
    accepted[:, 10:30] = True
    image = np.full((20, 40, 3), 100, dtype=np.uint8)
    picture = np.asarray(Image.open(io.BytesIO(thumbnail(image, predicted, accepted))).convert("RGB"))
    assert picture.shape == (SIDE // 2, SIDE, 3)
    row = picture[SIDE // 4]
    red, both, green, plain = (row[int(x * SIDE / 40)] for x in (5, 15, 25, 35))
    assert (red[0] > 150, red[1] < 100) == (True, True)
    assert (both[0] > 150, both[1] > 150, both[2] < 100) == (True, True, True)
    assert (green[1] > 150, green[0] < 100) == (True, True)
    assert tuple(plain) == (100, 100, 100)
    with pytest.raises(ValueError, match="differ in shape"):
        thumbnail(None, predicted, accepted[:5])
