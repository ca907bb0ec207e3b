"""The search page driven in a real headless Chromium (Playwright on the system's browser), as a
person uses it: the header, a caption search, an image upload, "more like this", the captions
view, a model whose caption box is disabled with the reason; a screenshot of each state is saved.

Skipped, saying why, where Chromium or Playwright is missing (CI installs both: .ci/run).
Screenshots go to $DCHML_SCREENSHOTS when set, else to the test's temporary folder."""
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="dchml serve needs the serve extras: pip install 'dchml[serve]'")
from serve_fixtures import RunningServer, app_for, feature_run, image_run, set_threads  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str | None:
    given = os.environ.get("DCHML_CHROMIUM")
    if given:
        return given if os.path.isfile(given) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the browser test needs Playwright (pip install playwright)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium, or set DCHML_CHROMIUM "
                                                "to the browser's path)"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    set_threads()
    root = tmp_path_factory.getbasetemp() / "serve-runs"
    runs = {"image": image_run(root), "feature": feature_run(root)}
    running = {name: RunningServer(app_for(run)[0]) for name, run in runs.items()}
    yield running, runs
    for server in running.values():
        server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        # Playwright's own browser download is not used: the system's Chromium, a fresh profile.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("DCHML_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)  # CSP violations land here
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    return page, problems


def _search(page, click: str, kind: str):
    page.click(click)
    page.wait_for_selector(f"#results[data-state=done][data-kind={kind}]", timeout=15_000)
    return page.query_selector_all("#results .hit")


def _labels(card) -> list[int]:
    return [int(x) for x in card.query_selector(".labels").inner_text().removeprefix("labels ").split(", ")]


def test_a_person_searches_by_caption_by_photo_and_more_like_this(servers, browser, shots):
    running, runs = servers
    page, problems = _open(browser, running["image"].url + "/")
    header = page.inner_text("header")
    assert "32 bits" in header and "I→T" in header and "T→I" in header and "40 images" in header

    page.fill("#caption", "a dog")
    cards = _search(page, "#caption-search", "caption")
    assert len(cards) == 20
    dog = 1  # image_data.WORDS: label 1 is "dog, 東京"
    assert sum(dog in _labels(card) for card in cards[:5]) >= 4
    page.wait_for_function("[...document.querySelectorAll('#results img')].slice(0, 5)"
                           ".every((img) => img.complete && img.naturalWidth > 0)", timeout=15_000)
    assert "d = " in cards[0].inner_text()
    page.screenshot(path=str(shots / "serve_caption.png"), full_page=True)

    photo = runs["image"]["data"] / "img" / "9.jpg"
    page.set_input_files("#image-file", str(photo))
    cards = _search(page, "#image-search", "image")
    same = page.query_selector("#results .hit[data-item='9']")
    assert same is not None and same.get_attribute("data-distance") == "0"
    assert page.query_selector("#query img") is not None  # the uploaded photo is shown as the query
    page.screenshot(path=str(shots / "serve_image.png"), full_page=True)

    first = cards[0].get_attribute("data-item")
    cards[0].query_selector("button.more").click()
    page.wait_for_selector("#results[data-state=done][data-kind=item]", timeout=15_000)
    assert first in page.inner_text("#query")
    marked = page.query_selector_all("#results .hit.relevant")
    assert marked and "✓ shares a label" in marked[0].inner_text()
    page.screenshot(path=str(shots / "serve_more_like_this.png"), full_page=True)

    page.check("#target-text")
    page.fill("#caption", "sky")
    cards = _search(page, "#caption-search", "caption")
    assert all(card.query_selector("img") is None for card in cards)
    assert "sky" in cards[0].query_selector(".caption").inner_text().lower()
    assert problems == []
    for name in ("serve_caption.png", "serve_image.png", "serve_more_like_this.png"):
        assert (shots / name).stat().st_size > 10_000
    page.close()


def test_the_page_disables_what_a_model_cannot_do_and_shows_errors(servers, browser, shots):
    running, _ = servers
    page, problems = _open(browser, running["feature"].url + "/")
    assert page.is_disabled("#caption") and page.is_disabled("#caption-search")
    assert "no vocabulary" in page.inner_text("#caption-unavailable")
    assert page.is_disabled("#image-file") and page.is_visible("#image-unavailable")
    assert "images" in page.inner_text("#fact-database") and "MAP@100" in page.inner_text("#fact-map")
    page.click("#random-query")
    page.wait_for_selector("#results[data-state=done][data-kind=item]", timeout=15_000)
    cards = page.query_selector_all("#results .hit")
    assert len(cards) == 20 and "#" in cards[0].inner_text()  # ids and labels: this data set has no image files
    page.fill("#item-id", "100000")
    page.click("#item-search")
    page.wait_for_selector("#results[data-state=error]", timeout=15_000)
    assert "no item 100000" in page.inner_text("#status")
    page.screenshot(path=str(shots / "serve_features_only.png"), full_page=True)
    assert problems == [] or all("404" in p for p in problems)  # the refused item is logged by the browser
    page.close()
