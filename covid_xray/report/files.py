"""Every reader of the files the studies write (`covid_xray.studies`): `reports/audit.json`,
`reports/<model>/{predictions.csv, metrics.json, history.csv, cv_sweep.json, calibration*.json,
faithfulness.json, shortcuts.json, *.png}` and the labelled folders' `reports/<model>/<NAME>/`
(formats in docs/ARCHITECTURE.md).

One reader per format (CSV rows, JSON, PNG), each cached per (path, mtime): the tabs cost nothing
after the first look, and a rewritten file is read again. A missing file reads as None (the app
says what is missing); a malformed predictions.csv raises `ReportError`.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS

logger = logging.getLogger(__name__)

# The Kaggle test split's key in `evaluated_sets`; a labelled folder's NAME may not take it.
KAGGLE_SET_KEY = "test"
KAGGLE_SET_TITLE = "Kaggle test split (official and leakage-free)"


class ReportError(ValueError):
    """A committed report or example file is malformed; the message names the file and the problem."""


def stamp(path: Path) -> int | None:
    """Modification time of a file (part of every cache key), or None when it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def model_file(name: str, filename: str, reports_dir: str | os.PathLike | None = None) -> Path:
    """`reports/<model>/<filename>` (the model's report folder: `ModelSpec.report_dir`)."""
    return config.get_model_spec(name).report_dir(reports_dir) / filename


def existing_model_file(
    name: str, filename: str, reports_dir: str | os.PathLike | None = None
) -> Path | None:
    """`model_file` when it exists, else None."""
    path = model_file(name, filename, reports_dir)
    return path if path.is_file() else None


# ---------------------------------------------------------------------------
# predictions.csv: the one reader (the app, the studies and the tests read through it).
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionRow:
    """One test image's line in `reports/<model>/predictions.csv`."""

    file: str
    true: str
    predicted: str
    confidence: float
    probabilities: dict[str, float] = field(hash=False)
    leaked: bool
    # A labelled folder's `group` column (`evaluate --data-dir --groups`); "" elsewhere.
    group: str = ""

    @property
    def correct(self) -> bool:
        return self.true == self.predicted

    def caption(self) -> str:
        """`true > predicted (confidence)`, with the UI's class names."""
        true, predicted = CLASS_DISPLAY_NAMES[self.true], CLASS_DISPLAY_NAMES[self.predicted]
        return f"{true} > {predicted} ({self.confidence:.1%})"


