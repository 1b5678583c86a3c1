"""Browser helpers of the end-to-end tests: Debian's Chromium through Playwright's bundled driver, numbered
screenshots, Label Studio's login page, a polling wait, a test image.

The ``browser`` fixture (``tests/e2e/conftest.py``) launches Chromium with ``launch``. Environment:
``CHROMIUM`` (default ``/usr/bin/chromium``; ``scripts/setup_browser.sh`` installs it, no browser is
downloaded).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from playwright.sync_api import BrowserContext, Page, Playwright

from tests.backend_server import REPO_ROOT
from tests.e2e.label_studio import LabelStudioServer

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
UI_TIMEOUT_MS = 60_000


def launch(playwright: Playwright, profile: Path) -> BrowserContext:
    """Headless Chromium with a fresh profile, a 1600x1000 viewport and the tests' UI timeouts."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1600, "height": 1000},
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(UI_TIMEOUT_MS)
    return context


class Shots:
    """Numbered screenshots of the steps in ``folder`` (``ARTIFACTS`` by default; its files removed first)."""

    def __init__(self, page: Page, folder: Path = ARTIFACTS) -> None:
        self.page = page
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.is_file():
                old.unlink()

    def take(self, step: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    @contextmanager
    def on_failure(self) -> Iterator[None]:
        """Save ``failure.png`` and ``failure.html`` when the block raises."""
        try:
            yield
        except BaseException:
            try:
                self.page.screenshot(path=str(self.folder / "failure.png"), full_page=True)
                (self.folder / "failure.html").write_text(self.page.content())
            except Exception as exc:  # the page itself may be gone; keep the original error
                (self.folder / "failure.txt").write_text(f"could not capture the page: {exc}")
            raise


def png(width: int, height: int) -> bytes:
    """A noise PNG of ``width`` x ``height`` (fixed seed)."""
    pixels = (np.random.default_rng(7).random((height, width, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``check`` every half second until it returns something truthy; AssertionError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def log_in(page: Page, label_studio: LabelStudioServer) -> None:
    """Log in through Label Studio's login page."""
    page.goto(f"{label_studio.url}/user/login/")
    page.fill("#email", label_studio.username)
    page.fill("#password", label_studio.password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/user/login" not in url)


def interactive_project(
    label_studio: LabelStudioServer, url: str, config: str, title: str, image: bytes
) -> tuple[int, int]:
    """A project on ``config`` with one uploaded PNG task and the backend at ``url`` connected as interactive;
    returns ``(project id, task id)``."""
    client = label_studio.sdk()
    project = client.projects.create(title=title, label_config=config)
    assert project.id is not None
    label_studio.api(
        "POST", f"/api/projects/{project.id}/import", files={"file": ("kitchen.png", image, "image/png")}
    )
    tasks = list(client.tasks.list(project=project.id))
    assert len(tasks) == 1
    assert str(tasks[0].data["image"]).startswith("/data/upload/")
    client.ml.create(project=project.id, url=url, is_interactive=True, title="CoReS")
    assert tasks[0].id is not None
    return project.id, tasks[0].id


def submit(page: Page, task: int) -> int:
    """Press Submit in the labeling view of ``task``; returns the new annotation's id once Label Studio
    created it (201) and Submit became Update."""
    with page.expect_response(
        lambda r: f"/api/tasks/{task}/annotations" in r.url and r.request.method == "POST"
    ) as created:
        page.get_by_test_id("bottombar-submit-button").click()
    assert created.value.status == 201, created.value.text()
    annotation_id: int = created.value.json()["id"]
    page.get_by_test_id("bottombar-update-button").wait_for()
    return annotation_id
