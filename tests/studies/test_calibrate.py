"""`python -m covid_xray.studies.calibrate`: the validation split rebuilt from the sidecar, the fit
on a synthetic dataset with a random DavidNet, the files it writes and what it refuses."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from covid_xray import config
from covid_xray.calibration import (
    SPLIT_TITLES,
    CalibrationError,
    PaperProtocolError,
    apply_temperature,
    expected_calibration_error,
    negative_log_likelihood,
)
from covid_xray.config import CLASS_NAMES
from covid_xray.report.calibration import calibration_markdown, load_calibration, reliability_image_path
from covid_xray.studies import calibrate as calibration
from tests.test_calibration import _generative, _softmax

SPLIT = {"protocol": "default", "val_fraction": 0.34, "seed": 3}


def test_split_settings_refuse_the_paper_protocol_and_missing_records():
    with pytest.raises(PaperProtocolError, match="test set"):
        calibration.split_settings({"protocol": "paper", "config": {"val_fraction": 0.2, "seed": 1}})
    with pytest.raises(PaperProtocolError):
        calibration.split_settings({"config": {"protocol": "paper", "val_fraction": 0.2, "seed": 1}})
    with pytest.raises(CalibrationError, match="seed"):
        calibration.split_settings({"protocol": "default", "config": {"val_fraction": 0.2}})
    assert calibration.split_settings(
        {"protocol": "default", "config": {"protocol": "default", "val_fraction": 0.25, "seed": 7}}
    ) == ("default", 0.25, 7)


def test_plot_reliability_writes_a_png(tmp_path):
    from PIL import Image

    z, labels = _generative(n=300, seed=4)
    path = calibration.plot_reliability(
        {"validation": (_softmax(3 * z), labels), "test": (_softmax(2 * z), labels)}, 2.5, tmp_path / "r.png"
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100


def test_reliability_points_at_confidence_one_are_drawn_whole():
    """A fully confident bin puts a point at x = 1.0 (and accuracy 1.0): it must sit inside the frame."""
    probs = np.array([[1.0, 0.0, 0.0]] * 20 + [[0.5, 0.3, 0.2]] * 5)
    labels = np.array([0] * 20 + [1] * 5)
    fig = calibration.reliability_figure({"test": (probs, labels)}, 1.5)
    top, bottom = fig.axes[0], fig.axes[1]
    marked = [line for line in top.get_lines() if line.get_marker() not in ("", "None")]
    points = np.concatenate([line.get_xydata() for line in marked])
    assert points[:, 0].max() == pytest.approx(1.0) and points[:, 1].max() == pytest.approx(1.0)
    fig.canvas.draw()
    frame = top.get_window_extent()
    for line in top.get_lines():
        if line.get_marker() in ("", "None"):
            continue
        radius = line.get_markersize() / 72 * fig.dpi / 2  # points -> pixels
        for x, y in top.transData.transform(line.get_xydata()):
            assert frame.x0 + radius <= x <= frame.x1 - radius and frame.y0 + radius <= y <= frame.y1 - radius
    assert bottom.get_xlim() == top.get_xlim()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A synthetic dataset, a random DavidNet trained on nothing, its evaluation, then `fit` (twice)."""
    import keras

    from covid_xray.checkpoints import save_checkpoint
    from covid_xray.models import build_davidnet
    from covid_xray.studies.evaluate import evaluate_model
    from tests.conftest import make_synthetic_dataset

    root = tmp_path_factory.mktemp("calibration")
    data_dir = make_synthetic_dataset(root / "Covid19-dataset")
    checkpoints, reports = root / "checkpoints", root / "reports"
    keras.utils.set_random_seed(0)
    metadata = {"model": "davidnet", "preprocessing": "unit", "protocol": "default", "config": dict(SPLIT)}
    ckpt = config.MODELS["davidnet"].checkpoint_path(checkpoints)
    save_checkpoint(build_davidnet(), ckpt, metadata)
    evaluate_model(
        "davidnet", data_dir=str(data_dir), out_dir=str(reports / "davidnet"), checkpoint=str(ckpt)
    )
    assert load_calibration("davidnet", reports) is None
    before = calibration_markdown("davidnet", reports)
    image_before = reliability_image_path("davidnet", reports)
    argv = [
        "fit",
        "--model",
        "davidnet",
        "--data-dir",
        str(data_dir),
        "--checkpoint-dir",
        str(checkpoints),
        "--reports-dir",
        str(reports),
    ]
    assert calibration.main(argv) == 0
    outputs = [
        ckpt.with_suffix(".json"),
        reports / "davidnet" / "calibration.json",
        reports / "davidnet" / "reliability.png",
    ]
    first = [path.read_bytes() for path in outputs]
    assert calibration.main(argv) == 0
    return {
        "data_dir": data_dir,
        "checkpoints": checkpoints,
        "reports": reports,
        "ckpt": ckpt,
        "argv": argv,
        "first": first,
        "second": [path.read_bytes() for path in outputs],
        "before": before,
        "image_before": image_before,
    }


