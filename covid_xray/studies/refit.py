"""Refit on all of train for the epochs the folds chose, judged by cross-validation first (`RULE`).

The shipped recipe keeps the epoch of lowest validation loss, so a fifth of train only chooses.
The standard alternative: let the k-fold runs choose the epoch count, then train on every train
image for that many epochs with nothing chosen (`train.py --refit`). Its cross-validation (each
fold trained with `--refit` for the schedule the *other* folds chose, so a fold's own labels never
set its epoch count) is compared with the shipped recipe's folds image by image::

    python -m covid_xray.studies.refit schedule --reference runs/oof-fold{0..4} [--fold K]
    python -m covid_xray.studies.refit compare --reference runs/oof-fold{0..4} \
        --candidate runs/refit-fold{0..4}

`schedule` prints the train.py flags (`--epochs P --augment-epochs A`); `compare` writes
reports/<model>/cv_refit.json with both recipes' per-image scores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covid_xray import config
from covid_xray.studies import _options, weight_averaging

RULE = weight_averaging.RULE

SCHEDULE_RULE = (
    "Stated before any refit run: a fold run's choice is the epochs its kept model was trained for, per "
    "phase (kept plain:e -> e plain epochs and no augmented ones; kept augmented:e -> every plain epoch it "
    "ran, then e augmented). The refit schedule is the median of those choices per phase, rounded half up: "
    "over the other folds for a fold's cross-validation run (its own labels never set its epochs), over "
    "all folds for the model refitted on all of train."
)


def fold_choice(meta: dict) -> tuple[int, int]:
    """(plain epochs, augmented epochs) the fold run's kept model was trained for, from its sidecar."""
    kept, run = meta.get("kept") or {}, meta.get("epochs_run") or {}
    if kept.get("phase") == "plain":
        return int(kept["epoch"]), 0
    if kept.get("phase") == "augmented":
        return int(run["plain"]), int(kept["epoch"])
    raise ValueError(f"The run kept no epoch ({kept!r}); it cannot choose a schedule.")


def _median(values: Sequence[int]) -> int:
    return int(math.floor(float(np.median(values)) + 0.5))


def schedule(choices: Sequence[tuple[int, int]], leave_out: int | None = None) -> tuple[int, int]:
    """The refit schedule (plain, augmented) of `SCHEDULE_RULE`; `leave_out`: the fold to exclude."""
    kept = [c for i, c in enumerate(choices) if i != leave_out]
    if not kept:
        raise ValueError("A schedule needs at least one other fold's choice.")
    plain, augmented = _median([c[0] for c in kept]), _median([c[1] for c in kept])
    if plain + augmented < 1:
        plain = 1  # train.py needs one epoch; no fold chose none, so this only guards odd inputs
    return plain, augmented


def read_choices(runs: Sequence[str | os.PathLike], name: str = "davidnet") -> list[dict]:
    """Each fold run's {run, fold, kept, choice}, ordered by fold."""
    from covid_xray.studies.oof_calibrate import run_sidecar

    out = []
    for run in map(Path, runs):
        meta = run_sidecar(run, name)
        if meta is None:
            raise ValueError(f"{run} holds no {name}.json (is it a train.py run folder?).")
        kept = meta.get("kept") or {}
        out.append(
            {
                "run": run.name,
                "fold": (meta.get("config") or {}).get("cv_fold"),
                "kept": f"{kept.get('phase')}:{kept.get('epoch')}",
                "choice": list(fold_choice(meta)),
            }
        )
    folds = [c["fold"] for c in out]
    if sorted(folds) != list(range(len(out))):
        raise ValueError(f"The reference runs must be folds 0..{len(out) - 1} once each, got {folds}.")
    return sorted(out, key=lambda c: c["fold"])


def schedules(runs: Sequence[str | os.PathLike], name: str = "davidnet") -> dict:
    """The rule's schedules: per fold (leave that fold out) and for the refit on all of train."""
    choices = read_choices(runs, name)
    picks = [tuple(c["choice"]) for c in choices]
    return {
        "rule": SCHEDULE_RULE,
        "fold_choices": choices,
        "per_fold": {c["fold"]: list(schedule(picks, leave_out=i)) for i, c in enumerate(choices)},
        "all_of_train": list(schedule(picks)),
    }


