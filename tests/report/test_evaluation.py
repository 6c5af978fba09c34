"""The Model report's evaluation text (`covid_xray.report.evaluation`): metrics beside the paper, training
curves, the audit, the confounds, cross-validation and labelled folders; every state of the tab."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from covid_xray import config, report
from covid_xray.config import CLASS_NAMES
from tests.app_fixtures import GALLERY_ROWS

# ---------------------------------------------------------------------------
# The committed examples.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# predictions.csv and the error gallery.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Model report tab.
# ---------------------------------------------------------------------------
def test_metrics_markdown_beside_the_paper(reports_dir):
    text = report.metrics_markdown("davidnet", reports_dir)
    assert "Paper (reported)" in text and "95.0%" in text  # config.MODELS["davidnet"].paper_accuracy
    assert "Official test (n=66)" in text and "75.0%" in text
    assert "Leakage-free test (n=55)" in text and "70.0%" in text
    for name in config.CLASS_DISPLAY_NAMES.values():
        assert f"| {name} |" in text
    assert "0.50 / 0.60 / 0.55" in text
    chexnet = report.metrics_markdown("chexnet", reports_dir)
    assert "78.0%" in chexnet and "85.0%" in chexnet


def test_metrics_markdown_without_evaluation(tmp_path):
    text = report.metrics_markdown("chexnet", tmp_path)
    assert "CheXNet has not been evaluated on this server yet" in text and "78%" in text


def test_metrics_tolerate_partial_files(tmp_path):
    path = tmp_path / "davidnet" / "metrics.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"subsets": {"official": {"accuracy": 0.9}}}))
    text = report.metrics_markdown("davidnet", tmp_path)
    assert "90.0%" in text and "n/a" in text
    path.write_text("{not json")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert "has not been evaluated" in report.metrics_markdown("davidnet", tmp_path)


def test_training_curves_plot(reports_dir, tmp_path):
    history = report.load_history("davidnet", reports_dir)
    assert (
        len(history) == 6
        and history[0]["phase"] == "head"
        and history[2]["val_accuracy"] == pytest.approx(0.55)
    )
    figure = report.plot_history("davidnet", reports_dir)
    loss_axes, accuracy_axes = figure.axes
    assert len(loss_axes.get_lines()) >= 2 and len(accuracy_axes.get_lines()) >= 2
    # One dotted line marks the change from head training to fine-tuning.
    assert [line.get_xdata()[0] for line in loss_axes.get_lines() if line.get_linestyle() == ":"] == [3.5]
    assert report.plot_history("davidnet", tmp_path) is None


def test_training_curves_image_is_the_png_evaluation_drew_else_drawn_now(reports_dir, tmp_path):
    """The Model report shows training_curves.png as pixels (nothing drawn while the page is built);
    a folder evaluated before that PNG existed still gets its curves, drawn from history.csv."""
    import shutil

    folder = tmp_path / "davidnet"
    shutil.copytree(reports_dir / "davidnet", folder)
    assert report.history_image_path("davidnet", tmp_path) is None
    drawn = report.history_image("davidnet", tmp_path)
    assert drawn is not None and drawn.ndim == 3 and drawn.shape[2] == 3 and drawn.dtype == np.uint8
    history = report.load_history("davidnet", tmp_path)
    assert report.save_history_plot(history, "davidnet", folder / config.HISTORY_PLOT_FILE)
    assert report.history_image_path("davidnet", tmp_path) == folder / config.HISTORY_PLOT_FILE
    assert np.array_equal(report.history_image("davidnet", tmp_path), drawn)  # same figure, same pixels
    assert not report.save_history_plot((), "davidnet", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    assert report.history_image("davidnet", tmp_path / "elsewhere") is None


def test_training_curves_without_a_phase_column(tmp_path):
    path = tmp_path / "davidnet" / "history.csv"
    path.parent.mkdir()
    path.write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy,lr\n0,1.0,0.5,1.1,0.4,0.001\n1,0.8,0.6,0.9,0.5,0.001\n"
    )
    figure = report.plot_history("davidnet", tmp_path)
    assert len(figure.axes) == 2


def test_audit_summary(reports_dir, tmp_path):
    text = report.audit_markdown(reports_dir)
    assert "6 across train/test" in text and "27" in text
    assert "test/Covid/COVID-00003b.jpg" in text
    assert report.audit_markdown(tmp_path) == "**Leakage audit:** not run on this server."
    (tmp_path / "audit.json").write_text(json.dumps({"counts": "unexpected", "leaked_test_files": 3}))
    assert "Leakage audit" in report.audit_markdown(tmp_path)  # odd content does not crash


def test_confounds_fit_in_two_sentences():
    text = report.CONFOUNDS_MARKDOWN.split("**", 2)[2]
    assert text.count(". ") + 1 == 2 and "pediatric" in text


def _check_evaluated_model(name, reports_dir, n_rows):
    """Every reader and renderer of the Model report tab works on `name`'s evaluation outputs."""
    metrics = report.load_metrics(name, reports_dir)
    assert metrics is not None, f"{name}: no metrics.json in {reports_dir}"
    official = metrics["subsets"]["official"]
    rows = report.load_predictions(name, reports_dir)
    assert rows is not None and len(rows) == n_rows
    assert all(r.file.startswith("test/") and r.true in CLASS_NAMES for r in rows)
    text = report.metrics_markdown(name, reports_dir)
    assert f"{official['accuracy']:.1%}" in text and f"(n={official['n']})" in text
    assert "has not been evaluated" not in text
    assert report.plot_history(name, reports_dir) is not None
    assert report.history_image(name, reports_dir) is not None
    for subset in config.TEST_SUBSET_TITLES:
        image = report.load_confusion_image(name, subset, reports_dir)
        assert image is not None and image.ndim == 3 and image.dtype == np.uint8
    cases = report.find_cases(name, reports_dir=reports_dir)
    status = report.gallery_status(cases, name, 0, reports_dir=reports_dir)
    assert "test image" in status and "evaluated" not in status


