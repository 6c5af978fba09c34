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

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from covid_xray.config import CLASS_NAMES, resolve_data_dir  # noqa: E402
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
            "or run `python -m covid_xray.studies.data download`."
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


# ---------------------------------------------------------------------------
# A small synthetic dataset with known duplicates (data, audit and their command line).
# ---------------------------------------------------------------------------


def random_xray(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A smooth random grey image: distinct low frequencies, so distinct perceptual hashes."""
    low = rng.integers(0, 256, (6, 6)).astype(np.uint8)
    grey = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.repeat(grey[:, :, None], 3, axis=2)


def write_image(path: Path, rgb: np.ndarray, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    flags = [cv2.IMWRITE_JPEG_QUALITY, params["quality"]] if "quality" in params else []
    assert cv2.imwrite(str(path), bgr, flags)
    return path


PER_CLASS = {"train": 6, "test": 3}


SHORT = {"Covid": "c", "Normal": "n", "Viral Pneumonia": "v"}


def make_synthetic_dataset(root: Path, seed: int = 0) -> Path:
    """Build <root>/{train,test}/<class>/ with 6 + 3 distinct images per class, plus:

    - train/Covid/c0_copy.png: byte copy of train/Covid/c0.png (exact, within train)
    - train/Normal/n0_jpeg.jpg: JPEG re-encoding of train/Normal/n0.png (near, within train)
    - test/Covid/leak.png: byte copy of train/Covid/c1.png (exact, across train/test)
    - test/Normal/near.jpg: JPEG of train/Viral Pneumonia/v1.png (near, across, other label)
    - a text file and a hidden file, which discovery must ignore.
    """
    rng = np.random.default_rng(seed)
    for split, count in PER_CLASS.items():
        for label in CLASS_NAMES:
            for k in range(count):
                write_image(root / split / label / f"{SHORT[label]}{k}.png", random_xray(rng))
    train = root / "train"
    shutil.copyfile(train / "Covid" / "c0.png", train / "Covid" / "c0_copy.png")
    n0 = cv2.cvtColor(cv2.imread(str(train / "Normal" / "n0.png")), cv2.COLOR_BGR2RGB)
    write_image(train / "Normal" / "n0_jpeg.jpg", n0, quality=90)
    shutil.copyfile(train / "Covid" / "c1.png", root / "test" / "Covid" / "leak.png")
    v1 = cv2.cvtColor(cv2.imread(str(train / "Viral Pneumonia" / "v1.png")), cv2.COLOR_BGR2RGB)
    write_image(root / "test" / "Normal" / "near.jpg", v1, quality=90)
    (train / "Covid" / "notes.txt").write_text("not an image")
    (train / "Covid" / ".hidden.png").write_bytes(b"")
    return root


@pytest.fixture()
def synth(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "Covid19-dataset")


@pytest.fixture(scope="module")
def synth_module(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "Covid19-dataset")


@pytest.fixture(scope="module")
def real_samples(data_dir):
    from covid_xray import data

    return data.list_samples(data_dir)


@pytest.fixture(scope="module")
def real_audit(real_samples):
    from covid_xray import audit

    # Decodes and hashes the 317 images once; later tests reuse the in-process cache.
    return audit.audit(real_samples)
