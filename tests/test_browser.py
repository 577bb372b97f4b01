"""A person's path through the UI in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright; never `playwright install`): upload a shelf photo, pick a detected object from the
dropdown, see the gallery of similar catalogue images."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_server import AppProcess, indexed_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: set SEARCH_SCREENSHOT=docs/screenshot.png to refresh the README's picture
SCREENSHOT = os.environ.get("SEARCH_SCREENSHOT", "")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    with indexed_app(tmp_path_factory.mktemp("browser")) as server:
        yield server


def test_upload_pick_object_and_see_results(app: AppProcess, scenes: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    photo = scenes / "darknet_dog.jpg"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "/", wait_until="domcontentloaded")
            page.locator("#query-image input[type=file]").set_input_files(str(photo))
            # Detection fills the dropdown with numbered objects and draws their boxes.
            status = page.locator("#search-status")
            status.filter(has_text="Top").wait_for(timeout=120_000)
            gallery_items = page.locator("#results button img, #results .thumbnail-item img")
            gallery_items.first.wait_for(timeout=120_000)
            page.locator("#object-choice input").click()
            options = page.locator("[role=option], ul.options li")
            options.first.wait_for(timeout=10_000)
            labels = options.all_inner_texts()
            assert any("Dog" in label for label in labels), labels
            assert any("Whole image" in label for label in labels), labels
            dog = next(i for i, label in enumerate(labels) if "Dog" in label)
            options.nth(dog).click()
            deadline = time.monotonic() + 120
            while "Dog" not in status.inner_text() and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert "Dog" in status.inner_text(), status.inner_text()
            assert gallery_items.count() >= 1
            page.screenshot(path=SCREENSHOT or str(tmp_path / "search.png"), full_page=False)
        finally:
            browser.close()
