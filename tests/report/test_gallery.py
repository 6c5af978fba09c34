"""The curated examples and the error gallery (`covid_xray.report.gallery`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covid_xray import config, report
from covid_xray.config import CLASS_NAMES
from tests.app_fixtures import write_predictions_csv


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


def _files(cases):
    return [c.file for c in cases]


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


# ---------------------------------------------------------------------------
# A labelled folder of a user's own films, evaluated with `evaluate --data-dir DIR --name NAME`.
# ---------------------------------------------------------------------------
@pytest.fixture()
def own_films(tmp_path):
    """reports/davidnet/mine/ as `evaluate_folder` writes it, for three films in tmp/films/."""
    import csv

    from PIL import Image

    films = tmp_path / "films"
    rows = [
        ("COVID-19/a.png", "Covid", "Normal", "site-a"),
        ("normal/b.png", "Normal", "Normal", "site-a"),
        ("Pneumonia-Viral/c.png", "Viral Pneumonia", "Covid", "site-b"),
    ]
    rng = np.random.default_rng(0)
    for relpath, *_ in rows:
        (films / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(films / relpath)
    folder = tmp_path / "reports" / "davidnet" / "mine"
    folder.mkdir(parents=True)
    metrics = {"kind": "labelled_folder", "data_dir": str(films), "subsets": {"all": {"n": 3}}}
    (folder / config.METRICS_FILE).write_text(json.dumps(metrics))
    with open(folder / config.PREDICTIONS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(config.FOLDER_PREDICTION_COLUMNS)
        for relpath, true, predicted, group in rows:
            probs = [0.8 if c == predicted else 0.1 for c in CLASS_NAMES]
            writer.writerow([relpath, true, predicted, "0.800000", *[f"{p:.6f}" for p in probs], group])
    return tmp_path / "reports", films


def test_the_gallery_offers_each_evaluated_labelled_folder(own_films):
    reports, films = own_films
    sets = dict(report.film_sets(reports))
    assert list(sets)[0] == report.KAGGLE_SET_KEY and sets["mine"] == "Your films: mine (3 images)"
    cases = report.find_cases("davidnet", reports_dir=reports, film_set="mine")
    assert [c.file for c in cases] == ["COVID-19/a.png", "Pneumonia-Viral/c.png"]  # the two errors
    assert all(c.path() == (films / c.file).resolve() for c in cases)
    items, shown = report.gallery_items(cases, "davidnet")
    assert len(items) == len(shown) == 2 and items[0][1] == "COVID-19 > Normal (80.0%)"
    assert "your films: mine, group site-a" in cases[0].details_markdown()
    status = report.gallery_status(cases, "davidnet", len(items), reports_dir=reports, film_set="mine")
    assert status == "2 films match."
    # The other model was not evaluated on these films: said so, not an empty gallery.
    assert report.find_cases("chexnet", reports_dir=reports, film_set="mine") == []
    assert "CheXNet has not been evaluated on mine" in report.gallery_status(
        [], "chexnet", 0, reports_dir=reports, film_set="mine"
    )


def test_a_labelled_folder_path_cannot_leave_its_folder(own_films):
    reports, _ = own_films
    case = report.find_cases("davidnet", reports_dir=reports, film_set="mine")[0]
    escaped = type(case)(**{**case.__dict__, "file": "../../secret.png"})
    with pytest.raises(report.ReportError, match="outside"):
        escaped.path()
