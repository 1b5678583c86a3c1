"""Polygon and bitmask regions for both chain levels, in a real Label Studio editor in a real browser.

Everything is real: Label Studio 1.23.2, the backend (web + worker on the tiny checkpoint), Debian's
Chromium driven by Playwright. The project's config has a PolygonLabels and a BitmaskLabels tag on the image
(two labels each, one per chain level) and the prompt TextArea: a query returns, for every level, the
level's polygons (one region per connected component) and one bitmask region. The test checks the editor's
own region store (every level in both tags, bitmasks decoded by Label Studio from our PNG at the image's
size), accepts, submits, and checks Label Studio's stored annotation and the backend's correction record.

Screenshots go to ``artifacts/browser/formats/`` (gitignored); on failure also ``failure.png``/``.html``.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page

from backend.label_studio.formats.polygon import rasterise
from tests.backend_server import BackendServer, wait_for_record
from tests.e2e.browser import ARTIFACTS, Shots, interactive_project, log_in, submit, wait_until
from tests.e2e.label_studio import LabelStudioServer

pytestmark = pytest.mark.e2e

PLACEHOLDER = "Describe what to segment"
CONFIG = f"""<View>
  <Image name="image" value="$image" smoothing="false"/>
  <TextArea name="prompt" toName="image" editable="true" perRegion="false" required="false"
            maxSubmissions="1" rows="2" showSubmitButton="true" placeholder="{PLACEHOLDER}"/>
  <PolygonLabels name="poly" toName="image">
    <Label value="Context outline" background="#F5A623"/>
    <Label value="Target outline" background="#1E88E5"/>
  </PolygonLabels>
  <BitmaskLabels name="mask" toName="image">
    <Label value="Context mask" background="#E91E63"/>
    <Label value="Target mask" background="#43A047"/>
  </BitmaskLabels>
</View>"""
LEVELS = {
    "polygonlabels": ["Context outline", "Target outline"],
    "bitmasklabels": ["Context mask", "Target mask"],
}
QUERY = "the thing you would use to cut the bread"
WIDTH, HEIGHT = 160, 120
RECORD_WAIT_S = 60.0

# The editor's regions: type, labels, and for bitmasks the size of the canvas Label Studio decoded our PNG to
# and the number of pixels it shows (alpha > 0), for polygons the number of points.
REGIONS_JS = """() => {
  const annotation = window.Htx.annotationStore.selected;
  return annotation.regions.map((r) => {
    const out = {type: r.type, labels: r.labelName ? [r.labelName] : [], suggestion: !!r.fromSuggestion};
    if (r.type === "polygonregion") out.points = r.points.length;
    if (r.type === "bitmaskregion") {
      const canvas = r.offscreenCanvasRef;
      out.size = canvas ? [canvas.width, canvas.height] : null;
      if (canvas) {
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let shown = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) shown += 1;
        out.shown = shown;
      }
    }
    return out;
  });
}"""
SUGGESTIONS_JS = """() => {
  const annotation = window.Htx.annotationStore.selected;
  return Array.from(annotation.suggestions.values())
    .map((r) => ({type: r.type, labels: r.labelName ? [r.labelName] : []}));
}"""


HIDE_JS = """(kind) => {
  window.Htx.annotationStore.selected.regions.filter((r) => r.type === kind).forEach((r) => r.toggleHidden());
}"""


def _grey() -> bytes:
    """A light, smooth image, so that the regions' colours stand out in the screenshots."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    pixels = np.stack([180 + xx // 4, 180 + yy // 4, np.full_like(xx, 200)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _by_type(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        grouped.setdefault(item["type"], []).append(item)
    return grouped


def _ask(page: Page, shots: Shots) -> None:
    prompt = page.get_by_placeholder(PLACEHOLDER)
    prompt.wait_for()
    page.locator(".lsf-main-content img, .lsf-main-content canvas").first.wait_for()
    page.get_by_text("Auto-Annotation", exact=True).click()
    wait_until(page.get_by_test_id("bottombar-auto-annotation-toggle").is_checked, 10, "Auto-Annotation on")
    prompt.fill(QUERY)
    with page.expect_response(lambda r: "/interactive-annotating" in r.url) as answer:
        prompt.press("Shift+Enter")
    assert answer.value.status == 200, answer.value.text()
    page.get_by_test_id("bottombar-accept-suggestions-button").wait_for()
    shots.take("suggestions")


