"""Temperature fitted on out-of-fold predictions of the training recipe (issue #15, item 1).

The 50-image validation split the shipped model was selected on has no error, so no
temperature can be identified there. The 5-fold cross-validation of the same recipe
(`train.py --cv-folds 5 --cv-fold i`) predicts every one of the 251 train images once, with
a model that never saw it: fitting T on those out-of-fold (OOF) predictions and applying it
to the model trained on the whole recipe is the procedure of scikit-learn's
`CalibratedClassifierCV(ensemble=False)`. The test split is never used to fit; it only checks
whether T helps (NLL, ECE, reliability diagram, share of errors made with confidence >= 0.9).

Command line::

    python -m covid_xray.studies.oof_calibrate --model davidnet --runs runs/oof-fold0 ... runs/oof-fold4
    python -m covid_xray.studies.oof_calibrate apply --model davidnet

The first fits and checks T (nothing applied); `apply` then writes T into the shipped
checkpoint's sidecar ("calibration" entry, which the app and API apply) only when the report
says T lowers NLL and ECE on every test set, and refuses otherwise.

Each run folder holds the fold's `val_predictions.csv` (directly or under `logs/`) and the
fold model's JSON sidecar (`<model>.json`, directly or under `ckpt/`). Writes
`reports/<model>/calibration_oof.json` and `calibration_oof.png`. The maths (fit, ECE, NLL,
reliability diagram) is `covid_xray.calibration`'s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from covid_xray import config
from covid_xray.calibration import (
    SIDECAR_KEY,
    TEMPERATURE_BOUNDS,
    TEMPERATURE_DECIMALS,
    CalibrationError,
    apply_temperature,
    calibration_metrics,
    fit_temperature,
)
from covid_xray.config import CLASS_NAMES
from covid_xray.metrics import confident_errors
from covid_xray.report.files import read_predictions
from covid_xray.studies import _options
from covid_xray.studies.calibrate import plot_reliability

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPORT_FILE = config.OOF_CALIBRATION_FILE
APPLY_COMMAND = config.OOF_APPLY_COMMAND
IMAGE_FILE = config.OOF_RELIABILITY_FILE
OOF_COLUMNS = ("file", "true", "predicted", *(f"p_{c}" for c in CLASS_NAMES))
# Sidecar config keys that do not change the recipe (where files go, which fold, verbosity).
NON_RECIPE_KEYS = frozenset({"checkpoint_dir", "run_dir", "cv_folds", "cv_fold", "verbose", "data_dir"})
SET_TITLES = {"oof": "Out-of-fold train (fitted on)", **config.TEST_SUBSET_TITLES}


class OOFError(CalibrationError):
    """The fold runs do not make one out-of-fold prediction per train image (message for people)."""


class NotAppliedError(OOFError):
    """`apply` refuses: the OOF temperature does not help on every test set, or the report is stale."""


def _find(run: Path, name: str, below: str) -> Path | None:
    for candidate in (run / name, run / below / name):
        if candidate.is_file():
            return candidate
    return None


def run_sidecar(run: str | os.PathLike, name: str) -> dict | None:
    """A train.py run folder's checkpoint sidecar (`<name>.json`, in the run or its ckpt/), or None."""
    path = _find(Path(run), f"{name}.json", "ckpt")
    return json.loads(path.read_text()) if path else None