@functools.lru_cache(maxsize=16)
def _read_predictions(path: str, stamp: int | None) -> tuple[PredictionRow, ...] | None:
    if stamp is None:
        return None
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append(
                    PredictionRow(
                        file=row["file"],
                        true=row["true"],
                        predicted=row["predicted"],
                        confidence=float(row["confidence"]),
                        probabilities={c: float(row[f"p_{c}"]) for c in CLASS_NAMES},
                        leaked=str(row.get("leaked", "0")).strip() in ("1", "True", "true"),
                        group=str(row.get("group") or ""),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ReportError(f"{path}:{line}: not in the predictions.csv format ({exc}).") from exc
            if rows[-1].true not in CLASS_NAMES or rows[-1].predicted not in CLASS_NAMES:
                raise ReportError(f"{path}:{line}: unknown class in {row['true']!r} / {row['predicted']!r}.")
    return tuple(rows)


def read_predictions(path: str | os.PathLike) -> tuple[PredictionRow, ...] | None:
    """The rows of a predictions.csv file (cached per mtime), or None when it does not exist.

    Raises:
        ReportError: a row without the documented columns, or with an unknown class.
    """
    return _read_predictions(str(path), stamp(Path(path)))


def load_predictions(
    name: str, reports_dir: str | os.PathLike | None = None
) -> tuple[PredictionRow, ...] | None:
    """A model's test predictions, or None when it has not been evaluated."""
    return read_predictions(model_file(name, config.PREDICTIONS_FILE, reports_dir))


# ---------------------------------------------------------------------------
# JSON reports, PNG figures, history.csv.
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _read_json(path: str, stamp: int | None) -> dict | None:
    if stamp is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("Cannot read %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object from a file (cached per mtime), or None when missing, unreadable or not an object."""
    return _read_json(str(path), stamp(Path(path)))


def read_report_json(name: str, filename: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/<filename>` as a JSON object, or None (see `read_json`)."""
    return read_json(model_file(name, filename, reports_dir))


def load_metrics(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/metrics.json`, or None when missing or unreadable."""
    return read_report_json(name, config.METRICS_FILE, reports_dir)


def load_cv_sweep(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/cv_sweep.json` (`scripts/sweep.py --folds` summary), or None."""
    return read_report_json(name, config.CV_SWEEP_FILE, reports_dir)


def leaked_test_files(reports_dir: str | os.PathLike | None = None) -> frozenset[str] | None:
    """Test files with an exact or near copy in train as the evaluation recorded them (the `leaked`
    column of any model's predictions.csv, written from `covid_xray.audit.leaked_test_files`), or
    None when no model has been evaluated."""
    for name in MODELS:
        rows = load_predictions(name, reports_dir)
        if rows is not None:
            return frozenset(r.file for r in rows if r.leaked)
    return None


def load_audit(reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/audit.json` (written by `python -m covid_xray.studies.data audit`), or None."""
    return read_json(config.resolve_reports_dir(reports_dir) / config.AUDIT_FILE)


@functools.lru_cache(maxsize=16)
def _read_png(path: str, stamp: int | None) -> np.ndarray | None:
    if stamp is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except OSError as exc:
        logger.warning("Cannot read %s: %s", path, exc)
        return None
    array.setflags(write=False)
    return array


def load_png(path: Path | None) -> np.ndarray | None:
    """A report figure as a read-only uint8 RGB array (cached), or None when it is missing."""
    return None if path is None else _read_png(str(path), stamp(path))


def load_confusion_image(
    name: str, subset: str = "official", reports_dir: str | os.PathLike | None = None
) -> np.ndarray | None:
    """The confusion-matrix PNG written by evaluation, as a uint8 RGB array (None if missing)."""
    return load_png(model_file(name, config.CONFUSION_FILE.format(subset=subset), reports_dir))


@functools.lru_cache(maxsize=16)
def _read_history(path: str, stamp: int | None) -> tuple[dict[str, Any], ...] | None:
    if stamp is None:
        return None
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if key is None:
                    continue
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    parsed[key] = value
            rows.append(parsed)
    return tuple(rows)


def read_history(path: str | os.PathLike) -> tuple[dict[str, Any], ...] | None:
    """A training-curves CSV (`epoch,loss,accuracy,val_loss,val_accuracy,lr[,phase]`), or None."""
    return _read_history(str(path), stamp(Path(path)))


def load_history(
    name: str, reports_dir: str | os.PathLike | None = None
) -> tuple[dict[str, Any], ...] | None:
    """A model's training curves (`read_history` of reports/<model>/history.csv), or None."""
    return read_history(model_file(name, config.HISTORY_FILE, reports_dir))


def evaluated_sets(name: str, reports_dir: str | os.PathLike | None = None) -> list[tuple[str, str, Path]]:
    """(key, title, folder) of every evaluated set of a model: the Kaggle test split first (key
    `KAGGLE_SET_KEY`, folder `reports/<model>/`), then each labelled folder by name. Each folder
    holds metrics.json, predictions.csv and confusion PNGs; sets without a readable metrics.json
    are left out."""
    base = config.get_model_spec(name).report_dir(reports_dir)
    sets: list[tuple[str, str, Path]] = []
    if (base / config.METRICS_FILE).is_file():
        sets.append((KAGGLE_SET_KEY, KAGGLE_SET_TITLE, base))
    if base.is_dir():
        for sub in sorted(p for p in base.iterdir() if p.is_dir()):
            metrics = read_json(sub / config.METRICS_FILE)
            if isinstance(metrics, dict) and metrics.get("kind") == "labelled_folder":
                n = metrics.get("subsets", {}).get("all", {}).get("n")
                sets.append((sub.name, f"{sub.name} (labelled folder, n={n})", sub))
    return sets
