"""The Model report's evaluation text: test metrics (official and leakage-free), the
cross-validation summary, the labelled folders a model was evaluated on, the leakage audit, the
dataset's confounds, and the training curves figure."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS
from covid_xray.report.files import (
    KAGGLE_SET_KEY,
    evaluated_sets,
    load_audit,
    load_cv_sweep,
    load_history,
    load_metrics,
    load_png,
    model_file,
    read_json,
)

CONFOUNDS_MARKDOWN = (
    "**Known confounds of this dataset.** The Normal and Viral Pneumonia images are pediatric "
    "(Kermany et al.) while most COVID-19 images are adults from other hospitals, so a model can "
    "separate the classes by age, body size, markers or scanner instead of by disease. About a "
    'quarter of the "Viral Pneumonia" images are bacterial pneumonia at their source and several '
    "test images duplicate training images, which inflates the official test accuracy."
)


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
    seeds = f"{len(runs)} seed" + ("s" if len(runs) != 1 else "")
    text = (
        f"**Cross-validation.** The shipped training recipe, cross-validated on the train folder "
        f"({sweep.get('folds')} folds, out-of-fold predictions of {n} images, {seeds}): "
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


def history_image_path(name: str, reports_dir: str | os.PathLike | None = None) -> Path | None:
    """The training-curves PNG evaluation draws (`save_history_plot`), or None when it is missing."""
    path = model_file(name, config.HISTORY_PLOT_FILE, reports_dir)
    return path if path.is_file() else None


def history_image(name: str, reports_dir: str | os.PathLike | None = None) -> np.ndarray | None:
    """The training curves as a uint8 RGB array: the PNG evaluation drew, or, for a reports folder
    evaluated before that PNG existed, the figure drawn now from history.csv; None without curves."""
    path = history_image_path(name, reports_dir)
    if path is not None:
        return load_png(path)
    figure = plot_history(name, reports_dir)
    if figure is None:
        return None
    import io

    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return np.asarray(Image.open(buffer).convert("RGB"))


def plot_history(name: str, reports_dir: str | os.PathLike | None = None):
    """The model's training curves (reports/<model>/history.csv) as a matplotlib Figure, or None."""
    history = load_history(name, reports_dir)
    return history_figure(history, name) if history else None


def save_history_plot(history, name: str, path: str | os.PathLike) -> bool:
    """Draw `history_figure` into a PNG (no software stamp, so it regenerates byte for byte).

    Returns False, writing nothing, when there are no rows.
    """
    if not history:
        return False
    history_figure(history, name).savefig(path, format="png", metadata={"Software": None})
    return True


def history_figure(history, name: str):
    """Loss and accuracy curves (train, and validation where every epoch has one) as a Figure.

    Rows are plotted in file order (epochs of successive phases follow each other); a dotted
    line marks each phase change (e.g. initial training, then augmentation).
    """
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
        k: v
        for k, v in (metrics.get("subsets") or {}).items()
        if k in config.TEST_SUBSET_TITLES and isinstance(v, dict)
    }
    header = "| | Paper (reported) | " + " | ".join(
        f"{config.TEST_SUBSET_TITLES[k]} (n={subsets[k].get('n', '?')})" for k in subsets
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
        + " | ".join(f"{config.TEST_SUBSET_TITLES[k]}: precision / recall / F1 (support)" for k in subsets)
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
    blocks = []
    for key, _title, folder in evaluated_sets(name, reports_dir):
        metrics = read_json(folder / config.METRICS_FILE) if key != KAGGLE_SET_KEY else None
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
        f"`{config.EVALUATE_COMMAND.format(name=name)} --data-dir DIR --name NAME`: does the model "
        "transfer?\n\n"
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
