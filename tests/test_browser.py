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


@pytest.fixture(scope="module")
def page(app_server):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`).")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(app_server.url)
            yield page
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_upload_shows_both_models_side_by_side(page, data_dir):
    from playwright.sync_api import expect

    expect(page.locator("#notice")).to_contain_text("Not for diagnosis")
    page.locator("#upload input[type=file]").set_input_files(str(data_dir / "test/Covid/0100.jpeg"))
    for name in ("davidnet", "chexnet"):
        expect(page.locator(f"#diagnose-{name}-overlay img")).to_be_visible()
        expect(page.locator(f"#diagnose-{name}-summary")).to_contain_text("Grad-CAM evidence for")
    expect(page.locator("#preview img")).to_be_visible()
    # Both columns sit side by side: DavidNet left of CheXNet, on the same row.
    davidnet = page.locator("#diagnose-davidnet-overlay").bounding_box()
    chexnet = page.locator("#diagnose-chexnet-overlay").bounding_box()
    assert davidnet["x"] + davidnet["width"] <= chexnet["x"] + 1
    assert abs(davidnet["y"] - chexnet["y"]) < 50
    _shot(page, "diagnose_upload.png")


def test_example_reveals_its_true_label(page):
    from playwright.sync_api import expect

    page.locator("#examples img").first.click()
    expect(page.locator("#answer")).to_contain_text("True label")
    expect(page.locator("#diagnose-davidnet-overlay img")).to_be_visible()
    _shot(page, "diagnose_example.png")


def test_error_gallery_thumbnails_and_selection(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Error gallery").click()
    expect(page.locator("#gallery-status")).to_contain_text("3 test images match")
    thumbnails = page.locator("#error-gallery img")
    expect(thumbnails).to_have_count(3)
    expect(page.locator("#error-gallery")).to_contain_text("COVID-19 > Normal (0.80)")
    thumbnails.first.click()
    expect(page.locator("#case-details")).to_contain_text("COVID-00003b")
    for name in ("davidnet", "chexnet"):
        expect(page.locator(f"#gallery-{name}-overlay img")).to_be_visible()
    _shot(page, "error_gallery.png")


def test_model_report_tab(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Model report").click()
    expect(page.get_by_text("Paper (reported)").first).to_be_visible()
    expect(page.get_by_text("Known confounds of this dataset.")).to_be_visible()
    _shot(page, "model_report.png")


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
            _shot(page, "quiz_revealed.png")
        expect(page.locator("#quiz-answer-normal")).to_be_disabled()
        if number < 3:
            page.locator("#quiz-next").click()
            expect(page.locator("#quiz-status")).to_contain_text(f"Question {number + 1} of 4")
    expect(page.locator("#quiz-score")).to_contain_text("You")
    expect(page.locator("#quiz-score")).to_contain_text("DavidNet")
    expect(page.locator("#quiz-score")).to_contain_text("CheXNet")
    _shot(page, "quiz_score.png")
