"""Temperature from out-of-fold predictions (issue #15, item 1)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from covid_xray import config
from covid_xray.config import CLASS_NAMES
from covid_xray.studies.oof_calibrate import OOFError, oof_calibration, read_oof_predictions, run


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


# ---------------------------------------------------------------------------
# apply: the OOF temperature into the shipped sidecar, only when it helps on every test set.
# ---------------------------------------------------------------------------
@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A checkpoint folder (stand-in .keras file + sidecar with the validation entry) and a reports
    folder holding the committed calibration_oof.json (not applied), calibration.json, both reliability
    diagrams and a metrics.json that names the stand-in's sha256; the app's checkpoint folder points there."""
    import shutil

    from covid_xray import config
    from covid_xray.hashing import sha256_file

    checkpoints, reports = tmp_path / "checkpoints", tmp_path / "reports"
    (reports / "davidnet").mkdir(parents=True)
    checkpoints.mkdir()
    ckpt = checkpoints / "davidnet.keras"
    ckpt.write_bytes(b"stand-in for the model file")
    sidecar = {
        "model": "davidnet",
        "sha256": sha256_file(ckpt),
        "calibration": {"temperature": None, "fitted_on": "validation", "n_val": 50},
        "config": {"seed": 1},
    }
    (checkpoints / "davidnet.json").write_text(json.dumps(sidecar))
    committed = config.get_model_spec("davidnet").report_dir()
    report = json.loads((committed / "calibration_oof.json").read_text())
    report["applied_to_shipped_checkpoint"] = False
    (reports / "davidnet" / "calibration_oof.json").write_text(json.dumps(report))
    for file in ("calibration.json", "reliability.png", "calibration_oof.png"):
        shutil.copy(committed / file, reports / "davidnet")
    (reports / "davidnet" / "metrics.json").write_text(json.dumps({"checkpoint_sha256": sidecar["sha256"]}))
    monkeypatch.setenv(config.CHECKPOINT_DIR_ENV_VAR, str(checkpoints))
    argv = [
        "apply",
        "--model",
        "davidnet",
        "--reports-dir",
        str(reports),
        "--checkpoint-dir",
        str(checkpoints),
    ]
    return {
        "checkpoints": checkpoints,
        "reports": reports,
        "sidecar": sidecar,
        "report": report,
        "argv": argv,
    }


def _files(shipped):
    return [
        (shipped["checkpoints"] / "davidnet.json").read_bytes(),
        (shipped["reports"] / "davidnet" / "calibration_oof.json").read_bytes(),
    ]


def test_apply_writes_exactly_the_entry_and_marks_the_report(shipped):
    from covid_xray.calibration import temperature_from_metadata
    from covid_xray.studies.oof_calibrate import main

    assert main(shipped["argv"]) == 0
    sidecar = json.loads((shipped["checkpoints"] / "davidnet.json").read_text())
    r = shipped["report"]
    oof = r["sets"]["oof"]
    assert sidecar["calibration"] == {
        "temperature": r["temperature"],
        "fitted_on": "out-of-fold (5-fold CV of the shipped recipe)",
        "n": 251,
        "oof_nll": {"before": oof["before"]["nll"], "after": oof["after"]["nll"]},
        "oof_ece": {"before": oof["before"]["ece"], "after": oof["after"]["ece"]},
        "report": "reports/davidnet/calibration_oof.json",
    }
    assert {k: v for k, v in sidecar.items() if k != "calibration"} == {
        k: v for k, v in shipped["sidecar"].items() if k != "calibration"
    }
    assert temperature_from_metadata(sidecar) == r["temperature"] == 1.1457  # what the app applies
    saved = json.loads((shipped["reports"] / "davidnet" / "calibration_oof.json").read_text())
    assert saved.pop("applied_to_shipped_checkpoint") is True
    assert saved == {k: v for k, v in r.items() if k != "applied_to_shipped_checkpoint"}


def test_apply_refuses_when_the_report_says_it_does_not_help(shipped, capsys):
    from covid_xray.studies.oof_calibrate import main

    report = shipped["report"]
    official = report["sets"]["official"]
    official["after"]["nll"] = official["before"]["nll"] + 0.05
    official["helps"] = False
    report["helps_on_every_test_set"] = False
    (shipped["reports"] / "davidnet" / "calibration_oof.json").write_text(json.dumps(report))
    before = _files(shipped)
    assert main(shipped["argv"]) == 2
    message = capsys.readouterr().err
    assert "Not applied" in message and "official test NLL" in message and "leakage-free" not in message
    assert "sidecar is left as it was" in message
    assert _files(shipped) == before


def test_apply_refuses_test_predictions_of_another_checkpoint(shipped, capsys):
    from covid_xray.studies.oof_calibrate import main

    (shipped["reports"] / "davidnet" / "metrics.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64}))
    before = _files(shipped)
    assert main(shipped["argv"]) == 2
    assert "used the predictions of the checkpoint evaluated" in capsys.readouterr().err
    assert _files(shipped) == before


def test_markdown_shows_the_applied_temperature_and_the_confident_errors(shipped):
    from covid_xray.report.calibration import calibration_markdown, reliability_image_path
    from covid_xray.studies.oof_calibrate import main

    folder = shipped["reports"] / "davidnet"
    text = calibration_markdown("davidnet", shipped["reports"])
    assert "out-of-fold temperature not applied" in text
    assert config.OOF_APPLY_COMMAND.format(name="davidnet") in text
    # The figure beside the text is the served temperature's: the validation fit until applied.
    assert reliability_image_path("davidnet", shipped["reports"]) == folder / "reliability.png"
    assert main(shipped["argv"]) == 0
    assert reliability_image_path("davidnet", shipped["reports"]) == folder / "calibration_oof.png"
    text = calibration_markdown("davidnet", shipped["reports"])
    assert (
        "calibrated confidence" in text and "T = 1.1457" in text and "not applied." not in text.split("\n")[0]
    )
    assert "251 out-of-fold predictions (13 errors) of a 5-fold cross-validation" in text
    for key, title in (("official", "Official test"), ("leakage_free", "Leakage-free test")):
        s = shipped["report"]["sets"][key]
        b, a = s["before"], s["after"]
        share = f"{b['confident_errors']}/{b['errors']} ({b['confident_errors'] / b['errors']:.0%}) → "
        share += f"{a['confident_errors']}/{a['errors']} ({a['confident_errors'] / a['errors']:.0%})"
        assert f"| {title} | {s['n']} | {b['errors']} | {b['ece']:.3f} → {a['ece']:.3f} |" in text
        assert share in text
    assert "50-image validation split (T = 0.05) was not applied" in text
