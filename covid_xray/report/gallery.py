"""The curated examples and the error gallery: test images as thumbnails (arrays, never a dataset
path), the cases a filter selects and the line above them."""

from __future__ import annotations

import csv
import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covid_xray import config, imaging
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS
from covid_xray.report.files import (
    KAGGLE_SET_KEY,
    KAGGLE_SET_TITLE,
    PredictionRow,
    ReportError,
    evaluated_sets,
    load_predictions,
    read_json,
    read_predictions,
    stamp,
)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------


THUMBNAIL_SIDE = 256


# Test subsets of the error gallery (the `leaked` column of predictions.csv).
SUBSETS: dict[str, str] = {
    "official": f"{config.TEST_SUBSET_TITLES['official']} (all images)",
    "leakage_free": f"{config.TEST_SUBSET_TITLES['leakage_free']} (no duplicate in train)",
}


# What the error gallery lists.
GALLERY_MODES: dict[str, str] = {
    "misclassified": "Misclassified by this model",
    "both_wrong": "Both models wrong",
    "disagree": "Models disagree",
}


def data_available(data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the dataset root (argument, $COVID_XRAY_DATA or the download folder) has its test split."""
    return (config.resolve_data_dir(data_dir) / "test").is_dir()


def missing_data_message(data_dir: str | os.PathLike | None = None) -> str:
    """One line for visitors: the test images are not on this server (no paths, no commands;
    `covid_xray.runtime.AppRuntime.dataset_detail` has the operator's part)."""
    del data_dir  # the same sentence wherever the app looked
    return (
        "The test images are not available on this server, so examples, the gallery and the quiz "
        "are empty. Uploads still work."
    )


def resolve_dataset_file(relpath: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Absolute path of a dataset-relative file (`test/Covid/0100.jpeg`), kept inside the data root.

    Raises:
        ReportError: the path would leave the data root (absolute path or `..`).
    """
    root = config.resolve_data_dir(data_dir)
    path = (root / relpath).resolve()
    if not path.is_relative_to(root):
        raise ReportError(f"Dataset path {relpath!r} points outside the data root {root}.")
    return path


@functools.lru_cache(maxsize=512)
def _thumbnail(path: str, stamp: int | None, side: int) -> np.ndarray:
    from covid_xray.inference import display_image

    image = display_image(imaging.load_image(path, draft_size=side), side)
    image.setflags(write=False)  # shared by every caller through the cache
    return image


def load_thumbnail(
    relpath: str, data_dir: str | os.PathLike | None = None, side: int = THUMBNAIL_SIDE
) -> np.ndarray:
    """A dataset image as a uint8 RGB array with its longer side at most `side` (cached)."""
    path = resolve_dataset_file(relpath, data_dir)
    return _thumbnail(str(path), stamp(path), side)


@dataclass(frozen=True)
class Example:
    """One curated example: a dataset-relative file, its true class and a teaching note."""

    file: str
    label: str
    note: str

    def title(self, index: int) -> str:
        """Neutral caption (the label is only revealed after the prediction)."""
        return f"Case {index + 1}"

    def answer_markdown(self) -> str:
        return f"**True label: {CLASS_DISPLAY_NAMES[self.label]}** (`{self.file}`)  \n{self.note}"


@functools.lru_cache(maxsize=8)
def _read_examples(path: str, stamp: int | None) -> tuple[Example, ...]:
    if stamp is None:
        return ()
    examples = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label", "note"} - set(reader.fieldnames or ())
        if missing:
            raise ReportError(f"{path}: missing columns {sorted(missing)}; expected file,label,note.")
        for line, row in enumerate(reader, start=2):
            if row["label"] not in CLASS_NAMES:
                raise ReportError(f"{path}:{line}: label {row['label']!r} is not one of {CLASS_NAMES}.")
            examples.append(Example(row["file"].strip(), row["label"], row["note"].strip()))
    return tuple(examples)


def load_examples(examples_file: str | os.PathLike | None = None) -> tuple[Example, ...]:
    """The curated examples (empty when the file is absent).

    Raises:
        ReportError: a column is missing or a label is not a class name.
    """
    path = Path(examples_file or config.EXAMPLES_FILE)
    return _read_examples(str(path), stamp(path))


def example_gallery(
    examples: tuple[Example, ...], data_dir: str | os.PathLike | None = None
) -> list[tuple[np.ndarray, str]]:
    """(thumbnail, caption) for every example whose image exists under the data root."""
    items = []
    for index, example in enumerate(examples):
        try:
            items.append((load_thumbnail(example.file, data_dir), example.title(index)))
        except (OSError, imaging.ImageDecodeError, ReportError) as exc:
            logger.warning("Example %s unavailable: %s", example.file, exc)
    return items


@dataclass(frozen=True)
class GalleryCase:
    """One test image in the error gallery, with every evaluated model's prediction."""

    file: str
    true: str
    leaked: bool
    by_model: dict[str, PredictionRow] = field(hash=False)
    # The folder `file` is relative to: "" for the Kaggle dataset (`config.resolve_data_dir`), else
    # the labelled folder an evaluation recorded (`evaluate --data-dir DIR --name NAME`).
    root: str = ""
    set_name: str = ""
    group: str = ""

    def caption(self, name: str) -> str:
        return self.by_model[name].caption()

    def path(self, data_dir: str | os.PathLike | None = None) -> Path:
        """The image on disk, kept inside its root (`ReportError` otherwise)."""
        return resolve_dataset_file(self.file, self.root or data_dir)

    def details_markdown(self) -> str:
        """File, truth, subset (or the labelled folder's group) and every model's evaluation."""
        if self.set_name:
            subset = f"your films: {self.set_name}" + (f", group {self.group}" if self.group else "")
        else:
            subset = "leaked: a copy is in train" if self.leaked else "leakage-free"
        lines = [f"**{self.file}**: true label **{CLASS_DISPLAY_NAMES[self.true]}** ({subset})"]
        for name, row in self.by_model.items():
            verdict = "correct" if row.correct else "wrong"
            lines.append(
                f"- {MODELS[name].display_name} (committed evaluation): "
                f"{CLASS_DISPLAY_NAMES[row.predicted]} ({row.confidence:.1%}), {verdict}"
            )
        return "\n".join(lines)


def find_cases(
    name: str,
    *,
    true_class: str | None = None,
    predicted_class: str | None = None,
    subset: str = "official",
    mode: str = "misclassified",
    reports_dir: str | os.PathLike | None = None,
    film_set: str = KAGGLE_SET_KEY,
) -> list[GalleryCase]:
    """Test images for the error gallery, filtered as the user asked.

    Args:
        name: the model whose predictions are filtered and captioned.
        true_class, predicted_class: a class name, or None for any.
        subset: "official" (every test image) or "leakage_free" (images without a train duplicate;
            the Kaggle split only: a labelled folder was not audited against train).
        mode: "misclassified" (wrong for `name`), "both_wrong" (wrong for every evaluated model)
            or "disagree" (the evaluated models predict different classes).
        film_set: `KAGGLE_SET_KEY`, or the NAME of a labelled folder (`film_sets`).

    Returns:
        Cases in predictions.csv order; empty when `name` has no predictions for the set.
    """
    if subset not in SUBSETS:
        raise ValueError(f"Unknown subset {subset!r}; expected one of {sorted(SUBSETS)}.")
    if mode not in GALLERY_MODES:
        raise ValueError(f"Unknown gallery mode {mode!r}; expected one of {sorted(GALLERY_MODES)}.")
    tables = {m: set_predictions(m, film_set, reports_dir) for m in MODELS}
    if tables.get(name) is None:
        return []
    kaggle = film_set == KAGGLE_SET_KEY
    root = "" if kaggle else str(set_root(film_set, reports_dir) or "")
    by_file = {m: {row.file: row for row in rows} for m, rows in tables.items() if rows is not None}
    cases = []
    for row in tables[name]:
        if true_class and row.true != true_class:
            continue
        if predicted_class and row.predicted != predicted_class:
            continue
        if kaggle and subset == "leakage_free" and row.leaked:
            continue
        others = {m: rows[row.file] for m, rows in by_file.items() if row.file in rows}
        if mode == "misclassified" and row.correct:
            continue
        if mode == "both_wrong" and (len(others) < 2 or any(r.correct for r in others.values())):
            continue
        if mode == "disagree" and len({r.predicted for r in others.values()}) < 2:
            continue
        cases.append(
            GalleryCase(
                row.file,
                row.true,
                row.leaked,
                others,
                root=root,
                set_name="" if kaggle else film_set,
                group=row.group,
            )
        )
    return cases


# ---------------------------------------------------------------------------
# Film sets: the Kaggle test split and every labelled folder a model was evaluated on.
# ---------------------------------------------------------------------------
def film_sets(reports_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(key, title) of every set the gallery can show: the Kaggle test split first, then each
    labelled folder any model was evaluated on (`evaluate --data-dir DIR --name NAME`)."""
    sets = {KAGGLE_SET_KEY: KAGGLE_SET_TITLE}
    for name in MODELS:
        for key, _title, folder in evaluated_sets(name, reports_dir):
            if key != KAGGLE_SET_KEY and key not in sets:
                metrics = read_json(folder / config.METRICS_FILE) or {}
                n = metrics.get("subsets", {}).get("all", {}).get("n")
                sets[key] = f"Your films: {key}" + (f" ({n} images)" if n else "")
    return list(sets.items())


def _set_folder(name: str, film_set: str, reports_dir) -> Path:
    return MODELS[name].report_dir(reports_dir) / film_set


def set_predictions(name: str, film_set: str, reports_dir: str | os.PathLike | None = None):
    """A model's predictions on a set (`load_predictions` for the Kaggle split), or None."""
    if film_set == KAGGLE_SET_KEY:
        return load_predictions(name, reports_dir)
    return read_predictions(_set_folder(name, film_set, reports_dir) / config.PREDICTIONS_FILE)


def set_root(film_set: str, reports_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder a labelled set's images are in (its metrics.json's `data_dir`), or None."""
    for name in MODELS:
        recorded = (read_json(_set_folder(name, film_set, reports_dir) / config.METRICS_FILE) or {}).get(
            "data_dir"
        )
        if recorded:
            return Path(recorded)
    return None


def gallery_items(
    cases: list[GalleryCase], name: str, data_dir: str | os.PathLike | None = None
) -> tuple[list[tuple[np.ndarray, str]], list[GalleryCase]]:
    """Thumbnails for the gallery and the cases they show, in the same order.

    Returns:
        ``(items, shown)``: (thumbnail, `true > predicted (confidence)`) per case whose image is
        readable under the data root, and those cases (a gallery selection index maps onto it).
    """
    items, shown = [], []
    for case in cases:
        try:
            items.append((load_thumbnail(case.file, case.root or data_dir), case.caption(name)))
        except (OSError, imaging.ImageDecodeError, ReportError) as exc:
            logger.warning("Gallery image %s unavailable: %s", case.file, exc)
            continue
        shown.append(case)
    return items, shown


def gallery_status(
    cases: list[GalleryCase],
    name: str,
    shown: int,
    mode: str = "misclassified",
    data_dir: str | os.PathLike | None = None,
    reports_dir: str | os.PathLike | None = None,
    film_set: str = KAGGLE_SET_KEY,
) -> str:
    """One line for people above the gallery: how many cases, or what is missing."""
    display = MODELS[name].display_name
    kaggle = film_set == KAGGLE_SET_KEY
    if set_predictions(name, film_set, reports_dir) is None:
        where = "on this server yet" if kaggle else f"on {film_set}"
        return f"{display} has not been evaluated {where}, so it has no errors to show."
    evaluated = [m for m in MODELS if set_predictions(m, film_set, reports_dir) is not None]
    if mode != "misclassified" and len(evaluated) < 2:
        missing = " and ".join(MODELS[m].display_name for m in MODELS if m not in evaluated)
        return (
            f"Comparing the models needs both evaluations; {missing} has not been evaluated on this "
            "server yet."
        )
    if kaggle and not data_available(data_dir):  # a count of images nobody can see is noise
        return missing_data_message(data_dir)
    what = "test image" if kaggle else "film"
    text = f"{len(cases)} {what}{'s' if len(cases) != 1 else ''} match."
    if shown < len(cases):
        source = "the dataset" if kaggle else f"the folder {film_set} was evaluated from"
        text += f" {len(cases) - shown} could not be read from {source}."
    return text
