"""Evaluation: metric maths, the predictions.csv format, and the committed outputs reproduce."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covid_xray import config
from covid_xray.evaluate import PREDICTION_FIELDS, compute_metrics, evaluate_model, read_predictions


def test_metrics_on_a_known_confusion():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 2, 1, 2])
    m = compute_metrics(y_true, y_pred)
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(6 / 8)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 2]]
    assert m["per_class"]["Normal"]["precision"] == pytest.approx(2 / 4)
    assert m["per_class"]["Covid"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["Viral Pneumonia"]["support"] == 3


def test_prediction_columns_are_the_documented_ones():
    assert PREDICTION_FIELDS == [
        "file", "true", "predicted", "confidence", "p_Covid", "p_Normal", "p_Viral Pneumonia", "leaked"
    ]


@pytest.mark.slow
def test_committed_checkpoint_reproduces_committed_predictions(tmp_path, data_dir):
    """`python -m covid_xray.evaluate --model davidnet` gives the committed predictions.csv exactly."""
    spec = config.get_model_spec("davidnet")
    committed = spec.report_dir() / "predictions.csv"
    metrics = evaluate_model("davidnet", data_dir=str(data_dir), out_dir=str(tmp_path))
    assert (tmp_path / "predictions.csv").read_bytes() == committed.read_bytes()
    saved = json.loads((spec.report_dir() / "metrics.json").read_text())
    assert metrics["subsets"] == saved["subsets"]
    rows = read_predictions(committed)
    assert len(rows) == 66 and sum(r["leaked"] for r in rows) == 9
    # The committed checkpoint was selected on validation, never on test.
    meta = json.loads(spec.checkpoint_path().with_suffix(".json").read_text())
    assert meta["protocol"] == "default" and meta["selection"] == "validation split of train"


def test_readme_results_row_matches_the_committed_metrics():
    """The README's shipped-model row quotes reports/davidnet/metrics.json (issue: numbers match)."""
    import re

    from covid_xray.config import PROJECT_ROOT

    metrics = json.loads((PROJECT_ROOT / "reports" / "davidnet" / "metrics.json").read_text())
    row = next(
        line for line in (PROJECT_ROOT / "README.md").read_text().splitlines()
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