@pytest.mark.slow
def test_fit_writes_the_sidecar_key_the_report_and_the_png(fitted):
    from PIL import Image

    from covid_xray import data
    from covid_xray.checkpoints import load_checkpoint, sha256_file
    from covid_xray.report.files import read_predictions

    ckpt, reports = fitted["ckpt"], fitted["reports"]
    _, metadata = load_checkpoint(ckpt)  # the sidecar still matches the untouched .keras file
    assert metadata["sha256"] == sha256_file(ckpt)
    entry = metadata["calibration"]
    report = json.loads((reports / "davidnet" / "calibration.json").read_text())
    val = data.make_splits(fitted["data_dir"], **SPLIT)["val"]
    assert entry["fitted_on"] == report["fitted_on"] == "validation"
    # Applied, or refused with a reason (a random-weight model's fit can land on a bound).
    assert entry["temperature"] == report["temperature"]
    assert entry["fitted_temperature"] == report["fitted_temperature"] > 0
    assert report["applied"] == (report["temperature"] is not None)
    assert report["applied"] or report["reason"].startswith("not applied")
    if report["applied"]:
        assert report["temperature"] == report["fitted_temperature"]
    assert entry["n_val"] == report["splits"]["validation"]["n"] == len(val)
    assert report["split"] == SPLIT and report["checkpoint_sha256"] == metadata["sha256"]
    # Test numbers are exactly those of the committed predictions.csv under the stored T.
    rows = read_predictions(reports / "davidnet" / "predictions.csv")
    probs = np.array([[r.probabilities[c] for c in CLASS_NAMES] for r in rows])
    labels = np.array([CLASS_NAMES.index(r.true) for r in rows])
    clean = np.array([not r.leaked for r in rows])
    for key, mask in (("official", np.ones(len(rows), bool)), ("leakage_free", clean)):
        sub = report["splits"][key]
        assert sub["n"] == int(mask.sum())
        assert sub["after"]["ece"] == pytest.approx(
            expected_calibration_error(
                apply_temperature(probs[mask], entry["fitted_temperature"]), labels[mask]
            ),
            abs=1e-6,
        )
        assert sub["before"]["nll"] == pytest.approx(
            negative_log_likelihood(probs[mask], labels[mask]), abs=1e-6
        )
        assert sub["accuracy"] == pytest.approx(np.mean(probs[mask].argmax(1) == labels[mask]), abs=1e-6)
    assert report["splits"]["official"]["n"] == 11 and report["splits"]["leakage_free"]["n"] == 9
    # T minimises validation NLL: it can only improve (or keep) it.
    validation = report["splits"]["validation"]
    assert validation["after"]["nll"] <= validation["before"]["nll"] + 1e-6
    with Image.open(reports / "davidnet" / "reliability.png") as image:
        assert image.format == "PNG"
    assert reliability_image_path("davidnet", reports) == reports / "davidnet" / "reliability.png"


@pytest.mark.slow
def test_fit_is_deterministic(fitted):
    assert fitted["first"] == fitted["second"]