def _check_unevaluated_model(name, reports_dir):
    """Without evaluation outputs every part of the tab says so, in one line for visitors."""
    missing = f"{config.MODELS[name].display_name} has not been evaluated on this server yet"
    assert report.load_predictions(name, reports_dir) is None
    assert report.load_metrics(name, reports_dir) is None
    assert report.load_history(name, reports_dir) is None and report.plot_history(name, reports_dir) is None
    for subset in config.TEST_SUBSET_TITLES:
        assert report.load_confusion_image(name, subset, reports_dir) is None
    text = report.metrics_markdown(name, reports_dir)
    assert missing in text and "python" not in text
    assert f"{config.MODELS[name].paper_accuracy:.0%}" in text
    assert missing in report.gallery_status([], name, 0, reports_dir=reports_dir)
    assert report.find_cases(name, reports_dir=reports_dir) == []


@pytest.mark.parametrize("name", list(config.MODELS))
def test_model_report_from_generated_files(name, reports_dir):
    """Both models' outputs (CheXNet's included, which reports/ may not hold yet) render fully."""
    _check_evaluated_model(name, reports_dir, n_rows=len(GALLERY_ROWS))


@pytest.mark.parametrize("name", list(config.MODELS))
def test_model_report_without_evaluation(name, tmp_path):
    _check_unevaluated_model(name, tmp_path)


@pytest.mark.parametrize("name", list(config.MODELS))
def test_committed_reports_are_readable(name):
    """What is committed under reports/<model>/ renders fully; a model with nothing committed gets
    the empty state everywhere (a half-committed folder fails either way)."""
    if config.MODELS[name].report_dir(config.REPORTS_DIR).exists():
        _check_evaluated_model(name, config.REPORTS_DIR, n_rows=66)  # the whole test split
    else:
        _check_unevaluated_model(name, config.REPORTS_DIR)


# ---------------------------------------------------------------------------
# Shortcut explainer.
# ---------------------------------------------------------------------------


def test_cv_markdown_sets_cross_validation_beside_test(tmp_path):
    reports = tmp_path
    (reports / "davidnet").mkdir()
    recalls = (0.9, 0.8, 0.5)
    per_class = {c: {"recall": r} for c, r in zip(config.CLASS_NAMES, recalls, strict=True)}
    (reports / "davidnet" / "metrics.json").write_text(
        json.dumps({"subsets": {"official": {"n": 66, "accuracy": 0.8, "per_class": per_class}}})
    )
    assert report.cv_markdown("davidnet", reports) == ""  # no sweep summary: nothing said
    recall = dict(zip(config.CLASS_NAMES, (1.0, 0.9, 0.8), strict=True))
    other = dict(zip(config.CLASS_NAMES, (0.0, 0.0, 0.0), strict=True))
    sweep = {
        "folds": 5,
        "reference": "base",
        "configurations": {
            "base": {"oof_accuracy_mean": 0.912, "seeds": {"1": {"n": 251, "recall": recall}}},
            "other": {"oof_accuracy_mean": 0.5, "seeds": {"1": {"n": 251, "recall": other}}},
        },
    }
    (reports / "davidnet" / "cv_sweep.json").write_text(json.dumps(sweep))
    text = report.cv_markdown("davidnet", reports)
    assert "5 folds, out-of-fold predictions of 251 images, 1 seed)" in text
    assert "accuracy 91.2% against 80.0% on the official test" in text
    viral = config.CLASS_DISPLAY_NAMES["Viral Pneumonia"]
    assert f"{viral} 0.80 vs 0.50" in text
    assert "One test image is 1.5 points of accuracy" in text
    assert text in report.metrics_markdown("davidnet", reports)
    sweep["reference"] = "missing"
    path = reports / "davidnet" / "cv_sweep.json"
    path.write_text(json.dumps(sweep))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert report.cv_markdown("davidnet", reports) == ""


def test_external_sets_are_summarised_with_their_groups(tmp_path):
    folder = tmp_path / "davidnet" / "hospital-a"
    folder.mkdir(parents=True)
    per_class = {
        c: {"precision": 0.5, "recall": r, "f1": 0.5, "support": 10}
        for c, r in zip(CLASS_NAMES, (0.9, 0.1, 0.5), strict=True)
    }
    metrics = {
        "kind": "labelled_folder",
        "subsets": {"all": {"n": 30, "accuracy": 0.5, "per_class": per_class}},
        "calibration": {
            "temperature": None,
            "raw": {"ece": 0.3, "threshold": 0.9, "errors": 15, "confident_errors": 12},
        },
        "groups": {
            "adult": {
                "n": 20,
                "accuracy": 0.4,
                "recall": {"Covid": 0.9, "Normal": 0.05, "Viral Pneumonia": None},
            },
            "child": {
                "n": 10,
                "accuracy": 0.7,
                "recall": {"Covid": None, "Normal": 0.8, "Viral Pneumonia": 0.5},
            },
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert report.external_sets_markdown("davidnet", tmp_path / "empty") == ""
    text = report.external_sets_markdown("davidnet", tmp_path)
    assert "**hospital-a** (30 films): accuracy 50.0%" in text and "Normal 10.0% (n=10)" in text
    assert "Errors made with confidence >= 90%: 12/15" in text
    assert "| adult | 20 | 40.0% | 90.0% | 5.0% | n/a |" in text
