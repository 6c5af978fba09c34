"""What the serving tests' fixtures are built from: tiny checkpoint folders, a reports folder and
a `python app.py` server.

The fixtures themselves live in tests/conftest.py (every test module gets them by name); test
modules import the helpers and constants here directly. Checkpoints hold random weights: the
tests check the serving path (shapes, determinism, JSON, messages), never accuracy, and never
touch the committed checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from covid_xray import config  # noqa: E402
from tests import appserver  # noqa: E402

# Real test images used by the gallery fixtures, with the (made-up) predictions of each model:
# (file, true class, davidnet prediction, chexnet prediction, leaked).
GALLERY_ROWS: tuple[tuple[str, str, str, str, int], ...] = (
    ("test/Covid/0100.jpeg", "Covid", "Covid", "Covid", 0),
    ("test/Covid/COVID-00003b.jpg", "Covid", "Normal", "Covid", 1),  # models disagree, leaked
    ("test/Normal/0103.jpeg", "Normal", "Viral Pneumonia", "Viral Pneumonia", 1),  # both wrong
    ("test/Normal/0101.jpeg", "Normal", "Normal", "Covid", 0),  # only CheXNet wrong
    ("test/Viral Pneumonia/0101.jpeg", "Viral Pneumonia", "Normal", "Normal", 0),  # both wrong
    ("test/Viral Pneumonia/0102.jpeg", "Viral Pneumonia", "Viral Pneumonia", "Viral Pneumonia", 0),
)


def make_checkpoint_dir(path: Path, models: tuple[str, ...] = ("davidnet", "chexnet"), seed: int = 0) -> Path:
    """Save checkpoints of `models` into `path` (with their JSON sidecars).

    DavidNet is randomly initialised; CheXNet's base is loaded from a synthetic weights file in
    the published Keras-2 layout, so the app's CheXNet path runs through the real loader.
    """
    import keras

    from covid_xray.checkpoints import save_checkpoint
    from covid_xray.models import build_chexnet, build_davidnet
    from tests.chexnet_fixtures import write_keras2_chexnet_weights

    path.mkdir(parents=True, exist_ok=True)
    for name in models:
        keras.utils.set_random_seed(seed)
        if name == "davidnet":
            model = build_davidnet()
        else:
            weights = path / "synthetic_chexnet_base.h5"
            write_keras2_chexnet_weights(weights, seed=seed)
            model = build_chexnet(weights=weights)
        mode = config.MODELS[name].preprocessing_for("default")
        save_checkpoint(
            model, config.MODELS[name].checkpoint_path(path), {"preprocessing": mode, "model": name}
        )
    return path


def _probabilities(predicted: str, confidence: float) -> list[float]:
    rest = (1.0 - confidence) / (config.NUM_CLASSES - 1)
    return [confidence if c == predicted else rest for c in config.CLASS_NAMES]


def write_predictions_csv(path: Path, rows: list[tuple[str, str, str, int]], confidence: float = 0.8) -> None:
    """predictions.csv in the documented format for (file, true, predicted, leaked) rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["file", "true", "predicted", "confidence", *[f"p_{c}" for c in config.CLASS_NAMES], "leaked"]
        )
        for file, true, predicted, leaked in rows:
            probs = _probabilities(predicted, confidence)
            writer.writerow(
                [file, true, predicted, f"{confidence:.6f}", *[f"{p:.6f}" for p in probs], leaked]
            )


