"""Every committed report a study writes regenerates from the committed checkpoint and the dataset.

The studies run here exactly as the README gives them (`python -m covid_xray.studies.<name>`, one
subprocess each) into a temporary copy of checkpoints/ and an empty reports folder, and their
files are compared with the committed ones:

- byte for byte: the leakage audit, metrics.json, the confusion matrices, the training curves (CSV
  and figure), the what-if masks and nearest films, the sidecar;
- to float round-off (1e-9 relative): the input guard and its measurement;
- to the precision written, where a value comes straight from float32 forward passes whose last
  digit depends on the CPU's instruction set and thread layout (oneDNN): the probabilities of
  predictions.csv and calibration.json agree to one unit in their 6th decimal; the deletion test
  of faithfulness.json keeps the same images, classes and settings, and its summaries agree to
  0.005 (a heatmap that differs in round-off can swap which tied pixels are removed first); the
  figures drawn from those numbers decode to images of the same size.

Not regenerated here (they come from training runs, hours on CPU; the README names their
commands): history.csv's training, the cross-validation sweeps (cv_sweep.json,
cv_weight_averaging.json, cv_refit.json) and the out-of-fold calibration (calibration_oof.*), whose fold runs
are not committed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_xray import config

pytestmark = pytest.mark.slow

MODEL = "davidnet"
# The input guard and its measurement: float64 statistics of float32 features, whose last digits
# differ between CPU models (seen: 1e-13 relative between two machines of this project's kind).
ROUND_OFF = ["reports/ood.json", "checkpoints/ood_davidnet.json"]
ROUND_OFF_RELATIVE = 1e-9
BYTE_FOR_BYTE = [
    "reports/audit.json",
    "reports/davidnet/metrics.json",
    "reports/davidnet/confusion_official.png",
    "reports/davidnet/confusion_leakage_free.png",
    "reports/davidnet/history.csv",
    "reports/davidnet/training_curves.png",
    "reports/davidnet/shortcuts.json",
    "checkpoints/davidnet.json",
]
FIGURES = ["reports/davidnet/reliability.png", "reports/davidnet/faithfulness.png"]
PROBABILITY_TOLERANCE = 1.5e-6  # one unit in the 6th decimal, plus float noise
DELETION_TOLERANCE = 5e-3


def _studies(out: Path) -> list[list[str]]:
    reports, checkpoints = str(out / "reports"), str(out / "checkpoints")
    model = ["--model", MODEL]
    return [
        ["data", "audit", "--out", str(out / "reports" / config.AUDIT_FILE)],
        ["evaluate", *model, "--out", str(out / "reports" / MODEL)]
        + ["--checkpoint", str(out / "checkpoints" / f"{MODEL}.keras")],
        ["calibrate", "fit", *model, "--reports-dir", reports, "--checkpoint-dir", checkpoints],
        ["ood", "fit", *model, "--checkpoint-dir", checkpoints]
        + ["--out", str(out / "checkpoints" / f"ood_{MODEL}.json")],
        ["ood", "measure", *model, "--checkpoint-dir", checkpoints]
        + ["--out", str(out / "reports" / config.OOD_REPORT_FILE)],
        ["faithfulness", *model, "--checkpoint-dir", checkpoints, "--reports-dir", reports],
        ["shortcuts", *model, "--checkpoint-dir", checkpoints, "--reports-dir", reports]
        + ["--cache-dir", str(out / "cache")],
    ]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("regenerated")
    shutil.copytree(config.CHECKPOINT_DIR, out / "checkpoints")
    (out / "reports").mkdir()
    env = {
        **os.environ,
        config.DATA_ENV_VAR: str(data_dir),
        config.REPORTS_DIR_ENV_VAR: str(out / "reports"),
        config.CHECKPOINT_DIR_ENV_VAR: str(out / "checkpoints"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    for study in _studies(out):
        done = subprocess.run(
            [sys.executable, "-m", f"covid_xray.studies.{study[0]}", *study[1:]],
            cwd=config.PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{study}: {done.stderr[-3000:]}"
    return out


def _committed(relpath: str) -> Path:
    return config.PROJECT_ROOT / relpath


@pytest.mark.parametrize("relpath", BYTE_FOR_BYTE)
def test_regenerates_byte_for_byte(regenerated, relpath):
    new, old = regenerated / relpath, _committed(relpath)
    assert new.read_bytes() == old.read_bytes(), f"{relpath} differs from what the study writes now"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predictions_regenerate_to_the_precision_written(regenerated):
    relpath = f"reports/{MODEL}/{config.PREDICTIONS_FILE}"
    new, old = _rows(regenerated / relpath), _rows(_committed(relpath))
    floats = ["confidence", *(f"p_{c}" for c in config.CLASS_NAMES)]
    assert [{k: v for k, v in r.items() if k not in floats} for r in new] == [
        {k: v for k, v in r.items() if k not in floats} for r in old
    ]
    for a, b in zip(new, old, strict=True):
        for key in floats:
            assert float(a[key]) == pytest.approx(float(b[key]), abs=PROBABILITY_TOLERANCE), (a["file"], key)


def _close(new, old, tolerance: float, path: str = "", relative: float = 0.0) -> None:
    """Same structure, same non-float values, floats within `tolerance` (or `relative`)."""
    if isinstance(old, dict):
        assert set(new) == set(old), path
        for key in old:
            _close(new[key], old[key], tolerance, f"{path}/{key}", relative)
    elif isinstance(old, list):
        assert len(new) == len(old), path
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _close(a, b, tolerance, f"{path}[{i}]", relative)
    elif isinstance(old, float) or isinstance(new, float):
        assert new is not None and old is not None, path
        assert math.isclose(new, old, abs_tol=tolerance, rel_tol=relative), (path, new, old)
    else:
        assert new == old, (path, new, old)


@pytest.mark.parametrize("relpath", ROUND_OFF)
def test_input_guard_regenerates_to_round_off(regenerated, relpath):
    new = json.loads((regenerated / relpath).read_text())
    old = json.loads(_committed(relpath).read_text())
    _close(new, old, 0.0, relative=ROUND_OFF_RELATIVE)


def test_calibration_regenerates_to_the_precision_written(regenerated):
    relpath = f"reports/{MODEL}/{config.CALIBRATION_FILE}"
    new = json.loads((regenerated / relpath).read_text())
    old = json.loads(_committed(relpath).read_text())
    # The hash names the predictions.csv it read: it changes exactly when that file's bytes do.
    predictions = f"reports/{MODEL}/{config.PREDICTIONS_FILE}"
    same_predictions = (regenerated / predictions).read_bytes() == _committed(predictions).read_bytes()
    assert (new.pop("predictions_sha256") == old.pop("predictions_sha256")) == same_predictions
    _close(new, old, 10 * PROBABILITY_TOLERANCE)


def test_faithfulness_regenerates_its_images_settings_and_summaries(regenerated):
    relpath = f"reports/{MODEL}/{config.FAITHFULNESS_FILE}"
    new = json.loads((regenerated / relpath).read_text())
    old = json.loads(_committed(relpath).read_text())
    assert set(new) == set(old)
    for key in set(old) - {"images", "results"}:
        assert new[key] == old[key], key
    # Per image: the same files, classes and methods; the drops themselves are round-off sensitive.
    def facts(report):
        keys = ("file", "true", "predicted", "leaked")
        return [(*(i[k] for k in keys), sorted(i["methods"])) for i in report["images"]]

    assert facts(new) == facts(old)
    _close(new["results"], old["results"], DELETION_TOLERANCE)


@pytest.mark.parametrize("relpath", FIGURES)
def test_figures_regenerate(regenerated, relpath):
    with Image.open(regenerated / relpath) as new, Image.open(_committed(relpath)) as old:
        assert new.size == old.size and new.mode == old.mode
        assert np.asarray(new).std() > 0  # a drawn figure, not a blank page