def check_candidates(candidate_runs: Sequence[str | os.PathLike], plan: dict, name: str = "davidnet") -> None:
    """Each candidate fold ran with --refit for the schedule the rule gives it (else ValueError)."""
    from covid_xray.studies.oof_calibrate import run_sidecar

    for run in map(Path, candidate_runs):
        meta = run_sidecar(run, name) or {}
        cfg = meta.get("config") or {}
        fold = cfg.get("cv_fold")
        want = plan["per_fold"].get(fold)
        got = [cfg.get("epochs"), cfg.get("augment_epochs")]
        if not cfg.get("refit") or want is None or got != want or meta.get("epochs_run") != {
            "plain": want[0], "augmented": want[1]
        }:
            raise ValueError(
                f"{run} is not fold {fold}'s refit run: expected --refit --epochs {want and want[0]} "
                f"--augment-epochs {want and want[1]} run in full, found refit={cfg.get('refit')} "
                f"epochs {got} run {meta.get('epochs_run')}."
            )


def compare(
    reference_runs: Sequence[str | os.PathLike],
    candidate_runs: Sequence[str | os.PathLike],
    *,
    name: str = "davidnet",
    expected_files=None,
    data_dir: str | None = None,
    reports_dir: str | os.PathLike | None = None,
    note: str | None = None,
) -> dict:
    """Check the candidate folds followed the schedule rule, then apply `RULE` (cv_refit.json)."""
    plan = schedules(reference_runs, name)
    check_candidates(candidate_runs, plan, name)
    plain, augmented = plan["all_of_train"]
    return weight_averaging.compare(
        reference_runs,
        candidate_runs,
        name=name,
        candidate="refit on a fixed schedule chosen by the other folds",
        candidate_flags="--refit --epochs P --augment-epochs A (per fold: schedule.per_fold)",
        expected_files=expected_files,
        data_dir=data_dir,
        reports_dir=reports_dir,
        note=note,
        report_file=config.CV_REFIT_FILE,
        extra={"schedule": plan, "refit_command": f"python train.py --model {name} --refit "
               f"--epochs {plain} --augment-epochs {augmented}"},
        per_image=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m covid_xray.studies.refit schedule|compare ...`."""
    from covid_xray.calibration import CalibrationError
    from covid_xray.data import DatasetNotFoundError

    parser = argparse.ArgumentParser(prog=config.REFIT_COMMAND, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schedule", help="the train.py epochs the reference folds choose")
    _options.add(s, "model", "reference")
    s.add_argument(
        "--fold", type=int, default=None, help="the schedule for this fold's refit run (else all of train)"
    )
    p = sub.add_parser("compare", help="paired out-of-fold comparison of the refit folds with the reference")
    _options.add(p, "model", "reference")
    p.add_argument("--candidate", nargs="+", required=True, help="the --refit fold runs")
    _options.add(p, "data_dir", "reports_dir", "note")
    args = parser.parse_args(argv)
    try:
        if args.command == "schedule":
            plan = schedules(args.reference, args.model)
            if args.fold is not None and args.fold not in plan["per_fold"]:
                raise ValueError(f"--fold must be one of {sorted(plan['per_fold'])}, got {args.fold}.")
            plain, augmented = plan["all_of_train"] if args.fold is None else plan["per_fold"][args.fold]
            print(f"--epochs {plain} --augment-epochs {augmented}")
            return 0
        report = compare(
            args.reference, args.candidate, name=args.model, data_dir=args.data_dir,
            reports_dir=args.reports_dir, note=args.note,
        )
    except (CalibrationError, DatasetNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"schedule: {SCHEDULE_RULE}\n{weight_averaging.summary(report, 'refit (fixed schedule)')}")
    print(f"the refit on all of train: {report['refit_command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
