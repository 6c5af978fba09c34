"""`python -m covid_xray.studies.weight_averaging compare`: the cross-validation rule that decides
whether weight averaging ships, on synthetic out-of-fold runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from covid_xray.config import CLASS_NAMES


def _fold_runs(root, files, labels, probs, folds=2, seed=1):
    import json


    runs = []
    for k in range(folds):
        run = root / f"fold{k}"
        (run / "ckpt").mkdir(parents=True)
        with open(run / "val_predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "true", "predicted", *(f"p_{c}" for c in CLASS_NAMES)])
            for i in range(k, len(files), folds):
                p = probs[i]
                writer.writerow(
                    [
                        files[i],
                        CLASS_NAMES[labels[i]],
                        CLASS_NAMES[int(np.argmax(p))],
                        *(f"{v:.6f}" for v in p),
                    ]
                )
        meta = {"config": {"seed": seed, "cv_fold": k}, "kept": {"phase": "plain", "epoch": 3}}
        (run / "ckpt" / "davidnet.json").write_text(json.dumps(meta))
        runs.append(run)
    return runs


def _synthetic(n=120, true_mass=0.7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = np.full((n, 3), (1 - true_mass) / 2)
    probs[np.arange(n), labels] = true_mass
    probs += rng.uniform(0, 0.05, size=(n, 3))
    probs /= probs.sum(axis=1, keepdims=True)
    files = [f"train/x/{i:03d}.png" for i in range(n)]
    return files, labels, probs


def test_compare_ships_only_a_recipe_better_beyond_two_standard_errors(tmp_path):

    from covid_xray.studies.weight_averaging import RULE, compare

    files, labels, probs = _synthetic()
    sharper = probs.copy()
    sharper[np.arange(len(labels)), labels] += 0.3  # every image's true class gains: clearly better
    sharper /= sharper.sum(axis=1, keepdims=True)
    reference = _fold_runs(tmp_path / "ref", files, labels, probs)
    better = _fold_runs(tmp_path / "better", files, labels, sharper)
    reports = tmp_path / "reports"
    report = compare(reference, better, candidate="sharper", expected_files=files, reports_dir=reports)
    diff = report["paired_difference"]
    assert diff["better"] is True and diff["log_loss"] < -2 * diff["log_loss_se"] < 0
    assert report["decision"].startswith("ship sharper") and report["rule"] == RULE
    assert report["candidate"]["log_loss"] < report["reference"]["log_loss"]
    assert json.loads((reports / "davidnet" / "cv_weight_averaging.json").read_text()) == report
    # One image much better, the rest slightly worse: the mean may drop, but not beyond noise.
    noisy = probs.copy()
    noisy[0, labels[0]] = 0.999
    noisy[1:, :] = noisy[1:, :] + np.where(np.arange(3) == labels[1:, None], -0.005, 0.0025)
    noisy = _fold_runs(tmp_path / "noisy", files, labels, noisy)
    report = compare(reference, noisy, candidate="noisy", expected_files=files, reports_dir=reports)
    assert report["paired_difference"]["better"] is False and report["decision"].startswith(
        "keep the shipped"
    )
    # The same runs against themselves: difference exactly zero, not better.
    same = compare(reference, reference, expected_files=files, reports_dir=reports)["paired_difference"]
    assert same["log_loss"] == 0 and same["better"] is False


def test_compare_refuses_runs_of_different_seeds(tmp_path):
    from covid_xray.studies.weight_averaging import compare

    files, labels, probs = _synthetic(n=20)
    one = _fold_runs(tmp_path / "a", files, labels, probs, seed=1)
    two = _fold_runs(tmp_path / "b", files, labels, probs, seed=2)
    with pytest.raises(ValueError, match="share one seed"):
        compare(one, two, expected_files=files, reports_dir=tmp_path)