def read_oof_predictions(
    runs: Sequence[str | os.PathLike], expected_files: Iterable[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Concatenate the runs' val_predictions.csv and check they cover `expected_files` exactly once.

    Returns:
        files, probabilities (N, K) and labels (N,), sorted by file.

    Raises:
        OOFError: a run without val_predictions.csv, a malformed file, or an image missing,
            predicted twice, or not among `expected_files`.
    """
    rows: list[dict] = []
    for run in map(Path, runs):
        path = _find(run, "val_predictions.csv", "logs")
        if path is None:
            raise OOFError(
                f"No val_predictions.csv in {run} (nor in {run / 'logs'}): has this fold finished?"
            )
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != OOF_COLUMNS:
                raise OOFError(f"{path} is not a val_predictions.csv (columns {reader.fieldnames}).")
            rows += list(reader)
    expected = set(expected_files)
    counts = Counter(r["file"] for r in rows)
    twice = sorted(f for f, k in counts.items() if k > 1)
    missing = sorted(expected - set(counts))
    extra = sorted(set(counts) - expected)
    if twice or missing or extra:

        def show(items: list[str]) -> str:
            return f"{len(items)} ({', '.join(items[:3])}{' ...' if len(items) > 3 else ''})"

        problems = [
            f"{label} {show(items)}"
            for label, items in (
                ("predicted more than once", twice),
                ("missing", missing),
                ("not a train image", extra),
            )
            if items
        ]
        raise OOFError(
            f"The {len(list(runs))} runs' validation predictions are not out-of-fold predictions of the "
            f"{len(expected)} train images: {'; '.join(problems)}. Give every fold of one `--cv-folds` split, "
            "each once."
        )
    rows.sort(key=lambda r: r["file"])
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASS_NAMES] for r in rows], dtype=np.float64)
    labels = np.array([CLASS_NAMES.index(r["true"]) for r in rows], dtype=np.int64)
    return [r["file"] for r in rows], probs, labels


def set_scores(probs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """calibration.py's before/after ECE, NLL and mean confidence, plus the confident-error share."""
    scores = calibration_metrics(probs, labels, temperature)
    scores["before"].update(confident_errors(probs, labels))
    scores["after"].update(confident_errors(apply_temperature(probs, temperature), labels))
    return scores


def _versions(meta: dict) -> dict:
    return {k: v for k, v in meta.get("versions", {}).items() if k != "keras_backend"}


def fold_models(runs: Sequence[str | os.PathLike], name: str, shipped: dict) -> list[dict]:
    """Per fold run: fold, kept epoch, Keras backend, seed and how its recipe differs from the shipped one."""
    shipped_config = shipped.get("config", {})
    out = []
    for run in map(Path, runs):
        meta = run_sidecar(run, name)
        if meta is None:
            out.append({"run": run.name, "sidecar": None})
            continue
        cfg = meta.get("config", {})
        same_policy = meta.get("mixed_precision_policy") == shipped.get("mixed_precision_policy")
        differences = {}
        for key in sorted(set(cfg) | set(shipped_config)):
            fold_value, shipped_value = cfg.get(key), shipped_config.get(key)
            if key in NON_RECIPE_KEYS or fold_value == shipped_value:
                continue
            if key == "mixed_precision" and same_policy:
                continue  # e.g. "auto" and "off" both give float32 without a GPU
            entry = {"fold": fold_value, "shipped": shipped_value}
            if key not in shipped_config and not fold_value:
                entry["note"] = "option added after the shipped model was trained; the fold ran its off value"
            differences[key] = entry
        kept = meta.get("kept", {})
        out.append(
            {
                "run": run.name,
                "fold": cfg.get("cv_fold"),
                "folds": cfg.get("cv_folds"),
                "seed": cfg.get("seed"),
                "kept": f"{kept.get('phase')}:{kept.get('epoch')}",
                "keras_backend": meta.get("versions", {}).get("keras_backend") or "tensorflow",
                "mixed_precision_policy": meta.get("mixed_precision_policy"),
                "same_dataset_as_shipped": meta.get("dataset_manifest") == shipped.get("dataset_manifest"),
                "same_library_versions_as_shipped": _versions(meta) == _versions(shipped),
                "recipe_differences": differences,
            }
        )
    return out


def kaggle_test_sets(
    name: str, reports_dir: str | os.PathLike | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Official and leakage-free test (raw probabilities, labels) from reports/<model>/predictions.csv."""
    path = config.get_model_spec(name).report_dir(reports_dir) / config.PREDICTIONS_FILE
    rows = read_predictions(path)
    if rows is None:
        raise OOFError(
            f"No test predictions at {path}; run `{config.EVALUATE_COMMAND.format(name=name)}` first."
        )
    probs = np.array([[r.probabilities[c] for c in CLASS_NAMES] for r in rows], dtype=np.float64)
    labels = np.array([CLASS_NAMES.index(r.true) for r in rows], dtype=np.int64)
    clean = np.array([not r.leaked for r in rows])
    return {"official": (probs, labels), "leakage_free": (probs[clean], labels[clean])}


def oof_calibration(
    oof: tuple[np.ndarray, np.ndarray], tests: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict:
    """Fit T on the OOF (probabilities, labels) and score it there and on each test set.

    `helps` per test set: NLL and ECE both lower after scaling (the rule the report states).
    """
    probs, labels = oof
    temperature = round(fit_temperature(probs, labels), TEMPERATURE_DECIMALS)
    low, high = TEMPERATURE_BOUNDS
    sets = {"oof": set_scores(probs, labels, temperature)}
    for key, (p, y) in tests.items():
        sets[key] = set_scores(p, y, temperature)
        sets[key]["helps"] = bool(
            sets[key]["after"]["nll"] < sets[key]["before"]["nll"]
            and sets[key]["after"]["ece"] < sets[key]["before"]["ece"]
        )
    return {
        "temperature": temperature,
        "at_search_bound": bool(temperature <= low * 1.001 or temperature >= high / 1.001),
        "sets": sets,
        "helps_on_every_test_set": all(sets[k]["helps"] for k in tests),
    }


def run(
    name: str,
    runs: Sequence[str | os.PathLike],
    data_dir: str | None = None,
    reports_dir: str | os.PathLike | None = None,
    expected_files: Iterable[str] | None = None,
    note: str | None = None,
) -> dict:
    """Read the fold runs, fit and check T, write calibration_oof.json + .png; return the report.

    `note` (e.g. the fold commands and the machine they ran on) is stored as is."""
    from covid_xray.checkpoints import write_json

    spec = config.get_model_spec(name)
    if expected_files is None:
        from covid_xray.data import list_samples

        expected_files = [s.relpath for s in list_samples(data_dir, split="train")]
    files, probs, labels = read_oof_predictions(runs, expected_files)
    tests = kaggle_test_sets(name, reports_dir)
    report = oof_calibration((probs, labels), tests)
    sidecar = spec.checkpoint_path().with_suffix(".json")
    shipped = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    folds = fold_models(runs, name, shipped)
    backends = sorted({f.get("keras_backend") for f in folds if f.get("keras_backend")})
    report.update(
        {
            "model": name,
            "method": (
                "temperature scaling fitted on the out-of-fold predictions of the shipped recipe's k-fold "
                "cross-validation of train (CalibratedClassifierCV(ensemble=False) procedure); test never used to fit"
            ),
            "n_oof": len(files),
            "oof_errors": int(np.sum(probs.argmax(axis=1) != labels)),
            "fold_models": folds,
            "shipped_backend": shipped.get("versions", {}).get("keras_backend") or "tensorflow",
            "fold_backends": backends,
            "relation_to_shipped": (
                "The fold models are trained with the shipped recipe (same flags and seed; recipe_differences lists "
                "every config key that differs other than paths and the fold) on 4/5 of train, "
                "validated on the held-out fifth; the shipped model was trained on a random 80/20 split of train. "
                f"Fold models ran on Keras backend(s) {', '.join(backends) or 'unknown'}, the shipped one on "
                f"{shipped.get('versions', {}).get('keras_backend') or 'tensorflow'}. Test probabilities are the "
                "shipped model's raw outputs (predictions.csv)."
            ),
            "applied_to_shipped_checkpoint": is_applied(shipped, report["temperature"]),
            "note": note,
        }
    )
    out = spec.report_dir(reports_dir)
    write_json(out / REPORT_FILE, report)
    plot_reliability(
        {SET_TITLES["oof"]: (probs, labels), **{SET_TITLES[k]: v for k, v in tests.items()}},
        report["temperature"],
        out / IMAGE_FILE,
        title=f"{spec.display_name}: temperature T = {report['temperature']:g} fitted on out-of-fold predictions",
    )
    return report


def fitted_on(report: dict) -> str:
    """The sidecar's "fitted_on" of an OOF report, e.g. "out-of-fold (5-fold CV of the shipped recipe)"."""
    folds = {f.get("folds") for f in report.get("fold_models", [])} - {None}
    k = folds.pop() if len(folds) == 1 else len(report.get("fold_models", [])) or "k"
    return f"out-of-fold ({k}-fold CV of the shipped recipe)"


def is_applied(sidecar: dict, temperature: float) -> bool:
    """Whether `sidecar`'s calibration entry is this OOF temperature (what the app serves)."""
    entry = sidecar.get(SIDECAR_KEY) or {}
    return bool(
        str(entry.get("fitted_on", "")).startswith("out-of-fold") and entry.get("temperature") == temperature
    )


def sidecar_entry(report: dict) -> dict:
    """The sidecar's "calibration" entry for an OOF report: T, where and on how many fitted, OOF scores."""
    oof = report["sets"]["oof"]
    return {
        "temperature": report["temperature"],
        "fitted_on": fitted_on(report),
        "n": report["n_oof"],
        "oof_nll": {"before": oof["before"]["nll"], "after": oof["after"]["nll"]},
        "oof_ece": {"before": oof["before"]["ece"], "after": oof["after"]["ece"]},
        "report": f"reports/{report['model']}/{REPORT_FILE}",
    }


def apply(
    name: str,
    reports_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> dict:
    """Write the OOF temperature into the checkpoint's sidecar if the report says it helps on every test set.

    Also sets `applied_to_shipped_checkpoint` in the report. Returns the sidecar entry written.

    Raises:
        NotAppliedError: no report, a report for another model, T at the search bound, a test set on
            which T does not lower both NLL and ECE, or test predictions of another checkpoint.
        CheckpointError: no checkpoint.
    """
    from covid_xray.checkpoints import CheckpointError, read_metadata, sha256_file, sidecar_path, write_json

    spec = config.get_model_spec(name)
    path = spec.report_dir(reports_dir) / REPORT_FILE
    fit_command = config.OOF_CALIBRATION_COMMAND.format(name=name)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise NotAppliedError(
            f"No out-of-fold calibration report at {path}: fit one first with `{fit_command}`."
        ) from None
    if report.get("model") != name:
        raise NotAppliedError(f"{path} is the report of {report.get('model')!r}, not {name!r}.")
    tests = {k: v for k, v in report.get("sets", {}).items() if k != "oof"}
    if not report.get("helps_on_every_test_set") or report.get("at_search_bound") or not tests:
        failing = [
            f"{SET_TITLES.get(k, k).lower()} NLL {v['before']['nll']:.3f} -> {v['after']['nll']:.3f}, "
            f"ECE {v['before']['ece']:.3f} -> {v['after']['ece']:.3f}"
            for k, v in tests.items()
            if not v.get("helps")
        ]
        why = (
            f"it does not lower both NLL and ECE on every test set ({'; '.join(failing)})"
            if failing
            else "it lies at the search bound, or the report has no test set to check it on"
        )
        raise NotAppliedError(
            f"Not applied: the out-of-fold temperature T = {report.get('temperature')} in {path} would not "
            f"make {spec.display_name}'s confidence more truthful: {why}. The checkpoint's sidecar is left "
            f"as it was, so the app keeps serving {spec.display_name}'s current probabilities; refit with "
            f"`{fit_command}` after retraining or rerunning the folds."
        )
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    if not checkpoint.exists():
        raise CheckpointError(
            f"Checkpoint not found: {checkpoint}. Train it with `{config.TRAIN_INSTALL_COMMAND.format(name=name)}`."
        )
    metrics_path = spec.report_dir(reports_dir) / config.METRICS_FILE
    try:
        evaluated = json.loads(metrics_path.read_text(encoding="utf-8")).get("checkpoint_sha256")
    except (OSError, ValueError, AttributeError):
        evaluated = None
    current = sha256_file(checkpoint)
    if evaluated != current:
        raise NotAppliedError(
            f"Not applied: the test check in {path} used the predictions of the checkpoint evaluated in "
            f"{metrics_path} (sha256 {str(evaluated)[:12]}...), not {checkpoint} ({current[:12]}...). Rerun "
            f"`{config.EVALUATE_COMMAND.format(name=name)}` and `{fit_command}`, then apply."
        )
    entry = sidecar_entry(report)
    metadata = dict(read_metadata(checkpoint))
    metadata[SIDECAR_KEY] = entry
    write_json(sidecar_path(checkpoint), metadata)
    report["applied_to_shipped_checkpoint"] = True
    write_json(path, report)
    return entry


def apply_main(argv: Sequence[str]) -> int:
    """`python -m covid_xray.studies.oof_calibrate apply --model M`."""
    from covid_xray.checkpoints import CheckpointError

    parser = argparse.ArgumentParser(
        prog=f"{config.STUDIES}.oof_calibrate apply",
        description="Write the out-of-fold temperature into the checkpoint's sidecar when it helps on "
        "every test set.",
    )
    _options.add(parser, "model", "reports_dir", "checkpoint_dir")
    args = parser.parse_args(argv)
    try:
        entry = apply(args.model, args.reports_dir, args.checkpoint_dir)
    except (CalibrationError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.model}: T = {entry['temperature']:g} ({entry['fitted_on']}, n={entry['n']}) written to the "
        f"checkpoint sidecar's '{SIDECAR_KEY}' entry; the app and API now serve calibrated probabilities"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["apply"]:
        return apply_main(argv[1:])
    parser = argparse.ArgumentParser(prog=f"{config.STUDIES}.oof_calibrate", description=__doc__.split("\n\n")[0])
    _options.add(parser, "model")
    parser.add_argument("--runs", nargs="+", required=True, help="the k fold run folders")
    _options.add(parser, "data_dir", "reports_dir", "note")
    args = parser.parse_args(argv)
    from covid_xray.data import DatasetNotFoundError

    try:
        report = run(args.model, args.runs, args.data_dir, args.reports_dir, note=args.note)
    except (CalibrationError, DatasetNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"T = {report['temperature']:g} fitted on {report['n_oof']} OOF predictions ({report['oof_errors']} errors)"
    )
    for key, s in report["sets"].items():
        b, a = s["before"], s["after"]
        print(
            f"{key:13s} n={s['n']:3d} NLL {b['nll']:.4f} -> {a['nll']:.4f}  ECE {b['ece']:.4f} -> {a['ece']:.4f}  "
            f"errors with confidence >= {b['threshold']}: {b['confident_errors']}/{b['errors']} -> "
            f"{a['confident_errors']}/{a['errors']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
