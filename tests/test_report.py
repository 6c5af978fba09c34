"""Reading the committed examples and evaluation outputs for the app's tabs (covid_xray.report)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from covid_xray import config, report
from covid_xray.config import CLASS_NAMES
from tests.app_fixtures import GALLERY_ROWS, write_predictions_csv


@pytest.fixture(autouse=True)
def no_provisioned_reports(tmp_path_factory, monkeypatch):
    """An empty cache folder: reports from a first-start provisioning never stand in for the
    folder under test."""
    monkeypatch.setenv(config.HOME_ENV_VAR, str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv(config.REPORTS_DIR_ENV_VAR, raising=False)


# ---------------------------------------------------------------------------
# The committed examples.
# ---------------------------------------------------------------------------
def test_committed_examples_are_valid(data_dir):
    examples = report.load_examples()
    assert 6 <= len(examples) <= 12
    files = [e.file for e in examples]
    assert len(set(files)) == len(files)
    for example in examples:
        assert example.label in CLASS_NAMES
        # Dataset-relative path, under the class folder of its label.
        split, label, _ = example.file.split("/")
        assert (split, label) == ("test", example.label), example.file
        assert (data_dir / example.file).is_file(), example.file
        assert 20 < len(example.note) < 400
    # Every class is represented, plus the documented leaked duplicate and the hard case.
    assert {e.label for e in examples} == set(CLASS_NAMES)
    assert "test/Covid/COVID-00003b.jpg" in files
    assert "test/Normal/0103.jpeg" in files


def test_example_gallery_has_a_thumbnail_per_example(data_dir):
    examples = report.load_examples()
    items = report.example_gallery(examples, data_dir)
    assert len(items) == len(examples)
    for index, (thumbnail, caption) in enumerate(items):
        assert thumbnail.dtype == np.uint8 and thumbnail.ndim == 3
        assert max(thumbnail.shape[:2]) <= report.THUMBNAIL_SIDE
        # The caption does not give the answer away: the label is shown after the prediction.
        assert caption == f"Case {index + 1}"
        assert examples[index].label not in caption
    assert "True label" in examples[0].answer_markdown()


def test_examples_file_errors(tmp_path):
    assert report.load_examples(tmp_path / "absent.csv") == ()
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label,note\ntest/Covid/0100.jpeg,COVID,typo in the label\n")
    with pytest.raises(report.ReportError, match="COVID"):
        report.load_examples(bad)
    bad.write_text("file,label\ntest/Covid/0100.jpeg,Covid\n")
    with pytest.raises(report.ReportError, match="note"):
        report.load_examples(bad)


def test_missing_dataset_message(tmp_path):
    assert not report.data_available(tmp_path)
    message = report.missing_data_message(tmp_path)
    # For visitors: what is missing and what still works; no server path, no command.
    assert "not available on this server" in message and "Uploads still work" in message
    assert str(tmp_path) not in message and "python" not in message


def test_dataset_paths_stay_inside_the_data_root(tmp_path):
    assert (
        report.resolve_dataset_file("test/Covid/a.jpg", tmp_path) == tmp_path.resolve() / "test/Covid/a.jpg"
    )
    for bad in ("../secret.png", "/etc/passwd", "test/../../x.png"):
        with pytest.raises(report.ReportError):
            report.resolve_dataset_file(bad, tmp_path)


# ---------------------------------------------------------------------------
# predictions.csv and the error gallery.
# ---------------------------------------------------------------------------
def _files(cases):
    return [c.file for c in cases]


def test_predictions_are_parsed(reports_dir):
    rows = report.load_predictions("davidnet", reports_dir)
    assert len(rows) == len(GALLERY_ROWS)
    first = rows[1]
    assert (first.file, first.true, first.predicted, first.leaked) == (
        "test/Covid/COVID-00003b.jpg",
        "Covid",
        "Normal",
        True,
    )
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert first.caption() == "COVID-19 > Normal (80.0%)"
    assert report.load_predictions("davidnet", reports_dir / "nowhere") is None


@pytest.mark.parametrize(
    "model, kwargs, expected",
    [
        # every image the model got wrong
        (
            "davidnet",
            {},
            ["test/Covid/COVID-00003b.jpg", "test/Normal/0103.jpeg", "test/Viral Pneumonia/0101.jpeg"],
        ),
        ("chexnet", {}, ["test/Normal/0103.jpeg", "test/Normal/0101.jpeg", "test/Viral Pneumonia/0101.jpeg"]),
        # leakage-free test: leaked rows dropped
        ("davidnet", {"subset": "leakage_free"}, ["test/Viral Pneumonia/0101.jpeg"]),
        # filters on the true and the predicted class
        ("davidnet", {"true_class": "Normal"}, ["test/Normal/0103.jpeg"]),
        (
            "davidnet",
            {"predicted_class": "Normal"},
            ["test/Covid/COVID-00003b.jpg", "test/Viral Pneumonia/0101.jpeg"],
        ),
        # both models wrong (whichever model captions them)
        ("davidnet", {"mode": "both_wrong"}, ["test/Normal/0103.jpeg", "test/Viral Pneumonia/0101.jpeg"]),
        ("chexnet", {"mode": "both_wrong"}, ["test/Normal/0103.jpeg", "test/Viral Pneumonia/0101.jpeg"]),
        # models disagree, right or wrong
        ("davidnet", {"mode": "disagree"}, ["test/Covid/COVID-00003b.jpg", "test/Normal/0101.jpeg"]),
        ("davidnet", {"mode": "disagree", "subset": "leakage_free"}, ["test/Normal/0101.jpeg"]),
    ],
)
def test_find_cases(reports_dir, model, kwargs, expected):
    assert _files(report.find_cases(model, reports_dir=reports_dir, **kwargs)) == expected


def test_case_captions_and_details(reports_dir):
    case = report.find_cases("chexnet", mode="disagree", reports_dir=reports_dir)[0]
    assert case.caption("chexnet") == "COVID-19 > COVID-19 (80.0%)"
    assert case.caption("davidnet") == "COVID-19 > Normal (80.0%)"
    details = case.details_markdown()
    assert "COVID-00003b" in details and "leaked" in details
    assert "DavidNet" in details and "CheXNet" in details


def test_find_cases_refuses_unknown_options(reports_dir):
    with pytest.raises(ValueError):
        report.find_cases("davidnet", subset="train", reports_dir=reports_dir)
    with pytest.raises(ValueError):
        report.find_cases("davidnet", mode="all", reports_dir=reports_dir)


def test_gallery_items_from_the_dataset(reports_dir, data_dir):
    cases = report.find_cases("davidnet", reports_dir=reports_dir)
    items, shown = report.gallery_items(cases, "davidnet", data_dir)
    assert len(items) == len(shown) == len(cases)
    assert [caption for _, caption in items] == [c.caption("davidnet") for c in cases]
    assert all(max(image.shape[:2]) <= report.THUMBNAIL_SIDE for image, _ in items)
    status = report.gallery_status(cases, "davidnet", len(items), data_dir=data_dir, reports_dir=reports_dir)
    assert status == "3 test images match."


def test_gallery_without_dataset_says_so(reports_dir, tmp_path):
    cases = report.find_cases("davidnet", reports_dir=reports_dir)
    items, shown = report.gallery_items(cases, "davidnet", tmp_path)
    assert items == [] and shown == []
    status = report.gallery_status(cases, "davidnet", 0, data_dir=tmp_path, reports_dir=reports_dir)
    assert status == report.missing_data_message()


def test_gallery_without_evaluation_says_so(tmp_path):
    assert report.find_cases("chexnet", reports_dir=tmp_path) == []
    status = report.gallery_status([], "chexnet", 0, reports_dir=tmp_path)
    assert status == "CheXNet has not been evaluated on this server yet, so it has no errors to show."


def test_comparing_models_needs_both_predictions(tmp_path):
    write_predictions_csv(
        tmp_path / "davidnet" / "predictions.csv", [("test/Covid/0100.jpeg", "Covid", "Normal", 0)]
    )
    assert report.find_cases("davidnet", mode="both_wrong", reports_dir=tmp_path) == []
    status = report.gallery_status([], "davidnet", 0, mode="disagree", reports_dir=tmp_path)
    assert "needs both evaluations" in status and "CheXNet has not been evaluated" in status


def test_malformed_predictions_are_an_error(tmp_path):
    path = tmp_path / "davidnet" / "predictions.csv"
    path.parent.mkdir()
    path.write_text("file,true,predicted\ntest/Covid/0100.jpeg,Covid,Normal\n")
    with pytest.raises(report.ReportError, match="predictions.csv"):
        report.load_predictions("davidnet", tmp_path)


def test_reports_are_reread_when_the_file_changes(tmp_path):
    path = tmp_path / "davidnet" / "predictions.csv"
    write_predictions_csv(path, [("test/Covid/0100.jpeg", "Covid", "Normal", 0)])
    assert len(report.load_predictions("davidnet", tmp_path)) == 1
    write_predictions_csv(path, [("test/Covid/0100.jpeg", "Covid", "Normal", 0)] * 2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert len(report.load_predictions("davidnet", tmp_path)) == 2


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


def test_confusion_images_are_arrays(reports_dir, tmp_path):
    image = report.load_confusion_image("davidnet", "official", reports_dir)
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    assert report.load_confusion_image("davidnet", "official", tmp_path) is None


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


def test_committed_report_files():
    report.audit_markdown()
    assert report.load_audit() is not None
    assert isinstance(report.load_examples(), tuple)
    assert Path(config.EXAMPLES_FILE).exists()


# ---------------------------------------------------------------------------
# Shortcut explainer.
# ---------------------------------------------------------------------------
def test_shortcut_explainer_quotes_the_committed_numbers():
    """The two paragraphs read their numbers from the committed reports, never from the code."""
    from covid_xray.report.faithfulness import border_mass_summary

    text = report.shortcut_markdown()
    metrics = report.load_metrics("davidnet")
    official = metrics["subsets"]["official"]["accuracy"]
    clean = metrics["subsets"]["leakage_free"]
    assert f"{official:.1%} on the official test set" in text
    assert f"{clean['accuracy']:.1%} on the {clean['n']} test images" in text
    leaked = report.load_audit()["leaked_test_files"]
    assert f"{len(leaked)} of the 66 test images" in text
    mass = border_mass_summary("davidnet")["methods"]["gradcam"]["mean"]
    assert f"DavidNet's Grad-CAM puts {mass:.0%} of its heatmap" in text
    assert "children" in text and text.count("\n\n") == 1  # two paragraphs
    for name, spec in config.MODELS.items():
        metrics = report.load_metrics(name, config.REPORTS_DIR)
        if metrics is None:  # a model without committed numbers is not quoted at all
            assert spec.display_name not in text
        else:
            assert f"{metrics['subsets']['official']['accuracy']:.1%}" in text


def test_shortcut_explainer_without_reports_says_what_is_missing(tmp_path, reports_dir):
    # The fixture reports have metrics but no faithfulness file: the border-mass sentences say so,
    # for each model.
    text = report.shortcut_markdown(reports_dir)
    for name, spec in config.MODELS.items():
        assert f"{spec.display_name}'s heatmaps have not been measured on this server yet." in text
        official = report.load_metrics(name, reports_dir)["subsets"]["official"]["accuracy"]
        assert f"{official:.1%} on the official test set" in text
    empty = report.shortcut_markdown(tmp_path)
    assert "several test images have a copy" in empty and "official test set" not in empty


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
    assert "5 folds, out-of-fold predictions of 251 images, 1 seed(s)" in text
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
