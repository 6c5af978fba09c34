"""Read the committed evaluation outputs and curated examples for the app's tabs.

Everything the app shows besides live predictions comes from files: `examples/examples.csv`,
`reports/<model>/{predictions.csv, metrics.json, history.csv, confusion_*.png}` and
`reports/audit.json` (formats in docs/ARCHITECTURE.md). Each reader tolerates a missing file
(returns None and the app says what to run) and caches its parse per (path, mtime), so the
tabs cost nothing after the first look. Dataset images are resolved against the data root and
returned as arrays: the app never serves a path inside the dataset.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config, imaging
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
THUMBNAIL_SIDE = 256
EVALUATE_COMMAND = config.EVALUATE_COMMAND
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
SUBSET_TITLES = config.TEST_SUBSET_TITLES
CONFOUNDS_MARKDOWN = (
    "**Known confounds of this dataset.** The Normal and Viral Pneumonia images are pediatric "
    "(Kermany et al.) while most COVID-19 images are adults from other hospitals, so a model can "
    "separate the classes by age, body size, markers or scanner instead of by disease. About a "
    'quarter of the "Viral Pneumonia" images are bacterial pneumonia at their source and several '
    "test images duplicate training images, which inflates the official test accuracy."
)


class ReportError(ValueError):
    """A committed report or example file is malformed; the message names the file and the problem."""


def _stamp(path: Path) -> int | None:
    """Modification time of a file (part of every cache key), or None when it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Dataset access.
# ---------------------------------------------------------------------------
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
    return _thumbnail(str(path), _stamp(path), side)


# ---------------------------------------------------------------------------
# Curated examples.
# ---------------------------------------------------------------------------
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
    return _read_examples(str(path), _stamp(path))


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


# ---------------------------------------------------------------------------
# predictions.csv
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
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ReportError(f"{path}:{line}: not in the predictions.csv format ({exc}).") from exc
            if rows[-1].true not in CLASS_NAMES or rows[-1].predicted not in CLASS_NAMES:
                raise ReportError(f"{path}:{line}: unknown class in {row['true']!r} / {row['predicted']!r}.")
    return tuple(rows)


def load_predictions(
    name: str, reports_dir: str | os.PathLike | None = None
) -> tuple[PredictionRow, ...] | None:
    """A model's committed test predictions, or None when it has not been evaluated."""
    path = MODELS[name].report_dir(reports_dir) / "predictions.csv"
    return _read_predictions(str(path), _stamp(path))


@dataclass(frozen=True)
class GalleryCase:
    """One test image in the error gallery, with every evaluated model's prediction."""

    file: str
    true: str
    leaked: bool
    by_model: dict[str, PredictionRow] = field(hash=False)

    def caption(self, name: str) -> str:
        return self.by_model[name].caption()

    def details_markdown(self) -> str:
        """File, truth, subset and the committed prediction of every model."""
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
) -> list[GalleryCase]:
    """Test images for the error gallery, filtered as the user asked.

    Args:
        name: the model whose predictions are filtered and captioned.
        true_class, predicted_class: a class name, or None for any.
        subset: "official" (every test image) or "leakage_free" (images without a train duplicate).
        mode: "misclassified" (wrong for `name`), "both_wrong" (wrong for every evaluated model)
            or "disagree" (the evaluated models predict different classes).

    Returns:
        Cases in predictions.csv order; empty when `name` has no predictions.csv.
    """
    if subset not in SUBSETS:
        raise ValueError(f"Unknown subset {subset!r}; expected one of {sorted(SUBSETS)}.")
    if mode not in GALLERY_MODES:
        raise ValueError(f"Unknown gallery mode {mode!r}; expected one of {sorted(GALLERY_MODES)}.")
    tables = {m: load_predictions(m, reports_dir) for m in MODELS}
    if tables.get(name) is None:
        return []
    by_file = {m: {row.file: row for row in rows} for m, rows in tables.items() if rows is not None}
    cases = []
    for row in tables[name]:
        if true_class and row.true != true_class:
            continue
        if predicted_class and row.predicted != predicted_class:
            continue
        if subset == "leakage_free" and row.leaked:
            continue
        others = {m: rows[row.file] for m, rows in by_file.items() if row.file in rows}
        if mode == "misclassified" and row.correct:
            continue
        if mode == "both_wrong" and (len(others) < 2 or any(r.correct for r in others.values())):
            continue
        if mode == "disagree" and len({r.predicted for r in others.values()}) < 2:
            continue
        cases.append(GalleryCase(row.file, row.true, row.leaked, others))
    return cases


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
            items.append((load_thumbnail(case.file, data_dir), case.caption(name)))
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
) -> str:
    """One line for people above the gallery: how many cases, or what is missing."""
    display = MODELS[name].display_name
    if load_predictions(name, reports_dir) is None:
        return f"{display} has not been evaluated on this server yet, so it has no errors to show."
    evaluated = [m for m in MODELS if load_predictions(m, reports_dir) is not None]
    if mode != "misclassified" and len(evaluated) < 2:
        missing = " and ".join(MODELS[m].display_name for m in MODELS if m not in evaluated)
        return (
            f"Comparing the models needs both evaluations; {missing} has not been evaluated on this "
            "server yet."
        )
    if not data_available(data_dir):  # a count of images nobody can see is noise
        return missing_data_message(data_dir)
    text = f"{len(cases)} test image{'s' if len(cases) != 1 else ''} match."
    if shown < len(cases):
        text += f" {len(cases) - shown} could not be read from the dataset."
    return text


