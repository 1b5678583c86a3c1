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

import pytest
from label_studio_sdk.converter.brush import decode_rle
from playwright.sync_api import BrowserContext

from backend.label_studio.label_config import parse_label_config, shipped_label_config
from tests.backend_server import BackendServer, wait_for_record
from tests.e2e.browser import Shots, interactive_project, png, submit, wait_until
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
