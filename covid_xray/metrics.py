"""Classification metrics of a set of predictions: accuracy, per-class precision/recall/F1 and the
confusion matrix, confident errors, calibration statistics and a per-group breakdown (no I/O)."""

from __future__ import annotations

import numpy as np

from covid_xray import config

# An error made with at least this confidence counts as a confident error (issue #15).
HIGH_CONFIDENCE = 0.9


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro/weighted F1, confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(config.NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(config.CLASS_NAMES)
        },
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": list(config.CLASS_NAMES),
    }


def confident_errors(probs: np.ndarray, labels: np.ndarray, threshold: float = HIGH_CONFIDENCE) -> dict:
    """Errors, errors made with top-label confidence >= `threshold`, and their share of the errors."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, config.NUM_CLASSES)
    labels = np.asarray(labels, dtype=np.int64)
    wrong = probs.argmax(axis=1) != labels
    sure = wrong & (probs.max(axis=1) >= threshold)
    errors = int(wrong.sum())
    return {
        "threshold": threshold,
        "errors": errors,
        "confident_errors": int(sure.sum()),
        "share": float(sure.sum() / errors) if errors else None,
    }


def calibration_summary(probs: np.ndarray, labels: np.ndarray, temperature: float | None) -> dict:
    """ECE, NLL, mean confidence and confident-error share of the raw probabilities, and of the
    calibrated ones when the checkpoint carries an applied temperature (calibration.py's maths)."""
    from covid_xray.calibration import apply_temperature, calibration_metrics

    stats = calibration_metrics(probs, labels, temperature or 1.0)
    summary = {"temperature": temperature, "raw": {**stats["before"], **confident_errors(probs, labels)}}
    if temperature is not None:
        scaled = apply_temperature(probs, temperature)
        summary["calibrated"] = {**stats["after"], **confident_errors(scaled, labels)}
    return summary


def group_breakdown(y_true: np.ndarray, y_pred: np.ndarray, groups: list[str]) -> dict:
    """Per group: n, accuracy, per-class recall (None without a film of that class) and support."""
    out = {}
    groups_arr = np.asarray(groups, dtype=object)
    for group in sorted(set(groups)):
        mask = groups_arr == group
        t, p = y_true[mask], y_pred[mask]
        support = {c: int(np.sum(t == i)) for i, c in enumerate(config.CLASS_NAMES)}
        out[group] = {
            "n": int(mask.sum()),
            "accuracy": float(np.mean(t == p)),
            "recall": {
                c: (float(np.mean(p[t == i] == i)) if support[c] else None)
                for i, c in enumerate(config.CLASS_NAMES)
            },
            "support": support,
        }
    return out