# ---------------------------------------------------------------------------
# metrics.json, confusion PNGs, history.csv, audit.json
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _read_json(path: str, stamp: int | None) -> dict | None:
    if stamp is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("Cannot read %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def load_metrics(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/metrics.json`, or None when missing or unreadable."""
    path = MODELS[name].report_dir(reports_dir) / "metrics.json"
    return _read_json(str(path), _stamp(path))


def load_cv_sweep(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/cv_sweep.json` (`scripts/sweep.py --folds` summary), or None."""
    path = MODELS[name].report_dir(reports_dir) / "cv_sweep.json"
    return _read_json(str(path), _stamp(path))


def cv_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """One paragraph: the training recipe's out-of-fold accuracy on train beside its test accuracy.

    Empty when there is no cross-validation summary (or it is unreadable).
    """
    sweep = load_cv_sweep(name, reports_dir) or {}
    entry = (sweep.get("configurations") or {}).get(sweep.get("reference"))
    metrics = load_metrics(name, reports_dir) or {}
    official = (metrics.get("subsets") or {}).get("official") or {}
    try:
        runs = list(entry["seeds"].values())
        n = runs[0]["n"]
        oof = float(entry["oof_accuracy_mean"])
        oof_recall = {c: sum(r["recall"][c] for r in runs) / len(runs) for c in CLASS_NAMES}
    except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError):
        return ""
    text = (
        f"**Cross-validation.** The shipped training recipe, cross-validated on the train folder "
        f"({sweep.get('folds')} folds, out-of-fold predictions of {n} images, {len(runs)} seed(s)): "
        f"accuracy {_fmt(oof, True)}"
    )
    test_recall = {c: ((official.get("per_class") or {}).get(c) or {}).get("recall") for c in CLASS_NAMES}
    if isinstance(official.get("accuracy"), (int, float)):
        text += f" against {_fmt(official['accuracy'], True)} on the official test"
    text += ". Recall, cross-validation vs test: " + ", ".join(
        f"{CLASS_DISPLAY_NAMES[c]} {_fmt(oof_recall[c])} vs {_fmt(test_recall[c])}" for c in CLASS_NAMES
    )
    text += "."
    if isinstance(official.get("n"), int) and official["n"] > 0:
        text += (
            f" One test image is {100 / official['n']:.1f} points of accuracy; a gap much larger than that "
            "suggests the test images differ from the train images."
        )
    return text


def leaked_test_files(reports_dir: str | os.PathLike | None = None) -> frozenset[str] | None:
    """Test files with an exact or near copy in train, as the evaluation recorded them (the
    `leaked` column of any model's predictions.csv, written from the audit), or None when no model
    has been evaluated."""
    for name in MODELS:
        rows = load_predictions(name, reports_dir)
        if rows is not None:
            return frozenset(r.file for r in rows if r.leaked)
    return None


def load_audit(reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/audit.json` (written by `python -m covid_xray.data audit`), or None."""
    path = config.resolve_reports_dir(reports_dir) / "audit.json"
    return _read_json(str(path), _stamp(path))


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
    return None if path is None else _read_png(str(path), _stamp(path))


def load_confusion_image(
    name: str, subset: str = "official", reports_dir: str | os.PathLike | None = None
) -> np.ndarray | None:
    """The confusion-matrix PNG written by evaluation, as a uint8 RGB array (None if missing)."""
    path = MODELS[name].report_dir(reports_dir) / f"confusion_{subset}.png"
    return _read_png(str(path), _stamp(path))


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


def load_history(
    name: str, reports_dir: str | os.PathLike | None = None
) -> tuple[dict[str, Any], ...] | None:
    """Training curves (`epoch,loss,accuracy,val_loss,val_accuracy,lr[,phase]`), or None."""
    path = MODELS[name].report_dir(reports_dir) / "history.csv"
    return _read_history(str(path), _stamp(path))


def plot_history(name: str, reports_dir: str | os.PathLike | None = None):
    """Loss and accuracy curves (train and validation) as a matplotlib Figure, or None.

    Rows are plotted in file order (epochs of successive phases follow each other); a dotted
    line marks each phase change (e.g. initial training, then augmentation).
    """
    history = load_history(name, reports_dir)
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps = np.arange(1, len(history) + 1)
    fig = Figure(figsize=(8, 3.2), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        for key, label, style in ((metric, "train", "-"), (f"val_{metric}", "validation", "--")):
            values = [row.get(key) for row in history]
            if all(isinstance(v, float) and math.isfinite(v) for v in values):
                ax.plot(steps, values, style, marker=".", label=label)
        phases = [row.get("phase") for row in history]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle=":", linewidth=1)
                ax.text(
                    i + 0.6, 0.98, str(phases[i]), transform=ax.get_xaxis_transform(), va="top", fontsize=8
                )
        ax.set_title(f"{MODELS[name].display_name}: {title}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _fmt(value: Any, percent: bool = False) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.1%}" if percent else f"{value:.2f}"


def metrics_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """Accuracy and per-class precision/recall/F1 on both test subsets, beside the paper's accuracy."""
    spec = MODELS[name]
    metrics = load_metrics(name, reports_dir)
    if metrics is None:
        return (
            f"### {spec.display_name}\n\n{spec.display_name} has not been evaluated on this server yet. "
            f"The paper reports {spec.paper_accuracy:.0%} accuracy on the official test set."
        )
    subsets = {
        k: v for k, v in (metrics.get("subsets") or {}).items() if k in SUBSET_TITLES and isinstance(v, dict)
    }
    header = "| | Paper (reported) | " + " | ".join(
        f"{SUBSET_TITLES[k]} (n={subsets[k].get('n', '?')})" for k in subsets
    )
    lines = [
        f"### {spec.display_name}",
        "",
        header + " |",
        "|---|---|" + "---|" * len(subsets),
        f"| Accuracy | {spec.paper_accuracy:.1%} | "
        + " | ".join(_fmt(s.get("accuracy"), True) for s in subsets.values())
        + " |",
        "| Macro F1 | n/a | " + " | ".join(_fmt(s.get("macro_f1")) for s in subsets.values()) + " |",
        "| Weighted F1 | n/a | " + " | ".join(_fmt(s.get("weighted_f1")) for s in subsets.values()) + " |",
        "",
        "| Class | "
        + " | ".join(f"{SUBSET_TITLES[k]}: precision / recall / F1 (support)" for k in subsets)
        + " |",
        "|---|" + "---|" * len(subsets),
    ]
    for cls in CLASS_NAMES:
        cells = []
        for sub in subsets.values():
            pc = (sub.get("per_class") or {}).get(cls) or {}
            scores = " / ".join(_fmt(pc.get(key)) for key in ("precision", "recall", "f1"))
            cells.append(f"{scores} ({pc.get('support', '?')})")
        lines.append(f"| {CLASS_DISPLAY_NAMES[cls]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The paper selected its models on the test split, so its figure is optimistic; the "
        "leakage-free column drops test images that have a copy in train.",
    ]
    cv = cv_markdown(name, reports_dir)
    if cv:
        lines += ["", cv]
    return "\n".join(lines)


def external_sets_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """Every labelled folder a model was evaluated on (`evaluate --data-dir DIR --name NAME`):
    accuracy, recall per class, the share of errors made with confidence >= 0.9, and the
    per-group table when groups were given. Empty when there is none."""
    from covid_xray.evaluate import KAGGLE_SET_KEY, evaluated_sets

    blocks = []
    for key, _title, folder in evaluated_sets(name, reports_dir):
        metrics = (
            _read_json(str(folder / "metrics.json"), _stamp(folder / "metrics.json"))
            if key != KAGGLE_SET_KEY
            else None
        )
        if not metrics:
            continue
        sub = (metrics.get("subsets") or {}).get("all") or {}
        per_class = sub.get("per_class") or {}
        recalls = ", ".join(
            f"{CLASS_DISPLAY_NAMES[c]} {_fmt((per_class.get(c) or {}).get('recall'), True)}"
            f" (n={(per_class.get(c) or {}).get('support', 0)})"
            for c in CLASS_NAMES
        )
        calib = metrics.get("calibration") or {}
        stats = calib.get("calibrated") or calib.get("raw") or {}
        lines = [
            f"**{key}** ({sub.get('n', '?')} films): accuracy {_fmt(sub.get('accuracy'), True)}; "
            f"recall {recalls}.",
        ]
        if stats.get("errors"):
            lines.append(
                f"Errors made with confidence >= {stats.get('threshold', 0.9):.0%}: "
                f"{stats.get('confident_errors')}/{stats.get('errors')}; ECE {_fmt(stats.get('ece'))}."
            )
        groups = metrics.get("groups") or {}
        if groups:
            lines += [
                "",
                "| group | n | accuracy | "
                + " | ".join(f"recall {CLASS_DISPLAY_NAMES[c]}" for c in CLASS_NAMES)
                + " |",
                "|---|---:|---:|" + "---:|" * len(CLASS_NAMES),
            ]
            for group, g in groups.items():
                recall = g.get("recall") or {}
                lines.append(
                    f"| {group} | {g.get('n', '?')} | {_fmt(g.get('accuracy'), True)} | "
                    + " | ".join(_fmt(recall.get(c), True) for c in CLASS_NAMES)
                    + " |"
                )
        blocks.append("\n".join(lines))
    if not blocks:
        return ""
    return (
        f"#### {MODELS[name].display_name} on other films\n\nLabelled folders evaluated with "
        "`python -m covid_xray.evaluate --data-dir DIR --name NAME`: does the model transfer?\n\n"
        + "\n\n".join(blocks)
    )


def audit_markdown(reports_dir: str | os.PathLike | None = None) -> str:
    """Summary of the leakage audit (duplicate pairs per scope, leaked test files)."""
    audit = load_audit(reports_dir)
    if audit is None:
        return "**Leakage audit:** not run on this server."
    lines = ["**Leakage audit** (exact = same bytes; near = perceptual hash"]
    threshold = audit.get("near_threshold")
    lines[0] += f" within {threshold} bits)" if isinstance(threshold, (int, float)) else ")"
    images = audit.get("num_images")
    if isinstance(images, dict):
        lines.append("- images: " + ", ".join(f"{n} {split}" for split, n in images.items()))
    counts = audit.get("counts")
    if isinstance(counts, dict):
        for kind in ("exact", "near"):
            c = counts.get(kind)
            if isinstance(c, dict):
                lines.append(
                    f"- {kind} duplicate pairs: {c.get('total', '?')} "
                    f"({c.get('train/test', '?')} across train/test, {c.get('train', '?')} within train, "
                    f"{c.get('test', '?')} within test)"
                )
    leaked = audit.get("leaked_test_files")
    if isinstance(leaked, list):
        lines.append(
            f"- test images with a copy in train (excluded from the leakage-free test): {len(leaked)}"
        )
        if leaked:
            lines.append(
                "  <details><summary>list</summary>\n\n"
                + "\n".join(f"  - `{f}`" for f in leaked)
                + "\n\n  </details>"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Shortcut explainer (report tab and About tab).
# ---------------------------------------------------------------------------
def _border_mass_sentence(name: str, reports_dir: str | os.PathLike | None) -> str:
    """What the Grad-CAM border mass of one model says, or how to measure it."""
    from covid_xray import explain_eval

    spec = MODELS[name]
    summary = explain_eval.border_mass_summary(name, reports_dir)
    gradcam = (summary or {}).get("methods", {}).get("gradcam")
    if not gradcam:
        return f"{spec.display_name}'s heatmaps have not been measured on this server yet."
    mass, uniform = float(gradcam["mean"]), float(summary["uniform"])
    border = float(summary["border"])
    if mass < 0.5 * uniform:
        reading = "well below the"
    elif mass < 0.85 * uniform:
        reading = "below the"
    elif mass <= 1.15 * uniform:
        reading = "about the same as the"
    else:
        reading = "more than the"
    return (
        f"{spec.display_name}'s Grad-CAM puts {mass:.0%} of its heatmap in the outer {border:.0%} of the "
        f"image (mean over {summary['n']} test images), {reading} {uniform:.0%} a heatmap spread evenly "
        "over the image would put there."
    )


def shortcut_markdown(reports_dir: str | os.PathLike | None = None) -> str:
    """Two paragraphs for a radiology teacher: what this dataset invites a model to learn, with
    the measured official vs leakage-free accuracy and the heatmaps' border mass."""
    scores, evaluated = [], []
    for name, spec in MODELS.items():
        metrics = load_metrics(name, reports_dir)
        if metrics:
            evaluated.append(name)
        subsets = (metrics or {}).get("subsets") or {}
        official, clean = subsets.get("official") or {}, subsets.get("leakage_free") or {}
        if "accuracy" in official and "accuracy" in clean:
            scores.append(
                f"{spec.display_name} scores {_fmt(official['accuracy'], True)} on the official test set "
                f"and {_fmt(clean['accuracy'], True)} on the {clean.get('n', '?')} test images without a "
                "copy in training"
            )
    audit = load_audit(reports_dir) or {}
    leaked = audit.get("leaked_test_files")
    n_test = (audit.get("num_images") or {}).get("test")
    copies = (
        f"{len(leaked)} of the {n_test} test images have an exact or near copy in the training set"
        if isinstance(leaked, list) and n_test
        else "several test images have a copy in the training set"
    )
    first = (
        "**What this dataset invites a model to learn.** The Normal and Viral Pneumonia images come "
        "from a collection of children's chest X-rays (Kermany et al.), while most COVID-19 images are "
        "adults, collected from many hospitals and publications. A network can score well by "
        "recognising a child's chest, a hospital's markers and film, or how an image was cropped and "
        f"compressed: none of these is the disease. On top of that, {copies}: on those a model can be "
        "right from memory, so we also score the test set without them"
        + (": " + "; ".join(scores) + "." if scores else ".")
    )
    sentences = [_border_mass_sentence(name, reports_dir) for name in evaluated]
    second = (
        "**What the heatmaps add.** A model that read the lungs would put little heatmap weight on the "
        "image border, where text markers, rulers and collimation edges sit. "
        + " ".join(sentences)
        + ' Read a high score here as "can tell these collections apart", not "can diagnose COVID-19": '
        "trusting it would take adults with and without COVID-19 from the same hospitals and scanners."
    )
    return first + "\n\n" + second
