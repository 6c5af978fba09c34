"""`python -m covid_xray.studies.refit`: the schedule rule (a fold's own labels never set its epochs),
the check that candidate folds followed it, and the cross-validation comparison, on synthetic runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covid_xray.studies import refit
from tests.studies.test_weight_averaging import _fold_runs, _synthetic

# Kept epochs of five fold runs and what they ran, as train.py's sidecars record them.
KEPT = [("plain", 13, 19, 8), ("augmented", 6, 13, 12), ("plain", 25, 25, 20), ("plain", 10, 16, 7),
        ("augmented", 21, 14, 27)]


def _reference(root, files, labels, probs):
    runs = _fold_runs(root, files, labels, probs, folds=5)
    for run, (phase, epoch, plain, augmented) in zip(runs, KEPT, strict=True):
        meta_path = run / "ckpt" / "davidnet.json"
        meta = json.loads(meta_path.read_text())
        meta["kept"] = {"phase": phase, "epoch": epoch}
        meta["epochs_run"] = {"plain": plain, "augmented": augmented}
        meta_path.write_text(json.dumps(meta))
    return runs


def _as_refit(runs, plan):
    for run in runs:
        meta_path = run / "ckpt" / "davidnet.json"
        meta = json.loads(meta_path.read_text())
        plain, augmented = plan["per_fold"][meta["config"]["cv_fold"]]
        meta["config"].update(refit=True, epochs=plain, augment_epochs=augmented)
        meta["epochs_run"] = {"plain": plain, "augmented": augmented}
        meta_path.write_text(json.dumps(meta))
    return runs


def test_fold_choice_counts_every_epoch_the_kept_model_saw():
    plain = {"kept": {"phase": "plain", "epoch": 13}, "epochs_run": {"plain": 19}}
    assert refit.fold_choice(plain) == (13, 0)
    meta = {"kept": {"phase": "augmented", "epoch": 6}, "epochs_run": {"plain": 13, "augmented": 12}}
    assert refit.fold_choice(meta) == (13, 6)  # augmented epochs start from the plain phase's last weights
    with pytest.raises(ValueError, match="kept no epoch"):
        refit.fold_choice({"kept": {"phase": None, "epoch": None}})


def test_schedule_is_the_median_per_phase_leaving_the_fold_out():
    choices = [(13, 0), (13, 6), (25, 0), (10, 0), (14, 21)]
    assert refit.schedule(choices) == (13, 0)
    # Leaving fold 0 out: plain 10, 13, 14, 25 -> 13.5 -> 14; augmented 0, 0, 6, 21 -> 3.
    assert refit.schedule(choices, leave_out=0) == (14, 3)
    assert refit.schedule(choices, leave_out=2) == (13, 3)
    assert refit.schedule([(0, 0), (0, 0)]) == (1, 0)  # train.py needs one epoch
    with pytest.raises(ValueError, match="other fold"):
        refit.schedule([(5, 0)], leave_out=0)


def test_compare_checks_the_schedule_then_writes_both_recipes_per_image(tmp_path):
    files, labels, probs = _synthetic(n=100)
    reference = _reference(tmp_path / "ref", files, labels, probs)
    plan = refit.schedules(reference)
    assert plan["all_of_train"] == [13, 0] and plan["per_fold"][0] == [14, 3]
    assert [c["choice"] for c in plan["fold_choices"]] == [[13, 0], [13, 6], [25, 0], [10, 0], [14, 21]]

    # A candidate that is not the refit the rule asks for is refused, not compared.
    stray = _fold_runs(tmp_path / "stray", files, labels, probs, folds=5)
    with pytest.raises(ValueError, match="not fold 0's refit run"):
        refit.compare(reference, stray, expected_files=files, reports_dir=tmp_path / "reports")

    sharper = probs.copy()
    sharper[np.arange(len(labels)), labels] += 0.3
    sharper /= sharper.sum(axis=1, keepdims=True)
    candidate = _as_refit(_fold_runs(tmp_path / "refit", files, labels, sharper, folds=5), plan)
    report = refit.compare(reference, candidate, expected_files=files, reports_dir=tmp_path / "reports")
    assert report["paired_difference"]["better"] is True and report["rule"] == refit.RULE
    assert report["schedule"]["rule"] == refit.SCHEDULE_RULE
    assert report["refit_command"].endswith("--refit --epochs 13 --augment-epochs 0")
    assert sorted(report["reference"]["per_image"]) == sorted(files)
    assert sorted(report["candidate"]["per_image"]) == sorted(files)
    loss, correct = report["candidate"]["per_image"][files[0]]
    assert loss == pytest.approx(-np.log(sharper[0, labels[0]]), abs=1e-5) and correct is True
    written = json.loads((tmp_path / "reports" / "davidnet" / "cv_refit.json").read_text())
    assert written["paired_difference"] == report["paired_difference"]


def test_schedule_cli_prints_train_flags(tmp_path, capsys):
    files, labels, probs = _synthetic(n=50)
    reference = [str(r) for r in _reference(tmp_path / "ref", files, labels, probs)]
    assert refit.main(["schedule", "--reference", *reference]) == 0
    assert capsys.readouterr().out.strip() == "--epochs 13 --augment-epochs 0"
    assert refit.main(["schedule", "--reference", *reference, "--fold", "0"]) == 0
    assert capsys.readouterr().out.strip() == "--epochs 14 --augment-epochs 3"
    assert refit.main(["schedule", "--reference", *reference[:4], "--fold", "0"]) == 0  # folds 0..3 of 4
    assert refit.main(["schedule", "--reference", *reference[1:]]) == 2
    assert "folds 0..3 once each" in capsys.readouterr().err


def test_readme_refit_table_matches_the_committed_comparison():
    """The README's refit table is `reports/davidnet/cv_refit.json`, and the shipped model is the
    recipe the rule kept (no test image read)."""
    from covid_xray import config

    report = json.loads((config.PROJECT_ROOT / "reports" / "davidnet" / config.CV_REFIT_FILE).read_text())
    readme = (config.PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    ref, cand, diff = report["reference"], report["candidate"], report["paired_difference"]
    assert f"| {ref['log_loss']:.4f} | {ref['accuracy']:.3f} | {ref['errors']} |" in readme
    assert f"| {cand['log_loss']:.4f} | {cand['accuracy']:.3f} | {cand['errors']} |" in readme
    assert f"| {diff['log_loss']:+.3f} +- {diff['log_loss_se']:.3f} |" in readme
    assert report["test_read"] is False and diff["better"] is False
    assert report["decision"].startswith("keep the shipped recipe")
    assert len(report["reference"]["per_image"]) == report["reference"]["n"] == 251
    sidecar = json.loads((config.CHECKPOINT_DIR / "davidnet.json").read_text())
    assert not sidecar["config"].get("refit") and sidecar["selection"] == "validation split of train"


def test_compare_cli_prints_the_rules_scores_and_decision(tmp_path, capsys, monkeypatch):
    files, labels, probs = _synthetic(n=60)
    reference = _reference(tmp_path / "ref", files, labels, probs)
    plan = refit.schedules(reference)
    candidate = _as_refit(_fold_runs(tmp_path / "refit", files, labels, probs, folds=5), plan)
    report = refit.compare(reference, candidate, expected_files=files, reports_dir=tmp_path / "reports")
    # The command lists the train folder for the expected files; these synthetic runs have their own.
    monkeypatch.setattr(refit, "compare", lambda *args, **kwargs: report)
    argv = ["compare", "--reference", *map(str, reference), "--candidate", *map(str, candidate)]
    assert refit.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"schedule: {refit.SCHEDULE_RULE}" and lines[1] == f"rule: {refit.RULE}"
    assert lines[2].startswith("shipped recipe") and lines[3].startswith("refit (fixed schedule)")
    assert "OOF log loss" in lines[3] and f"errors {report['candidate']['errors']}" in lines[3]
    assert lines[4].startswith("paired difference (candidate - shipped): log loss +0.0000 +- 0.0000")
    assert lines[5] == report["decision"] and lines[5].startswith("keep the shipped recipe")
    assert lines[6] == f"the refit on all of train: {report['refit_command']}"
