"""Evaluation: metric maths, the predictions.csv format, and the committed outputs reproduce."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from covid_xray import config
from covid_xray.report.files import evaluated_sets, read_predictions
from covid_xray.studies.evaluate import PREDICTION_FIELDS, main


def test_prediction_columns_are_the_documented_ones():
    assert PREDICTION_FIELDS == [
        "file",
        "true",
        "predicted",
        "confidence",
        "p_Covid",
        "p_Normal",
        "p_Viral Pneumonia",
        "leaked",
    ]


def test_the_committed_evaluation_is_of_a_model_selected_on_validation():
    """The committed predictions cover the whole test split with the audit's 9 leaked images, and
    the checkpoint they are of was selected on validation, never on test (their regeneration from
    that checkpoint: tests/studies/test_regenerate.py)."""
    spec = config.get_model_spec("davidnet")
    rows = read_predictions(spec.report_dir() / config.PREDICTIONS_FILE)
    assert len(rows) == 66 and sum(r.leaked for r in rows) == 9
    meta = json.loads(spec.checkpoint_path().with_suffix(".json").read_text())
    assert meta["protocol"] == "default" and meta["selection"] == "validation split of train"


def test_readme_results_row_matches_the_committed_metrics():
    """The README's shipped-model row quotes reports/davidnet/metrics.json (issue: numbers match)."""
    import re

    from covid_xray.config import PROJECT_ROOT

    metrics = json.loads((PROJECT_ROOT / "reports" / "davidnet" / "metrics.json").read_text())
    row = next(
        line
        for line in (PROJECT_ROOT / "README.md").read_text().splitlines()
        if line.startswith("| **DavidNet, ours (shipped)**")
    )
    pairs = re.findall(r"\*\*(0\.\d{3})\*\* \(macro-F1 (0\.\d{3})\)", row)
    assert len(pairs) == 2, row  # official, then leakage-free
    quoted = [float(x) for pair in pairs for x in pair]
    expected = []
    for subset in ("official", "leakage_free"):
        expected += [metrics["subsets"][subset]["accuracy"], metrics["subsets"][subset]["macro_f1"]]
    assert quoted == pytest.approx([round(v, 3) for v in expected], abs=1e-9)


def test_readme_cross_validation_table_matches_the_committed_summary():
    """Every row of the README's cross-validation table quotes reports/davidnet/cv_sweep.json."""
    from covid_xray.config import PROJECT_ROOT

    sweep = json.loads((PROJECT_ROOT / "reports" / "davidnet" / "cv_sweep.json").read_text())
    readme = (PROJECT_ROOT / "README.md").read_text().splitlines()
    configurations = sweep["configurations"]
    assert sweep["reference"] == "base" and len(configurations) >= 2
    for name, entry in configurations.items():
        row = next(line for line in readme if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(round(entry["oof_log_loss_mean"], 3), abs=1e-9), row
        assert float(cells[2]) == pytest.approx(round(entry["oof_accuracy_mean"], 3), abs=1e-9), row
        if name != sweep["reference"]:
            versus = entry["vs_reference"]
            assert cells[3] == f"{versus['log_loss']:+.3f} ± {versus['log_loss_se']:.3f}", row
    # The sentence that keeps the shipped model holds for the committed numbers.
    assert sweep["selected_beats_reference"] is False


# ---------------------------------------------------------------------------
# Any labelled folder (issue #15, item 2).
# ---------------------------------------------------------------------------
RENAMED = {"Covid": "COVID-19", "Normal": "normal", "Viral Pneumonia": "Pneumonia-Viral"}


def _renamed_test_folder(tmp_path, data_dir):
    """The official test images, symlinked under renamed class folders, and a group CSV that
    puts each image in `leaked` or `clean` (the committed predictions.csv's audit flag)."""
    folder = tmp_path / "films"
    rows = read_predictions(config.get_model_spec("davidnet").report_dir() / "predictions.csv")
    with open(tmp_path / "groups.csv", "w") as handle:
        handle.write("file,group\n")
        for row in rows:
            source = data_dir / row.file
            target = folder / RENAMED[row.true] / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
            handle.write(f"{RENAMED[row.true]}/{source.name},{'leaked' if row.leaked else 'clean'}\n")
    return folder, tmp_path / "groups.csv", rows


@pytest.mark.slow
def test_a_renamed_copy_of_the_test_split_reproduces_the_committed_metrics(tmp_path, data_dir):

    folder, groups, rows = _renamed_test_folder(tmp_path, data_dir)
    out = tmp_path / "reports" / "davidnet" / "renamed-test"
    code = main(
        [
            "--model",
            "davidnet",
            "--data-dir",
            str(folder),
            "--name",
            "renamed-test",
            "--groups",
            str(groups),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    committed = config.get_model_spec("davidnet").report_dir() / "metrics.json"
    saved = json.loads(committed.read_text())["subsets"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["subsets"]["all"] == saved["official"]
    assert metrics["leakage_free"].startswith("not applicable")
    # The `clean` group is the leakage-free subset: same n, accuracy and per-class recall.
    clean, free = metrics["groups"]["clean"], saved["leakage_free"]
    assert clean["n"] == free["n"] == 57 and metrics["groups"]["leaked"]["n"] == 9
    assert clean["accuracy"] == pytest.approx(free["accuracy"])
    for name in config.CLASS_NAMES:
        assert clean["recall"][name] == pytest.approx(free["per_class"][name]["recall"])
        assert clean["support"][name] == free["per_class"][name]["support"]
    # Calibration statistics of the raw probabilities, from calibration.py's maths.
    from covid_xray.calibration import expected_calibration_error

    probs = np.array([[r.probabilities[c] for c in config.CLASS_NAMES] for r in rows])
    labels = np.array([config.CLASS_NAMES.index(r.true) for r in rows])
    raw = metrics["calibration"]["raw"]
    assert raw["ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-4)
    assert raw["errors"] == 66 - round(saved["official"]["accuracy"] * 66)
    # predictions.csv: same columns, group instead of leaked; rows in the folder's own paths.
    with open(out / "predictions.csv") as handle:
        header = handle.readline().strip().split(",")
        first = handle.readline().strip().split(",")
    assert header[-1] == "group" and header[:-1] == PREDICTION_FIELDS[:-1]
    assert first[0].startswith("COVID-19/") and first[1] == "Covid"
    assert (out / "confusion_all.png").stat().st_size > 1000

    # evaluated_sets: the Kaggle test first, then the folder.
    shutil.copy(config.get_model_spec("davidnet").report_dir() / "metrics.json", out.parent)
    sets = evaluated_sets("davidnet", tmp_path / "reports")
    assert [key for key, _, _ in sets] == ["test", "renamed-test"]
    assert sets[1][2] == out and "n=66" in sets[1][1]


def test_unknown_class_folders_are_refused_with_the_accepted_names(tmp_path, capsys):

    for name in ("covid", "Pneumonia", "xrays-misc"):
        (tmp_path / name).mkdir()
    assert main(["--data-dir", str(tmp_path), "--name", "mine"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "'Pneumonia'" in err and "'xrays-misc'" in err and "'covid'" not in err
    for accepted in ("COVID-19", "Pneumonia-Viral", "viral_pneumonia", "Normal"):
        assert accepted in err
    assert len(err.strip().splitlines()) == 1  # one paragraph


def test_name_is_checked_and_needs_a_folder(tmp_path, capsys):

    (tmp_path / "normal").mkdir()
    assert main(["--data-dir", str(tmp_path), "--name", "../escape"]) == 2
    assert "--name '../escape'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--name", "mine"])
    assert exit_info.value.code == 2
