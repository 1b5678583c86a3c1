"""What an annotator does, in a real browser: log in, open a task, ask CoReS for masks, accept, submit.

Everything is real: Label Studio 1.23.2 (``label_studio`` fixture), the backend (``python -m backend serve``
plus one ``python -m backend worker`` on the tiny checkpoint), Debian's Chromium driven by Python
Playwright's bundled driver (``scripts/setup_browser.sh`` installs Chromium; no browser is downloaded).

The interactive flow in Label Studio 1.23's labeling UI: with the ML backend connected as interactive and the
"Auto-Annotation" toggle (bottom bar) on, adding text to the prompt TextArea (Shift+Enter or "Add") makes
Label Studio call ``POST /api/ml/<id>/interactive-annotating``, which sends the TextArea result as
``context`` to the backend's /predict. The answer shows as suggestions ("2 suggestions", accept/reject);
accepted, they become one brush region per chain level in the Regions panel. Submitting the annotation
fires the ANNOTATION_CREATED webhook, which the backend records in its correction store.

Screenshots of every step go to ``artifacts/browser/`` (gitignored); on failure also ``failure.png`` and
``failure.html``. Environment: ``CHROMIUM`` (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from playwright.sync_api import BrowserContext, Page

from backend.jobs.refinement import level_prompts
from backend.label_studio.interactive_prompts import interactive_prompts
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from cores.inference.pipeline import CoresPipeline
from tests.backend.fake_label_studio import decode_png
from tests.backend_server import BackendServer, wait_for_record
from tests.e2e.browser import ARTIFACTS, Shots, interactive_project, log_in, png, submit, wait_until
from tests.e2e.label_studio import LabelStudioServer

pytestmark = pytest.mark.e2e

QUERY = "the thing you would use to cut the bread"
SHIPPED_CONFIG = shipped_label_config()
LEVEL_LABELS = list(parse_label_config(SHIPPED_CONFIG).labels)  # level 1, level 2, in the config's order
PROMPT_PLACEHOLDER = ET.fromstring(SHIPPED_CONFIG).find("TextArea").get("placeholder")  # type: ignore[union-attr]
IMAGE_SIZE = (128, 96)  # width, height
RECORD_WAIT_S = 60.0


def test_annotator_gets_one_mask_per_level_from_a_query_and_the_correction_is_recorded(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, browser: BrowserContext
) -> None:
    project, task = interactive_project(
        label_studio, e2e_backend.url, SHIPPED_CONFIG, "annotator in a browser", png(*IMAGE_SIZE)
    )
    page = browser.pages[0] if browser.pages else browser.new_page()
    shots = Shots(page)
    with shots.on_failure():
        # 1. log in through Label Studio's login page
        page.goto(f"{label_studio.url}/user/login/")
        shots.take("login-page")
        page.fill("#email", label_studio.username)
        page.fill("#password", label_studio.password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(lambda url: "/user/login" not in url)
        shots.take("logged-in")

        # 2. open the task in the labeling view of the data manager
        page.goto(f"{label_studio.url}/projects/{project}/data?task={task}")
        prompt = page.get_by_placeholder(PROMPT_PLACEHOLDER)
        prompt.wait_for()
        page.locator(".lsf-main-content img, .lsf-main-content canvas").first.wait_for()
        shots.take("task-open")

        # 3. switch Auto-Annotation on (the toggle's input is hidden behind its label)
        toggle = page.get_by_test_id("bottombar-auto-annotation-toggle")
        assert not toggle.is_checked()
        page.get_by_text("Auto-Annotation", exact=True).click()
        wait_until(toggle.is_checked, 10, "the Auto-Annotation toggle to switch on")
        shots.take("auto-annotation-on")

        # 4. type the query and add it: Label Studio asks the backend for an interactive prediction
        prompt.fill(QUERY)
        with page.expect_response(lambda r: "/interactive-annotating" in r.url) as answer:
            prompt.press("Shift+Enter")
        assert answer.value.status == 200, answer.value.text()
        accept = page.get_by_test_id("bottombar-accept-suggestions-button")
        accept.wait_for()
        suggestions = page.locator(".lsf-auto-accept__info").inner_text().strip()
        assert suggestions == f"{len(LEVEL_LABELS)} suggestions"
        shots.take("suggestions")

        # 5. accept the suggestions: one brush region per chain level, labelled with the level's label
        accept.click()
        titles = page.locator(".lsf-outliner-item .lsf-outliner-item__title")
        wait_until(lambda: titles.count() == len(LEVEL_LABELS), 20, "one region per level")
        assert [t.strip() for t in titles.all_inner_texts()] == LEVEL_LABELS
        assert page.locator(".lsf-outliner-item").count() == len(LEVEL_LABELS)
        shots.take("regions")

        # 6. submit the annotation
        annotation_id = submit(page, task)  # Submit became Update
        shots.take("submitted")

    # Label Studio stored what the annotator accepted: the query and one brush mask per level
    stored = label_studio.api("GET", f"/api/annotations/{annotation_id}/").json()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in stored["result"]:
        by_type.setdefault(item["type"], []).append(item)
    assert [item["value"]["text"] for item in by_type["textarea"]] == [[QUERY]]
    brushes = by_type["brushlabels"]
    assert [item["value"]["brushlabels"] for item in brushes] == [[label] for label in LEVEL_LABELS]
    width, height = IMAGE_SIZE
    for item in brushes:
        assert (item["original_width"], item["original_height"]) == (width, height)
        mask = decode_rle(item["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
        assert mask.shape == (height, width)

    # the backend recorded the correction from the ANNOTATION_CREATED webhook
    record = wait_for_record(e2e_backend, project, annotation_id, RECORD_WAIT_S)
    assert record["task"] == task
    assert record["query"] == QUERY
    assert [level["label"] for level in record["levels"]] == LEVEL_LABELS
    assert all(level["accepted_pixels"] is not None for level in record["levels"])


# --- refining the target with smart clicks ----------------------------------------------------------------
CLICK_LABEL = "Click (level 2)"  # "level 2" in the label: the click refines chain level 2
REFINE_CONFIG = SHIPPED_CONFIG.replace(
    "</BrushLabels>",
    f"""</BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true" smartOnly="true">
    <Label value="{CLICK_LABEL}" smart="true" background="#E91E63"/>
  </KeyPointLabels>""",
)
POSITIVE_AT = (0.3, 0.4)  # fractions of the displayed image where the annotator clicks
NEGATIVE_CANDIDATES = [(fx / 10, fy / 10) for fx in range(1, 10) for fy in range(1, 10)]


def _target_mask(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    """The brush masks of an /interactive-annotating answer, by label (as Label Studio received them)."""
    width, height = IMAGE_SIZE
    masks = {}
    for item in answer["data"]["result"]:
        alpha = decode_rle(item["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
        masks[item["value"]["brushlabels"][0]] = alpha > 0
    return masks


def _reference(pipe: CoresPipeline, context: dict[str, Any]) -> list[np.ndarray]:
    """What the model itself gives for the query refined with exactly the clicks Label Studio sent."""
    image = decode_png(png(*IMAGE_SIZE))
    base = pipe.segment(image, QUERY)
    prompts = interactive_prompts(context, parse_label_config(REFINE_CONFIG))
    levels = level_prompts(prompts, IMAGE_SIZE[0], IMAGE_SIZE[1], len(pipe.chain_tokens))
    assert base.chain_embeddings is not None
    return [lv.mask for lv in pipe.refine(image, QUERY, base.chain_embeddings, levels).levels]


def _negative_spot(pipe: CoresPipeline) -> tuple[float, float]:
    """A spot where a negative click, after the positive one, removes target pixels on this tiny random
    model (found with the model itself; the browser run then checks Label Studio gets exactly that)."""
    px, py = POSITIVE_AT
    positive = {"result": [_keypoint(px * 100, py * 100, True)]}
    after_positive = _reference(pipe, positive)[1]
    for fx, fy in NEGATIVE_CANDIDATES:
        both = {"result": [_keypoint(px * 100, py * 100, True), _keypoint(fx * 100, fy * 100, False)]}
        if (after_positive & ~_reference(pipe, both)[1]).sum() >= 20:
            return fx, fy
    raise AssertionError("no negative click removes target pixels on this model")


SMART_KEYPOINT_JS = """() => {
  const annotation = window.Htx.annotationStore.selected;
  const manager = annotation.names.get("image").getToolsManager();
  const tools = Object.values(manager.tools);
  const smart = tools.find((t) => t.dynamic && /KeyPoint/.test(t.fullName || t.toolName || ""));
  if (smart && !smart.selected) manager.selectTool(smart, true);
  return tools.map((t) => ({
    name: String(t.fullName || t.toolName), dynamic: !!t.dynamic, selected: !!t.selected,
  }));
}"""


def _smart_tool(page: Page) -> None:
    """Pick the smart (interactive) keypoint tool: the toolbar's smart ("Auto-Detect") button cycles through
    the smart tools (the smart brush comes first), so the editor's tool manager selects the keypoint one."""
    tools = page.evaluate(SMART_KEYPOINT_JS)
    assert any(t["selected"] and t["dynamic"] and "KeyPoint" in t["name"] for t in tools), tools


