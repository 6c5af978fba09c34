"""Every test module's fixtures: the real dataset, tiny checkpoint folders and predictors, a reports
folder and a `python app.py` server (built by tests/app_fixtures.py); quiet TensorFlow.

Session-scoped fixtures are built once per test run, whichever modules use them.
"""

from __future__ import annotations

import atexit
import inspect
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Hermetic runs: an empty provisioning cache of the test run's own (a developer's real cache never
# stands in for a missing file), and no downloads unless a test points the app at a loopback server.
_TEST_HOME = tempfile.mkdtemp(prefix="covid-xray-test-home-")
atexit.register(shutil.rmtree, _TEST_HOME, ignore_errors=True)
os.environ["COVID_XRAY_HOME"] = _TEST_HOME
os.environ["COVID_XRAY_OFFLINE"] = "1"

import pytest  # noqa: E402

from covid_xray.config import resolve_data_dir  # noqa: E402
from tests.app_fixtures import make_checkpoint_dir, make_reports_dir, start_app_server  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(config, items):
    """Refuse a mark on a helper function: pytest reads marks only on tests, so `-m "not slow"`
    would silently run the slow test that calls the marked helper."""
    for module in {item.module for item in items if getattr(item, "module", None) is not None}:
        for name, value in vars(module).items():
            marked = inspect.isfunction(value) and getattr(value, "pytestmark", None)
            if marked and not name.startswith("test") and value.__module__ == module.__name__:
                raise pytest.UsageError(
                    f"{module.__name__}.{name} is not a test but carries "
                    f"{[mark.name for mark in value.pytestmark]}: put the mark on the tests that use it."
                )


@pytest.fixture(scope="session")
def data_dir():
    """The real dataset (317 images). Integration tests fail loudly when it is absent."""
    root = resolve_data_dir()
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        pytest.fail(
            f"Dataset not found at {root}. Set COVID_XRAY_DATA to the Covid19-dataset folder "
            "or run `python -m covid_xray.data download`."
        )
    return root


@pytest.fixture(scope="session")
def checkpoint_dir_both(tmp_path_factory) -> Path:
    """DavidNet and CheXNet checkpoints with random weights."""
    return make_checkpoint_dir(tmp_path_factory.mktemp("checkpoints_both"))


@pytest.fixture(scope="session")
def checkpoint_dir_davidnet(tmp_path_factory) -> Path:
    """Only a DavidNet checkpoint (CheXNet not installed)."""
    return make_checkpoint_dir(tmp_path_factory.mktemp("checkpoints_davidnet"), models=("davidnet",))


@pytest.fixture(scope="session")
def missing_weights(tmp_path_factory) -> Path:
    """A CheXNet base-weights path where no file exists."""
    return tmp_path_factory.mktemp("no_weights") / "chexnet_base.h5"


@pytest.fixture(scope="session")
def predictor_both(checkpoint_dir_both, missing_weights):
    """A Predictor with both models (Score-CAM capped at 4 maps to keep tests fast)."""
    from covid_xray.inference import Predictor

    return Predictor.from_checkpoints(checkpoint_dir_both, missing_weights, warm_up=False, scorecam_max_n=4)


@pytest.fixture(scope="session")
def predictor_davidnet(checkpoint_dir_davidnet, missing_weights):
    """A Predictor whose CheXNet is missing (no checkpoint, no base weights)."""
    from covid_xray.inference import Predictor

    return Predictor.from_checkpoints(
        checkpoint_dir_davidnet, missing_weights, warm_up=True, scorecam_max_n=4
    )


@pytest.fixture(scope="session")
def reports_dir(tmp_path_factory) -> Path:
    """Evaluation outputs for both models over a few real test images."""
    return make_reports_dir(tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="session")
def app_server(checkpoint_dir_both, reports_dir, tmp_path_factory):
    """`python app.py` serving both (random-weight) models and the fixture reports; always stopped."""
    server = start_app_server(checkpoint_dir_both, reports_dir, tmp_path_factory.mktemp("app_server"))
    with server:
        yield server


@pytest.fixture(scope="session")
def runtime_davidnet(predictor_davidnet):
    """The app's runtime serving `predictor_davidnet` as it is (nothing loads or downloads)."""
    from covid_xray.runtime import AppRuntime

    return AppRuntime.serving(predictor_davidnet)


@pytest.fixture(scope="session")
def runtime_both(predictor_both):
    """The app's runtime serving `predictor_both` as it is."""
    from covid_xray.runtime import AppRuntime

    return AppRuntime.serving(predictor_both)
