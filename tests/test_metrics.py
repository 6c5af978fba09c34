"""Classification metrics (`covid_xray.metrics`) on hand-checked examples."""

from __future__ import annotations

import numpy as np
import pytest

from covid_xray.metrics import compute_metrics, confident_errors, group_breakdown


def test_metrics_on_a_known_confusion():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 2, 1, 2])
    m = compute_metrics(y_true, y_pred)
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(6 / 8)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 2]]
    assert m["per_class"]["Normal"]["precision"] == pytest.approx(2 / 4)
    assert m["per_class"]["Covid"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["Viral Pneumonia"]["support"] == 3


def test_confident_errors_count_only_sure_mistakes():
    probs = np.array([[0.95, 0.03, 0.02], [0.6, 0.3, 0.1], [0.05, 0.92, 0.03], [0.1, 0.2, 0.7]])
    labels = np.array([1, 1, 1, 2])  # wrong and sure, wrong and unsure, right, right
    result = confident_errors(probs, labels)
    assert result == {"threshold": 0.9, "errors": 2, "confident_errors": 1, "share": 0.5}
    assert confident_errors(probs, probs.argmax(axis=1))["share"] is None  # no error, no share


def test_group_breakdown_scores_each_group_alone():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    groups = ["a", "a", "a", "b", "b", "b"]
    result = group_breakdown(y_true, y_pred, groups)
    assert set(result) == {"a", "b"}
    assert result["a"]["n"] == 3 and result["a"]["accuracy"] == pytest.approx(2 / 3)
    assert result["b"]["n"] == 3 and result["b"]["accuracy"] == pytest.approx(2 / 3)
    # Per-class recall inside a group; None for a class the group has no film of.
    assert result["a"]["recall"] == {"Covid": 0.5, "Normal": 1.0, "Viral Pneumonia": None}