def _subset_metrics(n: int, accuracy: float) -> dict:
    per_class = {
        c: {"precision": 0.5, "recall": 0.6, "f1": 0.55, "support": n // 3} for c in config.CLASS_NAMES
    }
    return {
        "n": n,
        "accuracy": accuracy,
        "per_class": per_class,
        "macro_f1": 0.55,
        "weighted_f1": 0.56,
        "confusion_matrix": [[2, 1, 0], [0, 1, 1], [0, 1, 0]],
    }


def make_reports_dir(path: Path) -> Path:
    """A reports folder like `python -m covid_xray.studies.evaluate` writes, for both models."""
    for index, name in enumerate(config.MODELS):
        report = path / name
        rows = [(file, true, preds[index], leaked) for file, true, *preds, leaked in GALLERY_ROWS]
        write_predictions_csv(report / "predictions.csv", rows)
        metrics = {
            "model": name,
            "subsets": {
                "official": _subset_metrics(66, 0.75 + index / 10),
                "leakage_free": _subset_metrics(55, 0.7),
            },
        }
        (report / "metrics.json").write_text(json.dumps(metrics))
        with open(report / "history.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "phase"])
            for epoch in range(6):
                phase = "head" if epoch < 3 else "finetune"
                writer.writerow(
                    [
                        epoch,
                        1 / (epoch + 1),
                        0.5 + epoch / 20,
                        1.2 / (epoch + 1),
                        0.45 + epoch / 20,
                        1e-3,
                        phase,
                    ]
                )
        from PIL import Image

        for subset in ("official", "leakage_free"):
            Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(report / f"confusion_{subset}.png")
    audit = {
        "num_images": {"train": 251, "test": 66},
        "near_threshold": 6,
        "counts": {
            "exact": {"train": 3, "test": 1, "train/test": 6, "total": 10},
            "near": {"train": 10, "test": 6, "train/test": 11, "total": 27},
        },
        "leaked_test_files": [row[0] for row in GALLERY_ROWS if row[4]],
    }
    (path / "audit.json").write_text(json.dumps(audit))
    return path


# ---------------------------------------------------------------------------
# A real `python app.py` server (shared by test_app.py and test_browser.py).
# ---------------------------------------------------------------------------
PROJECT_ROOT = config.PROJECT_ROOT
# Start-up loads and warms both models (DenseNet121 included): generous on a busy 2-core box.
SERVER_START_TIMEOUT_S = 600
# Upload limit of the test server: above every test image, below the oversized upload test.
SERVER_MAX_UPLOAD_BYTES = 2_000_000


class AppServer(appserver.AppServer):
    """The tests' app server: also says which reports folder it serves."""

    reports_dir: Path


def start_app_server(checkpoint_dir: Path, reports_dir: Path, workdir: Path) -> AppServer:
    """Start `python app.py` on a free loopback port and wait until it answers HTTP.

    Raises `appserver.AppServerError` (with the log tail) if it exits or does not answer in time.
    """
    server = AppServer.start(
        checkpoint_dir,
        workdir,
        tag="app_server",
        env={
            config.REPORTS_DIR_ENV_VAR: reports_dir,
            "COVID_XRAY_MAX_UPLOAD_BYTES": str(SERVER_MAX_UPLOAD_BYTES),
            config.DATA_ENV_VAR: config.resolve_data_dir(),
        },
    )
    server.reports_dir = reports_dir
    try:
        server.wait_until_up(SERVER_START_TIMEOUT_S, poll_s=2.0)
        wait_until_models_answer(server, SERVER_START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_models_answer(server: AppServer, timeout_s: float) -> None:
    """The page is served before the models load: poll the `predict` API until every model in
    the checkpoint folder answers (a real test image).

    Raises `appserver.AppServerError` with the log tail when they do not in time.
    """
    import time

    from gradio_client import Client, handle_file

    from tests.appserver import AppServerError

    image = handle_file(str(config.resolve_data_dir() / "test/Covid/0100.jpeg"))
    expected = [
        name for name, spec in config.MODELS.items() if spec.checkpoint_path(server.checkpoint_dir).exists()
    ]
    client = Client(server.url, verbose=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = client.predict(image, api_name="/predict")
        if all(result[name]["available"] for name in expected):
            return
        time.sleep(2.0)
    raise AppServerError(
        f"models {expected} did not all answer within {timeout_s:.0f} s:\n{server.log_tail()}"
    )