@pytest.mark.slow
def test_markdown_before_and_after_fitting(fitted):
    assert "no calibration yet" in fitted["before"]
    assert config.CALIBRATION_FIT_COMMAND.format(name="davidnet") in fitted["before"]
    assert fitted["image_before"] is None
    text = calibration_markdown("davidnet", fitted["reports"])
    report = load_calibration("davidnet", fitted["reports"])
    if report["applied"]:
        assert f"T = {report['temperature']:.2f}" in text and "never changes" in text
    else:  # refused: the fitted T is shown as what it would do, with the reason
        assert f"fitted T = {report['fitted_temperature']:.4f} would do" in text
        assert "calibration not applied" in text and "never changes" not in text
    for key, title in SPLIT_TITLES.items():
        assert f"| {title} | {report['splits'][key]['n']} |" in text
    official = report["splits"]["official"]
    assert f"{official['before']['ece']:.3f} → {official['after']['ece']:.3f}" in text


@pytest.mark.slow
def test_paper_protocol_is_refused_and_nothing_written(fitted, tmp_path, capsys):
    from covid_xray.checkpoints import read_metadata, sidecar_path, write_json

    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(fitted["checkpoints"], checkpoints)
    reports = tmp_path / "reports"
    shutil.copytree(fitted["reports"], reports)
    (reports / "davidnet" / "calibration.json").unlink()
    ckpt = config.MODELS["davidnet"].checkpoint_path(checkpoints)
    metadata = read_metadata(ckpt)
    metadata.pop("calibration")
    metadata["protocol"] = "paper"
    metadata["config"]["protocol"] = "paper"
    write_json(sidecar_path(ckpt), metadata)
    argv = [
        "fit",
        "--data-dir",
        str(fitted["data_dir"]),
        "--checkpoint-dir",
        str(checkpoints),
        "--reports-dir",
        str(reports),
    ]
    assert calibration.main(argv) == 2
    assert "'paper' protocol" in capsys.readouterr().err
    with pytest.raises(PaperProtocolError):
        calibration.fit_model(
            "davidnet", data_dir=fitted["data_dir"], checkpoint_dir=checkpoints, reports_dir=reports
        )
    assert "calibration" not in read_metadata(ckpt)
    assert not (reports / "davidnet" / "calibration.json").exists()


@pytest.mark.slow
def test_stale_or_missing_predictions_are_refused(fitted, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(fitted["reports"], reports)
    metrics_path = reports / "davidnet" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["checkpoint_sha256"] = "0" * 64
    metrics_path.write_text(json.dumps(metrics))
    kwargs = {"data_dir": fitted["data_dir"], "checkpoint_dir": fitted["checkpoints"], "reports_dir": reports}
    with pytest.raises(CalibrationError, match="another checkpoint"):
        calibration.fit_model("davidnet", **kwargs)
    assert "Out of date" in calibration_markdown("davidnet", reports)
    (reports / "davidnet" / "predictions.csv").unlink()
    with pytest.raises(CalibrationError, match=re.escape(config.EVALUATE_COMMAND.format(name="davidnet"))):
        calibration.fit_model("davidnet", **kwargs)


@pytest.mark.slow
def test_a_validation_refit_keeps_an_out_of_fold_temperature_in_the_sidecar(fitted, tmp_path, capsys):
    """`calibration fit` rewrites calibration.json but never replaces the sidecar's out-of-fold T."""
    import shutil

    checkpoints, reports = tmp_path / "checkpoints", tmp_path / "reports"
    shutil.copytree(fitted["checkpoints"], checkpoints)
    shutil.copytree(fitted["reports"], reports)
    (reports / "davidnet" / "calibration.json").unlink()
    sidecar = checkpoints / "davidnet.json"
    metadata = json.loads(sidecar.read_text())
    oof_entry = {"temperature": 1.5, "fitted_on": "out-of-fold (5-fold CV of the shipped recipe)", "n": 251}
    metadata["calibration"] = oof_entry
    sidecar.write_text(json.dumps(metadata))
    argv = list(fitted["argv"])
    argv[argv.index("--checkpoint-dir") + 1] = str(checkpoints)
    argv[argv.index("--reports-dir") + 1] = str(reports)
    assert calibration.main(argv) == 0
    assert json.loads(sidecar.read_text())["calibration"] == oof_entry
    assert (reports / "davidnet" / "calibration.json").is_file()
    assert (
        "keeps its out-of-fold (5-fold CV of the shipped recipe) temperature T = 1.5"
        in capsys.readouterr().out
    )