def _keypoint(x: float, y: float, positive: bool) -> dict[str, Any]:
    return {
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 1, "keypointlabels": [CLICK_LABEL]},
    }


def test_a_positive_click_changes_the_target_and_a_negative_click_removes_an_area(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, browser: BrowserContext, tiny_checkpoint
) -> None:
    pipe = CoresPipeline.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    negative_at = _negative_spot(pipe)
    project, task = interactive_project(
        label_studio, e2e_backend.url, REFINE_CONFIG, "clicks in a browser", png(*IMAGE_SIZE)
    )
    page = browser.pages[0] if browser.pages else browser.new_page()
    shots = Shots(page, ARTIFACTS / "refine")
    with shots.on_failure():
        log_in(page, label_studio)
        page.goto(f"{label_studio.url}/projects/{project}/data?task={task}")
        prompt = page.get_by_placeholder(PROMPT_PLACEHOLDER)
        prompt.wait_for()
        image = page.locator(".lsf-main-content img").first
        image.wait_for()
        page.get_by_text("Auto-Annotation", exact=True).click()
        wait_until(page.get_by_test_id("bottombar-auto-annotation-toggle").is_checked, 10, "Auto-Annotation")

        # the query: one mask per level
        prompt.fill(QUERY)
        with page.expect_response(lambda r: "/interactive-annotating" in r.url) as first:
            prompt.press("Shift+Enter")
        assert first.value.status == 200, first.value.text()
        before = _target_mask(first.value.json())
        shots.take("query")

        # a positive click with the smart keypoint tool on level 2 (its label names the level)
        page.get_by_text(CLICK_LABEL, exact=True).first.click()
        _smart_tool(page)  # the interactive ("Auto-Detect") keypoint tool, the only one with smartOnly
        shots.take("smart-tool")
        box = image.bounding_box()
        assert box is not None
        with page.expect_response(lambda r: "/interactive-annotating" in r.url) as clicked:
            page.mouse.click(
                box["x"] + POSITIVE_AT[0] * box["width"], box["y"] + POSITIVE_AT[1] * box["height"]
            )
        assert clicked.value.status == 200, clicked.value.text()
        sent = clicked.value.request.post_data_json["context"]
        assert [item.get("is_positive") for item in sent["result"]] == [True]
        after = _target_mask(clicked.value.json())
        shots.take("positive-click")
        target, context = LEVEL_LABELS[1], LEVEL_LABELS[0]
        np.testing.assert_array_equal(after[context], before[context])  # level 1 as it was
        assert not np.array_equal(after[target], before[target])  # the click changed the target
        np.testing.assert_array_equal(after[target], _reference(pipe, sent)[1])

        # a negative click (Alt+click) removes an area from the target; the editor deselected the label
        page.get_by_text(CLICK_LABEL, exact=True).first.click()
        _smart_tool(page)
        page.keyboard.down("Alt")
        with page.expect_response(lambda r: "/interactive-annotating" in r.url) as negative:
            page.mouse.click(
                box["x"] + negative_at[0] * box["width"], box["y"] + negative_at[1] * box["height"]
            )
        page.keyboard.up("Alt")
        assert negative.value.status == 200, negative.value.text()
        sent = negative.value.request.post_data_json["context"]
        assert False in [item.get("is_positive") for item in sent["result"]]
        removed = _target_mask(negative.value.json())
        shots.take("negative-click")
        np.testing.assert_array_equal(removed[target], _reference(pipe, sent)[1])
        assert (after[target] & ~removed[target]).sum() > 0  # pixels the negative click took away

        # accepted and submitted, Label Studio stores the refined target
        page.get_by_test_id("bottombar-accept-suggestions-button").click()
        annotation_id = submit(page, task)
    stored = label_studio.api("GET", f"/api/annotations/{annotation_id}/").json()
    width, height = IMAGE_SIZE
    brushes = {
        item["value"]["brushlabels"][0]: decode_rle(item["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
        > 0
        for item in stored["result"]
        if item["type"] == "brushlabels"
    }
    np.testing.assert_array_equal(brushes[target], removed[target])
