"""The web page in a real browser: Playwright drives the system's Chromium (no browser download).

Skipped where no Chromium is installed; `.ci/run` installs Debian's. The screenshot in the README
(docs/serve.png) is taken here, so it shows the page as it is."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from spotit.app import Service, create_app

CHROMIUM = os.environ.get("SPOTIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve.png"
# no network here: without these Chromium keeps trying to reach Google's services
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    """A point in the query photo's pixels -> where it is on screen."""
    return page.evaluate("""([x, y]) => {
        const photo = document.getElementById('photo'), r = photo.getBoundingClientRect();
        return [r.left + x * r.width / photo.naturalWidth, r.top + y * r.height / photo.naturalHeight];
    }""", [x, y])


def drawn_boxes(page) -> list[list[float]]:
    return page.evaluate("""() => [...document.querySelectorAll('#overlay .box')].map(
        b => ['x', 'y', 'width', 'height'].map(k => Number(b.getAttribute(k))))""")


def test_draw_a_box_search_and_see_the_object_outlined(browser, serve, demo_index, demo):
    base = serve(create_app(Service(demo_index)))
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    requests, console_errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.goto(base + "/")
    page.get_by_text(f"{len(demo_index)} photos").wait_for()

    # a refused input says why
    page.get_by_role("button", name="Search").click()
    assert "Choose, drop or paste a query photo" in page.locator("#message").text_content()

    page.set_input_files("#file", str(demo["query"]))
    page.locator("#stage").wait_for()
    x, y, w, h = demo["box"]
    page.mouse.move(*to_screen(page, x + 2, y + 2))
    page.mouse.down()
    page.mouse.move(*to_screen(page, x + w / 2, y + h / 2), steps=5)
    page.mouse.move(*to_screen(page, x + w - 2, y + h - 2), steps=5)
    page.mouse.up()
    (box,) = drawn_boxes(page)
    assert box == pytest.approx([x + 2, y + 2, w - 4, h - 4], abs=3)
    assert page.locator("#box-list li").count() == 1

    # a second box, moved by dragging it, then removed with the keyboard
    page.get_by_role("button", name="Add a box").click()
    assert len(drawn_boxes(page)) == 2
    before = drawn_boxes(page)[1]
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    after = drawn_boxes(page)[1]
    assert after[0] > before[0] and after[3] > before[3] and after[1] == before[1]
    page.keyboard.press("Delete")
    assert drawn_boxes(page) == [box]

    page.select_option("#method", "hybrid")
    page.get_by_role("button", name="Search").click()
    page.locator(".result").first.wait_for()
    results = page.locator(".result")
    assert results.count() == 10
    top_ids = [results.nth(i).get_attribute("data-id") for i in range(3)]
    assert set(top_ids) == set(demo["relevant"])
    # the first result is located: its outline is drawn over its thumbnail, inside it
    outline = results.first.locator("polygon.outline")
    assert outline.count() == 1
    thumb, drawn = results.first.locator(".thumb").bounding_box(), outline.bounding_box()
    assert drawn["width"] > 10 and drawn["height"] > 10
    assert thumb["x"] - 2 <= drawn["x"] and drawn["x"] + drawn["width"] <= thumb["x"] + thumb["width"] + 2
    page.wait_for_function("() => [...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth)")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # each result says whether it shows the object; "sure matches only" stops there
    assert results.first.get_attribute("data-match") == "yes" and page.locator(".result .match.yes").count() >= 3
    page.select_option("#matches", "yes")
    page.get_by_role("button", name="Search").click()
    page.wait_for_function("() => document.querySelectorAll('.result').length !== 10")
    assert {results.nth(i).get_attribute("data-match") for i in range(results.count())} == {"yes"}
    page.select_option("#matches", "")

    # a click opens the full photo, outlined; Escape closes it
    results.first.click()
    viewer = page.locator("#viewer")
    viewer.wait_for()
    page.wait_for_function("() => document.getElementById('viewer-photo').naturalWidth > 0")
    assert page.locator("#viewer-overlay polygon.outline").count() == 1
    page.keyboard.press("Escape")
    assert not viewer.is_visible()

    # a second photo of another object: both are searched, each result says which photo found it
    page.set_input_files("#more", str(demo["gallery"] / "cat-1.jpg"))
    page.get_by_role("button", name="Photo 2: cat-1.jpg (whole)").wait_for()
    page.get_by_role("button", name="Search").click()
    page.get_by_text("for 2 photos").wait_for()
    page.get_by_text("found by photo 2").first.wait_for()

    # a scope: a folder the gallery lacks holds no result
    page.get_by_text("Narrow the search").click()
    page.fill("#under", "no-such-folder")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("0 results").wait_for()

    # the API's documentation renders from local assets
    page.goto(base + "/docs")
    page.get_by_text("/api/search").first.wait_for()

    assert all(url.startswith(base) or url.startswith("blob:") for url in requests), requests
    assert not console_errors, console_errors


def test_refused_inputs_and_updates_from_the_page(browser, serve, served_copy, demo, tmp_path):
    gallery = served_copy.gallery
    shutil.copy(demo["query"], gallery / "added.jpg")
    base = serve(create_app(Service(served_copy), max_upload=200_000))
    page = browser.new_page()
    page.goto(base + "/")
    page.get_by_text(f"{len(served_copy)} photos").wait_for()

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a photo")
    page.set_input_files("#file", str(not_image))
    page.get_by_text("Neither the browser nor spotit can show notes.jpg").wait_for()
    page.get_by_role("button", name="Search").click()
    page.get_by_text("notes.jpg: not an image").wait_for()

    # a HEIC photo, which Chromium cannot show: spotit's preview stands in, boxes are in the photo's pixels
    heic = tmp_path / "query.heic"
    Image.open(demo["query"]).save(heic, quality=90)
    page.set_input_files("#file", str(heic))
    page.locator("#stage").wait_for()
    width, height = Image.open(demo["query"]).size
    assert page.locator("#overlay").get_attribute("viewBox") == f"0 0 {width} {height}"

    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(300_000))
    page.set_input_files("#file", str(big))
    page.get_by_role("button", name="Search").click()
    page.get_by_text("larger than the limit").wait_for()

    page.get_by_role("button", name="Update index").click()
    page.get_by_text("Index updated: 1 added").wait_for(timeout=60_000)
    page.get_by_text(f"{len(served_copy)} photos").wait_for()