def test_polygon_and_bitmask_regions_for_both_levels_render_and_are_recorded(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, browser: BrowserContext
) -> None:
    project, task = interactive_project(
        label_studio, e2e_backend.url, CONFIG, "polygons and bitmasks in a browser", _grey()
    )
    page = browser.pages[0] if browser.pages else browser.new_page()
    shots = Shots(page, ARTIFACTS / "formats")
    with shots.on_failure():
        log_in(page, label_studio)
        page.goto(f"{label_studio.url}/projects/{project}/data?task={task}")
        _ask(page, shots)

        # the suggestions: both levels in both tags
        suggested = page.evaluate(SUGGESTIONS_JS)
        for kind, labels in (
            ("polygonregion", LEVELS["polygonlabels"]),
            ("bitmaskregion", LEVELS["bitmasklabels"]),
        ):
            assert {label for r in suggested if r["type"] == kind for label in r["labels"]} == set(labels), (
                suggested
            )

        page.get_by_test_id("bottombar-accept-suggestions-button").click()
        regions = wait_until(
            lambda: [r for r in page.evaluate(REGIONS_JS) if r["type"] in ("polygonregion", "bitmaskregion")],
            20,
            "the accepted regions",
        )
        polygons = [r for r in regions if r["type"] == "polygonregion"]
        bitmasks = [r for r in regions if r["type"] == "bitmaskregion"]
        assert {r["labels"][0] for r in polygons} == set(LEVELS["polygonlabels"])
        assert all(r["points"] >= 3 for r in polygons)
        assert sorted(r["labels"][0] for r in bitmasks) == sorted(LEVELS["bitmasklabels"])
        for region in bitmasks:  # Label Studio decoded our PNG at the image's size
            assert region["size"] == [WIDTH, HEIGHT], region
        shown = {r["labels"][0]: r["shown"] for r in bitmasks}
        page.wait_for_timeout(500)
        shots.take("accepted-regions")
        for kind in ("bitmaskregion", "polygonregion"):  # one tag at a time, to see each render
            page.evaluate(HIDE_JS, kind)
            page.wait_for_timeout(300)
            shots.take("only-polygons" if kind == "bitmaskregion" else "only-bitmasks")
            if kind == "bitmaskregion":
                for label in LEVELS["polygonlabels"]:  # a selected polygon shows its outline and vertices
                    page.locator(".lsf-outliner-item", has_text=label).first.click()
                    page.wait_for_timeout(300)
                    shots.take(f"selected-{label.split()[0].lower()}-polygon")
                page.keyboard.press("Escape")
            page.evaluate(HIDE_JS, kind)  # shown again

        annotation_id = submit(page, task)  # Submit became Update
        shots.take("submitted")

    stored = _by_type(label_studio.api("GET", f"/api/annotations/{annotation_id}/").json()["result"])
    assert {item["value"]["polygonlabels"][0] for item in stored["polygonlabels"]} == set(
        LEVELS["polygonlabels"]
    )
    assert sorted(item["value"]["bitmasklabels"][0] for item in stored["bitmasklabels"]) == sorted(
        LEVELS["bitmasklabels"]
    )
    expected: dict[str, np.ndarray] = {}
    for item in stored["polygonlabels"]:
        assert item["value"]["closed"] is True
        label = item["value"]["polygonlabels"][0]
        mask = rasterise([item["value"]["points"]], WIDTH, HEIGHT)
        expected[label] = expected.get(label, np.zeros_like(mask)) | mask
    for item in stored["bitmasklabels"]:
        url = item["value"]["imageDataURL"]
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
            assert image.size == (WIDTH, HEIGHT)
            expected[item["value"]["bitmasklabels"][0]] = np.asarray(image.convert("RGBA"))[:, :, 3] > 0
    for label, pixels in shown.items():  # the editor showed exactly the mask's pixels
        assert pixels == int(expected[label].sum()) > 0, label

    record = wait_for_record(e2e_backend, project, annotation_id, RECORD_WAIT_S)
    assert record["query"] == QUERY
    assert [level["level"] for level in record["levels"]] == [1, 2]
    for level, outline, mask in zip(record["levels"], *LEVELS.values(), strict=True):
        accepted = expected[outline] | expected[mask]  # one level's regions OR-ed across the two tags
        assert level["accepted_pixels"] == int(accepted.sum())
        assert level["iou"] == pytest.approx(1.0)  # submitted as suggested
