"""Temperature from out-of-fold predictions (issue #15, item 1)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from covid_xray.config import CLASS_NAMES
from covid_xray.oof_calibration import OOFError, oof_calibration, read_oof_predictions, run


def _overconfident(rng, n, sharpness=3.0):
    """Labels drawn from softmax(z) (a calibrated model would output that), and the
    over-confident model's softmax(sharpness * z)."""
    z = rng.normal(0.0, 1.5, size=(n, 3))
    z[np.arange(n), rng.integers(0, 3, n)] += 2.0
    calibrated = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in calibrated])
    sharp = np.exp(sharpness * z)
    return sharp / sharp.sum(axis=1, keepdims=True), labels


def test_an_overconfident_model_gets_lower_ece_and_fewer_confident_errors():
    rng = np.random.default_rng(0)
    oof, test = _overconfident(rng, 600), _overconfident(rng, 600)
    report = oof_calibration(oof, {"official": test})
    assert report["temperature"] == pytest.approx(3.0, rel=0.25)
    for key in ("oof", "official"):
        before, after = report["sets"][key]["before"], report["sets"][key]["after"]
        assert after["ece"] < before["ece"] / 2, key
        assert after["nll"] < before["nll"], key
        assert before["share"] > 0.3 and after["share"] < before["share"] / 2, key
        assert after["errors"] == before["errors"]  # T never changes a prediction
    assert report["sets"]["official"]["helps"] and report["helps_on_every_test_set"]


def test_a_calibrated_model_keeps_a_temperature_near_one():
    rng = np.random.default_rng(1)
    oof = _overconfident(rng, 2000, sharpness=1.0)
    assert oof_calibration(oof, {})["temperature"] == pytest.approx(1.0, abs=0.15)


def _write_fold(path, files, labels, probs):
    path.mkdir(parents=True)
    with open(path / "val_predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted", *(f"p_{c}" for c in CLASS_NAMES)])
        for f, y, p in zip(files, labels, probs, strict=True):
            writer.writerow([f, CLASS_NAMES[y], CLASS_NAMES[int(np.argmax(p))], *(f"{v:.6f}" for v in p)])


def test_folds_must_cover_every_train_image_exactly_once(tmp_path):
    rng = np.random.default_rng(2)
    probs, labels = _overconfident(rng, 10)
    files = [f"train/{CLASS_NAMES[y]}/{i:02d}.png" for i, y in enumerate(labels)]
    _write_fold(tmp_path / "f0", files[:5], labels[:5], probs[:5])
    _write_fold(tmp_path / "f1", files[5:], labels[5:], probs[5:])
    got_files, got_probs, got_labels = read_oof_predictions([tmp_path / "f0", tmp_path / "f1"], files)
    assert got_files == sorted(files) and got_probs.shape == (10, 3)
    assert list(got_labels) == [labels[files.index(f)] for f in got_files]
    with pytest.raises(OOFError, match=r"missing 5 \("):
        read_oof_predictions([tmp_path / "f0"], files)
    with pytest.raises(OOFError, match=r"predicted more than once 5"):
        read_oof_predictions([tmp_path / "f0", tmp_path / "f0", tmp_path / "f1"], files)
    with pytest.raises(
        OOFError, match=r"missing 1 \(train/x.png\); not a train image 1 \(" + re.escape(files[0])
    ):
        read_oof_predictions([tmp_path / "f0", tmp_path / "f1"], files[1:] + ["train/x.png"])
    with pytest.raises(OOFError, match="has this fold finished"):
        read_oof_predictions([tmp_path / "nope"], files)


def test_run_writes_the_report_against_the_committed_test_predictions(tmp_path):
    """End to end with synthetic folds: the committed (raw) test predictions are the test sets."""
    import shutil

    from covid_xray.config import get_model_spec

    rng = np.random.default_rng(3)
    probs, labels = _overconfident(rng, 40)
    files = [f"train/{CLASS_NAMES[y]}/{i:02d}.png" for i, y in enumerate(labels)]
    runs = []
    for k in range(2):
        _write_fold(tmp_path / f"fold{k}", files[k::2], labels[k::2], probs[k::2])
        runs.append(tmp_path / f"fold{k}")
    reports = tmp_path / "reports"
    (reports / "davidnet").mkdir(parents=True)
    shutil.copy(get_model_spec("davidnet").report_dir() / "predictions.csv", reports / "davidnet")
    report = run("davidnet", runs, reports_dir=reports, expected_files=files)
    saved = json.loads((reports / "davidnet" / "calibration_oof.json").read_text())
    assert saved["temperature"] == report["temperature"] > 1
    assert saved["sets"]["official"]["n"] == 66 and saved["sets"]["leakage_free"]["n"] == 57
    assert saved["n_oof"] == 40 and saved["applied_to_shipped_checkpoint"] is False
    assert (reports / "davidnet" / "calibration_oof.png").stat().st_size > 10_000
