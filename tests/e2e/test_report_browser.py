"""The report in headless Chromium: written by ``python -m backend report``, opened from the file, every
plot and thumbnail decoded by the browser, the numbers the browser shows equal the store's, a screenshot
saved as ``docs/report.png`` (the README shows it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext

from backend.corrections.store import CorrectionStore, correction_store_path
from backend.operations.settings import Settings
from backend.report.cli import report_main
from tests.backend.report.loop_fixtures import record_loop, version_json
from tests.backend_server import REPO_ROOT

pytestmark = pytest.mark.e2e

SCREENSHOT = REPO_ROOT / "docs" / "report.png"


def test_the_report_renders_in_chromium_with_the_stores_numbers(
    browser: BrowserContext,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(checkpoint=str(tiny_checkpoint), model_dir=tmp_path / "models")
    record_loop(settings)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert report_main(["--out", str(tmp_path / "out")]) == 0
    page_file = Path(capsys.readouterr().out.strip())

    page = browser.new_page()
    page.set_viewport_size({"width": 1150, "height": 900})
    blocked: list[str] = []
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(("file:", "data:"))
            else (blocked.append(route.request.url), route.abort())
        ),
    )
    page.goto(page_file.as_uri())
    images = page.locator("img")
    assert images.count() == 3 + 6
    for i in range(images.count()):  # every inline PNG decodes
        assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), i
    assert blocked == []  # nothing fetched from anywhere

    for info in version_json(settings):
        for level in info["metrics"]["after"]["levels"]:
            shown = page.locator(
                f'td[data-version="{info["name"]}"][data-level="{level["level"]}"][data-metric="giou"]'
            ).inner_text()
            assert shown == f"{level['giou']:.4f}"
    with CorrectionStore(correction_store_path(settings)) as store:
        records = store.list(latest_only=True)
    assert page.locator("#records").inner_text() == str(len(records))
    worst = sorted(records, key=lambda r: (r.final_iou, r.id))[0]
    caption = page.locator(f'span[data-record="{worst.id}"][data-metric="final_iou"]').inner_text()
    assert caption == f"{worst.final_iou:.3f}"

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 20_000
