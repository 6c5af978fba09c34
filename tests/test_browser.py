"""The app in a real browser: Debian's chromium driven by Playwright (no browser is downloaded).

Uploads a test image, waits for both models' heatmaps, opens a curated example, browses the
error gallery and the model report, plays three quiz questions, and saves screenshots to
tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Model calls run on a busy 2-core CI box: allow minutes, not seconds.
TIMEOUT_MS = 180_000


VIEWPORT = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


# Gradio's own frontend (6.31): the stub `close()` of its fetch-based event stream warns this when
# an event's stream ends (every upload; seen with a bare gr.File app too). Nothing the app can change.
CONSOLE_NOISE = ("Method not implemented.",)


class ConsoleErrors:
    """Collects the page's console errors and warnings and its uncaught exceptions; `check()`
    fails on any (Gradio reports wiring mistakes, e.g. "Too many arguments provided for the
    endpoint", as warnings)."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _on_console(self, msg) -> None:
        if msg.type in ("error", "warning") and msg.text not in CONSOLE_NOISE:
            self.errors.append(f"{msg.type}: {msg.text}")

    def check(self) -> None:
        assert self.errors == [], f"browser console errors: {self.errors}"


@pytest.fixture(scope="module")
def browser_page(app_server):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`).")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            errors = ConsoleErrors(page)
            page.goto(app_server.url)
            # The page is served at once; the models load behind it and the status line says when.
            expect(page.locator("#status-line")).to_contain_text("DavidNet ready · CheXNet ready")
            yield page, errors
        finally:
            browser.close()


@pytest.fixture()
def page(browser_page):
    """The module's page; each test fails on a console error it caused."""
    page, errors = browser_page
    yield page
    errors.check()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def upload(page, path) -> None:
    """Put a file into the upload box (clearing the one it holds)."""
    clear = page.locator("#upload").get_by_role("button", name="Clear")
    if clear.count():
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def in_view(page, selector: str) -> bool:
    """Whether the element's top edge lies inside the viewport (the user sees it without scrolling)."""
    box = page.locator(selector).bounding_box()
    # A smooth scroll to the element's top can stop a fraction of a pixel above it.
    return box is not None and -2 <= box["y"] < page.viewport_size["height"]


def test_upload_shows_both_models_side_by_side(page, data_dir):
    from playwright.sync_api import expect

    expect(page.locator("#notice")).to_contain_text("Not for diagnosis")
    upload(page, data_dir / "test/Covid/0100.jpeg")
    for name in ("davidnet", "chexnet"):
        expect(page.locator(f"#diagnose-{name}-overlay img")).to_be_visible()
        expect(page.locator(f"#diagnose-{name}-summary")).to_contain_text("Grad-CAM: where")
        expect(page.locator(f"#diagnose-{name}-overlay")).to_contain_text("where the model looked")
    expect(page.locator("#preview img")).to_be_visible()
    # Both columns sit side by side: DavidNet left of CheXNet, on the same row.
    davidnet = page.locator("#diagnose-davidnet-overlay").bounding_box()
    chexnet = page.locator("#diagnose-chexnet-overlay").bounding_box()
    assert davidnet["x"] + davidnet["width"] <= chexnet["x"] + 1
    assert abs(davidnet["y"] - chexnet["y"]) < 50
    # The colour scale is drawn beside the X-ray, not over it: the overlay is wider than the
    # (square) preview by the strip.
    size = page.locator("#diagnose-davidnet-overlay img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    preview = page.locator("#preview img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert size[1] == preview[1] and size[0] > preview[0], (size, preview)
    shot(page, "diagnose_upload.png")


def test_bad_file_says_so_once_and_a_good_one_clears_it(page, data_dir, tmp_path):
    from playwright.sync_api import expect

    notes = tmp_path / "notes.png"
    notes.write_text("these are my notes, not an X-ray")
    upload(page, notes)
    expect(page.locator("#diagnose-status")).to_contain_text("Could not read this file")
    # Said inline only: no toast repeating it (that would outlive the next upload).
    page.wait_for_timeout(500)
    assert page.locator(".toast-body").count() == 0
    upload(page, data_dir / "test/Normal/0101.jpeg")
    expect(page.locator("#diagnose-davidnet-overlay img")).to_be_visible()
    expect(page.locator("#diagnose-status")).not_to_contain_text("Could not read")
    assert page.locator(".toast-body").count() == 0


def test_example_reveals_its_true_label_in_view(page):
    from playwright.sync_api import expect

    # The last example sits low in the left column: its answer must still come into view.
    examples = page.locator("#examples img")
    examples.last.scroll_into_view_if_needed()
    examples.last.click()
    expect(page.locator("#answer")).to_contain_text("True label")
    expect(page.locator("#diagnose-davidnet-overlay img")).to_be_visible()
    page.wait_for_timeout(1000)  # the scroll to the result
    assert in_view(page, "#answer"), "the true label is above the screen"
    shot(page, "diagnose_example.png")


def test_upload_clears_the_example_selection(page, data_dir):
    from playwright.sync_api import expect

    page.locator("#examples img").first.click()
    expect(page.locator("#answer")).to_contain_text("True label")
    expect(page.locator("#examples .thumbnail-item.selected")).to_have_count(1)
    upload(page, data_dir / "test/Covid/0100.jpeg")
    expect(page.locator("#answer")).not_to_contain_text("True label")
    expect(page.locator("#examples .thumbnail-item.selected")).to_have_count(0)


def test_error_gallery_thumbnails_and_selection_in_view(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Error gallery").click()
    expect(page.locator("#gallery-status")).to_contain_text("3 test images match")
    thumbnails = page.locator("#error-gallery img")
    expect(thumbnails).to_have_count(3)
    # One confidence format everywhere: percent, like the model columns.
    expect(page.locator("#error-gallery")).to_contain_text("COVID-19 > Normal (80.0%)")
    thumbnails.first.click()
    expect(page.locator("#case-details")).to_contain_text("COVID-00003b")
    for name in ("davidnet", "chexnet"):
        expect(page.locator(f"#gallery-{name}-overlay img")).to_be_visible()
    page.wait_for_timeout(1000)
    assert in_view(page, "#case-details"), "the opened case is off-screen"
    shot(page, "error_gallery.png")


def test_error_gallery_case_in_view_on_a_phone(page):
    from playwright.sync_api import expect

    page.set_viewport_size(PHONE)
    try:
        page.get_by_role("tab", name="Error gallery").click()
        page.locator("#error-gallery img").nth(1).click()
        expect(page.locator("#case-details")).to_contain_text("0103")
        page.wait_for_timeout(1500)
        assert in_view(page, "#case-details"), "the opened case is off-screen on a phone"
        shot(page, "error_gallery_phone.png")
    finally:
        page.set_viewport_size(VIEWPORT)


def test_model_report_tab(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Model report").click()
    expect(page.get_by_text("Paper (reported)").first).to_be_visible()
    expect(page.get_by_text("Known confounds of this dataset.")).to_be_visible()
    shot(page, "model_report.png")


def test_quiz_three_questions_and_the_score(page):
    from urllib.parse import unquote

    from playwright.sync_api import expect

    from covid_xray.config import CLASS_NAMES

    page.get_by_role("tab", name="Quiz").click()
    page.locator("#quiz-mode").get_by_text("Hard cases").click()
    page.locator("#quiz-new").click()
    # Hard cases of the fixture reports: the four test images at least one model got wrong.
    expect(page.locator("#quiz-status")).to_contain_text("Question 1 of 4")
    expect(page.locator("#quiz-score")).to_contain_text("answered: 0 of 4")
    folders = [f"/{name}/" for name in CLASS_NAMES]
    for number in (1, 2, 3):
        image = page.locator("#quiz-image img")
        expect(image).to_be_visible()
        source = unquote(image.get_attribute("src") or "")
        assert source and "test/" not in source and not any(f in source for f in folders), source
        expect(page.locator("#quiz-reveal")).not_to_contain_text("Truth")
        choice = CLASS_NAMES[number % len(CLASS_NAMES)].lower().replace(" ", "-")
        page.locator(f"#quiz-answer-{choice}").click()
        expect(page.locator("#quiz-score")).to_contain_text(f"answered: {number} of 4")
        expect(page.locator("#quiz-reveal")).to_contain_text("Truth:")
        for name in ("davidnet", "chexnet"):
            expect(page.locator(f"#quiz-{name}-overlay img")).to_be_visible()
        if number == 1:
            shot(page, "quiz_revealed.png")
        expect(page.locator("#quiz-answer-normal")).to_be_disabled()
        if number < 3:
            page.locator("#quiz-next").click()
            expect(page.locator("#quiz-status")).to_contain_text(f"Question {number + 1} of 4")
    expect(page.locator("#quiz-score")).to_contain_text("You")
    expect(page.locator("#quiz-score")).to_contain_text("DavidNet")
    expect(page.locator("#quiz-score")).to_contain_text("CheXNet")
    shot(page, "quiz_score.png")


def test_see_the_shortcut_on_an_example(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Diagnose").click()
    page.locator("#examples img").first.click()
    expect(page.locator("#answer")).to_contain_text("True label")
    page.locator("#diagnose-shortcut").get_by_text("See the shortcut").click()
    # The training films are indexed in the background after the models load: until then the
    # tool says so, and a visitor clicks again later, as this test does.
    films = page.locator("#diagnose-chexnet-neighbours img")
    for _ in range(40):
        page.locator("#diagnose-explore").click()
        page.wait_for_timeout(10_000)
        if films.count() == 5:
            break
    for name in ("davidnet", "chexnet"):
        expect(page.locator(f"#diagnose-{name}-neighbours img")).to_have_count(5)
        expect(page.locator(f"#diagnose-{name}-shortcut-summary")).to_contain_text("Nearest training film")
        expect(page.locator(f"#diagnose-{name}-probe")).to_contain_text("what-if probe")
    shot(page, "see_the_shortcut.png")
