"""The Lens-like search path in headless Chromium (Debian's /usr/bin/chromium via Playwright):
upload a shelf photo, click an object, drag a box, open a result, "More like this", apply a
filter; every step asserts on what the page shows. Screenshots of each step are written to the
test's temp folder (set SEARCH_SHOTS=/some/dir to keep them; SEARCH_SCREENSHOT=docs/screenshot.png
refreshes the README's picture)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import AppProcess, indexed_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
SHELF = REPO / "samples" / "queries" / "shelf-peppers.jpg"
SCREENSHOT = os.environ.get("SEARCH_SCREENSHOT", "")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    with indexed_app(tmp_path_factory.mktemp("lens")) as server:
        yield server


def _until(check: Any, what: str, timeout: float = 60.0) -> None:
    """Waits until ``check()`` is true (a bound on waiting, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return
        time.sleep(0.2)
    pytest.fail(f"{what}: still {last!r}")


def _picture_point(page: Any, fx: float, fy: float) -> tuple[float, float]:
    """Page coordinates of a point given as fractions of the shown photo (object-fit:
    contain leaves margins inside the <img> box)."""
    return page.locator("#detections-image img").evaluate(
        """(img, [fx, fy]) => {
            const r = img.getBoundingClientRect();
            const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
            const w = img.naturalWidth * s, h = img.naturalHeight * s;
            return [r.left + (r.width - w) / 2 + fx * w, r.top + (r.height - h) / 2 + fy * h];
        }""",
        [fx, fy],
    )


def test_point_drag_open_more_like_this_and_filter(app: AppProcess, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    shots = Path(os.environ.get("SEARCH_SHOTS", "") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    # The objects the app will draw, from the REST API (same pipeline, same numbering).
    objects = httpx.post(f"{app.url}/api/search", files={"image": SHELF.read_bytes()},
                         data={"k": 1}, timeout=120).json()["objects"]
    assert len(objects) >= 3
    smallest = min(range(len(objects)),
                   key=lambda n: objects[n]["box"]["width"] * objects[n]["box"]["height"])
    target = objects[smallest]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "/", wait_until="domcontentloaded")
            status = page.locator("#search-status")
            captions = page.locator("#results .caption-label")
            dropdown = page.locator("#object-choice input")

            # 1. Upload: objects drawn, the search runs by itself.
            page.locator("#query-image input[type=file]").set_input_files(str(SHELF))
            _until(lambda: "Top 12 of 324" in status.inner_text(), "first search")
            _until(lambda: captions.count() == 12, "12 captions")
            page.screenshot(path=str(shots / "1-upload.png"))

            # 2. Click the object: the smallest box under the click is searched.
            box = target["box"]
            x, y = _picture_point(page, box["left"] + box["width"] / 2,
                                  box["top"] + box["height"] / 2)
            page.mouse.click(x, y)
            wanted = f"{target['label']} {target['number']}"
            _until(lambda: wanted in status.inner_text(), f"search for {wanted}")
            assert dropdown.input_value().startswith(wanted), dropdown.input_value()
            page.screenshot(path=str(shots / "2-click-object.png"))

            # 3. Drag a box around the green peppers: a manual crop, drawn and searched.
            start = _picture_point(page, 0.3, 0.1)
            end = _picture_point(page, 0.7, 0.6)
            page.mouse.move(*start)
            page.mouse.down()
            page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=4)
            page.mouse.move(*end, steps=4)
            page.mouse.up()
            _until(lambda: "your manual crop" in status.inner_text(), "manual crop search")
            assert dropdown.input_value().startswith("Manual box")
            _until(lambda: captions.first.inner_text().startswith("Green Bell Pepper ·"),
                   "green peppers first")
            first_caption = captions.first.inner_text()
            assert "%" in first_caption and "…/Green-Bell-Pepper/" in first_caption
            # the first automatic tags say why a result is there without opening it
            assert "\ntags: " in first_caption, first_caption
            # Every caption is readable in full and every result is on the page (no clipped
            # row inside a fixed-height box).
            assert page.locator("#results .caption-label").evaluate_all(
                "els => els.every(e => e.scrollWidth <= e.clientWidth + 1)")
            gallery = page.locator("#results").bounding_box()
            last = page.locator("#results .thumbnail-item").last.bounding_box()
            assert last["y"] + last["height"] <= gallery["y"] + gallery["height"] + 1
            page.screenshot(path=SCREENSHOT or str(shots / "3-drag-box.png"))
            if SCREENSHOT:
                page.screenshot(path=str(shots / "3-drag-box.png"))

            # 4. Open a result: full source, size, labels and tags.
            page.locator("#results .thumbnail-item").first.click()
            detail = page.locator("#detail-info")
            _until(lambda: detail.is_visible() and "Source:" in detail.inner_text(), "detail")
            text = detail.inner_text()
            assert str(REPO / "samples" / "catalogue" / "Green-Bell-Pepper") in text, text
            assert "Size:" in text and "348 × 348 px" in text and "Tags:" in text
            page.screenshot(path=str(shots / "4-detail.png"))

            # 5. More like this: the stored vector of that item, nothing uploaded again.
            page.locator("#more-like-this").click()
            _until(lambda: "like Green Bell Pepper" in status.inner_text(), "more like this")
            assert not page.locator("#detail").is_visible()
            _until(lambda: captions.count() == 12, "12 similar items")
            page.screenshot(path=str(shots / "5-more-like-this.png"))

            # 6. Filter by category: the "more like this" list, only bananas.
            page.locator("#filters").get_by_text("Filters").click()
            category = page.locator("#filter-category input")
            category.click()
            category.fill("Banana")
            page.locator("ul.options li, [role=option]").filter(has_text="Banana").first.click()
            _until(lambda: "category Banana" in status.inner_text(), "filtered search")
            _until(lambda: captions.count() > 0 and all(
                c.startswith("Banana ·") for c in captions.all_inner_texts()), "only bananas")
            assert "like Green Bell Pepper" in status.inner_text()
            page.screenshot(path=str(shots / "6-filter.png"), full_page=True)
        finally:
            browser.close()


def test_upload_errors_show_once_and_the_index_tab_is_honest(app: AppProcess,
                                                             tmp_path: Path) -> None:
    """One toast per bad upload; a refused folder shows no old progress bar."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    shots = Path(os.environ.get("SEARCH_SHOTS", "") or tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("<html>this is a web page</html>")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "/", wait_until="domcontentloaded")
            status = page.locator("#search-status")
            page.locator("#query-image input[type=file]").set_input_files(str(bad))
            _until(lambda: "⚠️" in status.inner_text(), "upload refused")
            page.wait_for_timeout(1500)  # a second toast would arrive with the chained search
            page.screenshot(path=str(shots / "7-refused-upload.png"))
            toasts = page.locator(".toast-body, [data-testid='toast-body']")
            assert toasts.count() == 1, toasts.all_inner_texts()
            assert "(2)" not in page.locator("body").inner_text()
            # Empty search: no image, no keyword -> says what to do (a keyword box exists).
            # A photo without objects: the search status keeps saying so.
            plain = tmp_path / "plain.png"
            from PIL import Image

            Image.new("RGB", (320, 240), (90, 140, 200)).save(plain)
            page.locator("#query-image input[type=file]").set_input_files(str(plain))
            _until(lambda: "Top" in status.inner_text(), "search of a plain photo")
            assert "No objects detected" in status.inner_text(), status.inner_text()
            page.reload(wait_until="domcontentloaded")
            page.locator("#search-button").click()
            _until(lambda: "Upload a photo or type a keyword" in status.inner_text(), "hint")
            page.screenshot(path=str(shots / "8-empty-search.png"))

            page.locator("button[role=tab]", has_text="Index").click()
            page.locator("#index-source textarea, #index-source input").first.fill("/etc")
            page.locator("#index-start").click()
            progress = page.locator("#index-progress")
            _until(lambda: "Not started" in progress.inner_text(), "refusal shown")
            assert "outside the allowed folders" in page.locator("#index-counts").inner_text()
            assert page.locator("#index-progress progress").count() == 0
            page.screenshot(path=str(shots / "9-refused-folder.png"))
        finally:
            browser.close()
