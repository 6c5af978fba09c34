"""Weight averaging judged by cross-validation before any test image is read (`RULE`)::

    python -m covid_xray.studies.weight_averaging compare --reference runs/oof-fold{0..4} \
        --candidate runs/swa5-fold{0..4} --candidate-flags "--swa-epochs 5"

compares the two recipes' out-of-fold predictions of the 251 train images image by image
(`scripts/sweep.py`'s `paired_difference`) and writes `reports/<model>/cv_weight_averaging.json`.
The averaging itself: `covid_xray.weight_averaging` (`train.py --swa-epochs N`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from covid_xray import config
from covid_xray.studies import _options

REPORT_FILE = config.CV_WEIGHT_AVERAGING_FILE


RULE = (
    "Stated before any run was scored and before any test image is read: a candidate recipe replaces the "
    "shipped one only if its mean out-of-fold log loss over the 251 train images is lower than the shipped "
    "recipe's by more than two standard errors of the paired per-image difference (scripts/sweep.py's "
    "paired_difference: same images, same 5 folds, same seed 1, same flags but the one tried). Accuracy is "
    "reported, it does not decide. The test split is not read by this comparison."
)


# Same floor as scripts/sweep.py's score(), so per-image losses are the sweep's.
LOSS_FLOOR = 1e-7


def _sweep_module():
    """scripts/sweep.py as a module (its paired comparison is the project's one rule)."""

    path = config.PROJECT_ROOT / "scripts" / "sweep.py"
    spec = importlib.util.spec_from_file_location("covid_xray_scripts_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oof_scores(
    runs: Sequence[str | os.PathLike], expected_files: Iterable[str], name: str = "davidnet"
) -> dict:
    """A recipe's out-of-fold scores over its fold runs, in scripts/sweep.py's "seeds" layout.

    Returns {"n", "accuracy", "log_loss", "errors", "folds": [{run, kept, epochs_run}], "seeds":
    {seed: {"per_image": {file: (log loss, correct)}}}}.
    """
    from covid_xray.studies.oof_calibrate import read_oof_predictions, run_sidecar

    files, probs, labels = read_oof_predictions(runs, expected_files)
    p_true = np.clip(probs[np.arange(len(labels)), labels], LOSS_FLOOR, 1.0)
    losses = -np.log(p_true)
    correct = probs.argmax(axis=1) == labels
    folds, seeds = [], set()
    for run in map(Path, runs):
        meta = run_sidecar(run, name) or {}
        kept = meta.get("kept", {})
        seeds.add((meta.get("config") or {}).get("seed"))
        folds.append(
            {
                "run": run.name,
                "fold": (meta.get("config") or {}).get("cv_fold"),
                "kept": f"{kept.get('phase')}:{kept.get('epoch')}",
                "epochs_run": meta.get("epochs_run"),
                "swa_epochs": (meta.get("config") or {}).get("swa_epochs", 0),
                "train_seconds": meta.get("train_seconds"),
            }
        )
    seed = str(seeds.pop()) if len(seeds) == 1 else "mixed"
    return {
        "n": len(files),
        "accuracy": round(float(correct.mean()), 6),
        "log_loss": round(float(losses.mean()), 6),
        "errors": int((~correct).sum()),
        "folds": folds,
        "seeds": {
            seed: {
                "per_image": {f: (float(v), bool(c)) for f, v, c in zip(files, losses, correct, strict=True)}
            }
        },
    }


def compare(
    reference_runs: Sequence[str | os.PathLike],
    candidate_runs: Sequence[str | os.PathLike],
    *,
    name: str = "davidnet",
    candidate: str = "candidate",
    candidate_flags: str = "",
    expected_files: Iterable[str] | None = None,
    data_dir: str | None = None,
    reports_dir: str | os.PathLike | None = None,
    note: str | None = None,
    report_file: str = REPORT_FILE,
    extra: dict | None = None,
    per_image: bool = False,
) -> dict:
    """Score both recipes out of fold, apply `RULE`, write reports/<model>/`report_file`.

    `extra` adds fields to the report (a study's own record, e.g. the refit schedule); `per_image`
    keeps each recipe's per-image (log loss, correct), so a later candidate can be paired with these
    folds without rerunning them.
    """
    from covid_xray.checkpoints import write_json

    if expected_files is None:
        from covid_xray.data import list_samples

        expected_files = [s.relpath for s in list_samples(data_dir, split="train")]
    expected_files = list(expected_files)
    reference = oof_scores(reference_runs, expected_files, name)
    tried = oof_scores(candidate_runs, expected_files, name)
    if set(reference["seeds"]) != set(tried["seeds"]) or "mixed" in reference["seeds"]:
        raise ValueError(
            f"The reference runs (seed {sorted(reference['seeds'])}) and the candidate runs (seed "
            f"{sorted(tried['seeds'])}) must share one seed for a paired comparison."
        )
    diff = _sweep_module().paired_difference(tried, reference)
    diff = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in diff.items()}

    def scores(recipe: dict) -> dict:
        out = {k: v for k, v in recipe.items() if k != "seeds"}
        if per_image:
            (seed_scores,) = recipe["seeds"].values()
            out["per_image"] = {f: [round(v, 6), c] for f, (v, c) in sorted(seed_scores["per_image"].items())}
        return out

    report = {
        "model": name,
        "rule": RULE,
        "reference": {"recipe": "shipped recipe", **scores(reference)},
        "candidate": {"recipe": candidate, "flags": candidate_flags, **scores(tried)},
        "paired_difference": diff,
        "decision": (
            f"ship {candidate}: lower OOF log loss beyond two standard errors"
            if diff["better"]
            else f"keep the shipped recipe: {candidate} is not better beyond two standard errors "
            f"(difference {diff['log_loss']:+.4f} +- {diff['log_loss_se']:.4f} per image)"
        ),
        "test_read": False,
        **(extra or {}),
        "note": note,
    }
    write_json(config.get_model_spec(name).report_dir(reports_dir) / report_file, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m covid_xray.studies.weight_averaging compare ...`."""
    from covid_xray.calibration import CalibrationError
    from covid_xray.data import DatasetNotFoundError

    parser = argparse.ArgumentParser(prog=config.WEIGHT_AVERAGING_COMMAND, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="paired out-of-fold comparison of two recipes' fold runs")
    _options.add(p, "model", "reference")
    p.add_argument("--candidate", nargs="+", required=True, help="fold runs of the recipe tried")
    p.add_argument("--candidate-name", default="weight averaging", help="what the candidate is, in words")
    p.add_argument("--candidate-flags", default="", help="train.py flags the candidate adds")
    _options.add(p, "data_dir", "reports_dir", "note")
    args = parser.parse_args(argv)
    try:
        report = compare(
            args.reference,
            args.candidate,
            name=args.model,
            candidate=args.candidate_name,
            candidate_flags=args.candidate_flags,
            data_dir=args.data_dir,
            reports_dir=args.reports_dir,
            note=args.note,
        )
    except (CalibrationError, DatasetNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    return 0


def summary(report: dict, candidate_label: str | None = None) -> str:
    """The comparison in a few lines: the rule, both recipes' OOF scores, the paired difference and
    the decision (what `compare` commands print)."""
    ref, cand, diff = report["reference"], report["candidate"], report["paired_difference"]
    lines = [f"rule: {report['rule']}"]
    for label, s in (("shipped recipe", ref), (candidate_label or cand["recipe"], cand)):
        lines.append(
            f"{label:28s} OOF log loss {s['log_loss']:.4f}  accuracy {s['accuracy']:.4f}  "
            f"errors {s['errors']}"
        )
    lines.append(
        f"paired difference (candidate - shipped): log loss {diff['log_loss']:+.4f} "
        f"+- {diff['log_loss_se']:.4f}, accuracy {diff['accuracy']:+.4f} +- {diff['accuracy_se']:.4f}"
    )
    lines.append(report["decision"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
