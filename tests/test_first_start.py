"""A Space's first start, in a real browser: `python app.py` from the repository alone.

The app starts with an empty cache (COVID_XRAY_HOME), no COVID_XRAY_DATA and no CheXNet weights;
its sources point at a loopback server (127.0.0.1) that serves the dataset as Kaggle serves it (a
zip built from ../shared in a temp folder) and a synthetic Keras-2 CheXNet weights file. In
Debian's chromium (Playwright) we check that the page comes up with DavidNet live, that the status
line moves, that examples, gallery and quiz appear, and that the CheXNet column becomes live with a
heatmap, all without a reload; that the browser console stays clean; and that no server path shows.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from covid_xray import config, provision
from tests.appserver import AppServer
from tests.standins import LoopbackServer, make_chexnet_weights, make_dataset_zip
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, ConsoleErrors, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Dataset download + weights check + head training (tiny budget) + evaluation, on a busy 2-core box.
FIRST_START_TIMEOUT_MS = 900_000
TIMEOUT_MS = 180_000
TINY_HEAD = "epochs=2 augment_epochs=1 feature_views=1 max_per_class=4 batch_size=8"


@pytest.fixture(scope="module")
def first_start(data_dir, tmp_path_factory):
    """The stand-in server and `python app.py` started from nothing; yields (app, stand-ins, home)."""
    folder = tmp_path_factory.mktemp("first_start")
    routes = {
        "/covid19-image-dataset.zip": make_dataset_zip(data_dir, folder / "dataset.zip"),
        "/chexnet.h5": make_chexnet_weights(folder / "chexnet.h5"),
    }
    home = folder / "home"
    with LoopbackServer(routes) as standins:
        env = {
            config.HOME_ENV_VAR: home,
            config.DATA_ENV_VAR: "",  # nothing set: the app finds the dataset itself
            config.CHEXNET_WEIGHTS_ENV_VAR: "",
            provision.OFFLINE_ENV_VAR: "0",
            provision.DATASET_SOURCE_ENV_VAR: standins.url("/covid19-image-dataset.zip"),
            provision.CHEXNET_SOURCE_ENV_VAR: standins.url("/chexnet.h5"),
            provision.HEAD_TRAIN_ARGS_ENV_VAR: TINY_HEAD,
        }
        assert not config.DEFAULT_DATA_DIR.exists(), "a data/ folder in the project would stand in"
        # The committed DavidNet checkpoint, exactly as a fresh clone has it.
        with AppServer.start(config.CHECKPOINT_DIR, folder, env=env, tag="first_start") as app:
            app.wait_until_up(600, poll_s=0.5)
            yield app, standins, home


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module (Playwright's sync API allows one running instance at a time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(first_start, browser):
    app, _, _ = first_start
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    errors = ConsoleErrors(page)
    page.goto(app.url)
    yield page
    errors.check()
    page.close()


def test_the_page_comes_up_with_davidnet_then_follows_provisioning(first_start, page, data_dir):
    from playwright.sync_api import expect

    app, standins, home = first_start
    status = page.locator("#status-line")
    expect(status).to_contain_text("DavidNet ready", timeout=TIMEOUT_MS)
    # DavidNet answers while the rest is still being prepared.
    page.locator("#upload input[type=file]").set_input_files(str(data_dir / "test/Covid/0100.jpeg"))
    expect(page.locator("#diagnose-davidnet-overlay img")).to_be_visible()
    expect(page.locator("#diagnose-chexnet-missing")).to_contain_text("CheXNet is being prepared")
    shot(page, "first_start_preparing.png")

    # The status line moves through the steps (sampled until CheXNet is ready).
    seen = set()
    deadline_ms, waited = FIRST_START_TIMEOUT_MS, 0
    while "CheXNet ready" not in (text := status.inner_text()) and waited < deadline_ms:
        seen.add(text)
        page.wait_for_timeout(500)
        waited += 500
    assert "CheXNet ready" in status.inner_text(), (
        f"status stuck at {status.inner_text()!r}; log:\n{app.log_tail()}"
    )
    assert len(seen) >= 2 and any("CheXNet:" in s for s in seen), seen

    # Examples, gallery and quiz appeared without a reload.
    expect(page.locator("#examples img").first).to_be_visible()
    expect(page.locator("#examples-missing")).to_be_hidden()
    # CheXNet's column is live: an example now shows both heatmaps.
    expect(page.locator("#diagnose-chexnet-missing")).to_be_hidden()
    page.locator("#examples img").first.click()
    for name in ("davidnet", "chexnet"):
        expect(page.locator(f"#diagnose-{name}-overlay img")).to_be_visible()
        expect(page.locator(f"#diagnose-{name}-summary")).to_contain_text("Grad-CAM")
    shot(page, "first_start_live.png")

    page.get_by_role("tab", name="Error gallery").click()
    expect(page.locator("#error-gallery img").first).to_be_visible()
    page.get_by_role("tab", name="Quiz").click()
    expect(page.locator("#quiz-new")).to_be_enabled()
    page.locator("#quiz-new").click()
    expect(page.locator("#quiz-image img")).to_be_visible()
    page.get_by_role("tab", name="Model report").click()
    page.get_by_role("tab", name="CheXNet").click()
    expect(page.locator("#report-chexnet-metrics")).to_contain_text("Official test")
    page.get_by_role("tab", name="About").click()
    expect(page.locator("#about-state")).to_contain_text("CheXNet: ready")

    # What was brought, where the app keeps it; each file fetched once.
    assert (home / config.DATASET_FOLDER / "test").is_dir()
    assert (home / "checkpoints" / "chexnet.keras").exists()
    assert (home / "reports" / "chexnet" / "metrics.json").exists()
    assert dict(standins.hits) == {"/covid19-image-dataset.zip": 1, "/chexnet.h5": 1}

    # No server path anywhere on the page.
    text = page.locator("body").inner_text()
    for folder in (home, config.PROJECT_ROOT, Path.home()):
        assert str(folder) not in text, folder
    assert not re.search(r"(^|\s)/(tmp|root|home|data|work)/", text)


# ---------------------------------------------------------------------------
# A first start that cannot bring what it lacks: every tab says so, in the same words.
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _failed_start_page(browser, tmp_path_factory, tag: str, env: dict, routes=None, faults=None):
    """`python app.py` against a loopback server that fails; yields (page, errors, app)."""
    folder = tmp_path_factory.mktemp(tag)
    with LoopbackServer(routes, faults=faults) as standins:
        env = {
            config.HOME_ENV_VAR: folder / "home",
            config.CHEXNET_WEIGHTS_ENV_VAR: "",
            provision.OFFLINE_ENV_VAR: "0",
            provision.DATASET_SOURCE_ENV_VAR: standins.url("/covid19-image-dataset.zip"),
            provision.CHEXNET_SOURCE_ENV_VAR: standins.url("/chexnet.h5"),
            **env,
        }
        with AppServer.start(config.CHECKPOINT_DIR, folder, env=env, tag=tag) as app:
            app.wait_until_up(600, poll_s=0.5)
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            try:
                page.set_default_timeout(TIMEOUT_MS)
                errors = ConsoleErrors(page)
                page.goto(app.url)
                yield page, errors, app
            finally:
                page.close()


def _wait_until_settled(page, app) -> str:
    """Wait until the status line no longer says anything is loading or being prepared."""
    from playwright.sync_api import expect

    status = page.locator("#status-line")
    expect(status).to_contain_text("DavidNet ready", timeout=TIMEOUT_MS)
    expect(page.locator("#diagnose-chexnet-missing")).to_contain_text("failed", timeout=TIMEOUT_MS)
    return page.locator("#diagnose-chexnet-missing").inner_text()


def _same_chexnet_message_on_every_tab(page, message: str, tabs) -> None:
    from playwright.sync_api import expect

    for tab, prefix in tabs:
        page.get_by_role("tab", name=tab).click()
        column = page.locator(f"#{prefix}-chexnet-missing")
        expect(column).to_be_visible()
        # The same words as on Diagnose: never a stale "being prepared".
        expect(column).to_have_text(message)


def _no_curated_example_is_flagged(page) -> None:
    """The shipped DavidNet and its input guard, as a visitor meets them: no curated example (all
    real chest X-rays from the test split) gets the "may not be a chest X-ray" warning."""
    from playwright.sync_api import expect

    from covid_xray import report

    curated = report.load_examples()
    examples = page.locator("#examples img")
    expect(examples.first).to_be_visible()
    assert examples.count() == len(curated) >= 6
    for i, example in enumerate(curated):
        examples.nth(i).scroll_into_view_if_needed()
        examples.nth(i).click()
        expect(page.locator("#answer")).to_contain_text(example.file)
        expect(page.locator("#diagnose-davidnet-summary")).to_contain_text("Grad-CAM")
        warning = page.locator("#input-check").inner_text()
        assert "may not be a frontal chest X-ray" not in warning, (example.file, warning)


def test_without_internet_the_tabs_say_the_images_are_missing_and_show_no_empty_boxes(
    browser, tmp_path_factory
):
    from playwright.sync_api import expect

    with _failed_start_page(
        browser, tmp_path_factory, "no_internet", {config.DATA_ENV_VAR: ""}, routes={}
    ) as (page, errors, app):
        message = _wait_until_settled(page, app)
        assert "being prepared" not in message
        expect(page.locator("#examples-missing")).to_contain_text("test images are not available")
        page.get_by_role("tab", name="Error gallery").click()
        expect(page.locator("#gallery-missing")).to_contain_text("test images are not available")
        for hidden in ("#gallery-body", "#error-gallery", "#case-image"):
            expect(page.locator(hidden)).to_be_hidden()
        shot(page, "first_start_failed_gallery.png")
        page.get_by_role("tab", name="Quiz").click()
        expect(page.locator("#quiz-missing")).to_contain_text("test images are not available")
        for hidden in ("#quiz-body", "#quiz-image", "#quiz-new"):
            expect(page.locator(hidden)).to_be_hidden()
        shot(page, "first_start_failed_quiz.png")
        text = page.locator("body").inner_text()
        assert not re.search(r"(^|\s)/(tmp|root|home|data|work)/", text)
        errors.check()


def test_a_failed_chexnet_download_reads_the_same_on_every_tab(browser, tmp_path_factory, data_dir):
    with _failed_start_page(
        browser,
        tmp_path_factory,
        "weights_fail",
        {config.DATA_ENV_VAR: data_dir},
        faults={"/chexnet.h5": 500},
    ) as (page, errors, app):
        message = _wait_until_settled(page, app)
        assert "weights" in message and "being prepared" not in message
        _no_curated_example_is_flagged(page)
        _same_chexnet_message_on_every_tab(
            page, message, [("Error gallery", "gallery"), ("Quiz", "quiz"), ("Diagnose", "diagnose")]
        )
        shot(page, "first_start_weights_failed.png")
        errors.check()
