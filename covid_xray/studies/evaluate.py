"""Evaluate a checkpoint on the test split: `python -m covid_xray.studies.evaluate --model davidnet`.

Writes to `reports/<model>/` (see docs/ARCHITECTURE.md for the formats):
- metrics.json: accuracy, per-class precision/recall/F1, macro and weighted F1, confusion
  matrix, for the official test split and for its leakage-free subset (test images with no
  exact or near duplicate in train, per the leakage audit);
- predictions.csv: one row per test image;
- confusion_official.png, confusion_leakage_free.png;
- history.csv: the training curves copied from the checkpoint's run, and training_curves.png drawn
  from them.

Any labelled folder (a user's own films, one subfolder per class; see
`covid_xray.datasets_external`)::

    python -m covid_xray.studies.evaluate --model davidnet --data-dir DIR --name NAME [--groups G]

writes the same files to `reports/<model>/<NAME>/` (predictions.csv with a `group` column
instead of `leaked`), plus ECE/NLL and the share of errors made with confidence >= 0.9 in
metrics.json, and a per-group breakdown when a `file,group` CSV is given. The leakage-free
subset is defined by the audit of the Kaggle split only, so such a set has none (metrics.json
says so). `covid_xray.report.files.evaluated_sets(name)` lists every evaluated set of a model.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from covid_xray import config
from covid_xray.metrics import calibration_summary, compute_metrics, group_breakdown
from covid_xray.preprocessing import checkpoint_mode
from covid_xray.report.evaluation import save_history_plot
from covid_xray.report.files import KAGGLE_SET_KEY, read_history
from covid_xray.studies import _options

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)

PREDICTION_FIELDS = list(config.PREDICTION_COLUMNS)
FOLDER_PREDICTION_FIELDS = list(config.FOLDER_PREDICTION_COLUMNS)
SET_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NO_LEAKAGE_FREE_SUBSET = (
    "not applicable: the leakage-free subset drops Kaggle test images that have a duplicate in "
    "the Kaggle train split (reports/audit.json); this folder was not audited against train."
)


def plot_confusion(matrix: list[list[int]], title: str, path: Path) -> None:
    """Save a confusion-matrix heat map with counts (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    names = [config.CLASS_DISPLAY_NAMES[c] for c in config.CLASS_NAMES]
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=110)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    # The app's image label covers the figure's top-left corner: the title (two short lines,
    # centred over the matrix) sits below a blank band at the top instead of at the edge.
    ax.set_title(title, fontsize=10)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path)
    plt.close(fig)


def predict_samples(model, samples, mode: str, batch_size: int = 16) -> np.ndarray:
    """Class probabilities (N, 3) for dataset samples, decoded and preprocessed the shared way."""
    from covid_xray.data import load_arrays
    from covid_xray.preprocessing import normalize

    images, _ = load_arrays(samples)
    probs = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start : start + batch_size], mode)
        probs.append(np.asarray(model(batch, training=False)))
    return np.concatenate(probs).astype(np.float64)


def write_predictions(path: Path, samples, probs: np.ndarray, leaked: set[str]) -> None:
    """Write predictions.csv in the documented, stable format."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_FIELDS)
        for sample, p in zip(samples, probs, strict=True):
            k = int(np.argmax(p))
            writer.writerow(
                [
                    sample.relpath,
                    sample.label,
                    config.CLASS_NAMES[k],
                    f"{p[k]:.6f}",
                    *[f"{v:.6f}" for v in p],
                    int(sample.relpath in leaked),
                ]
            )


def evaluate_model(
    name: str,
    data_dir: str | None = None,
    out_dir: str | None = None,
    checkpoint: str | None = None,
) -> dict:
    """Evaluate one checkpoint on the test split and write all outputs; return metrics."""
    from covid_xray import data
    from covid_xray.audit import audit_for, leaked_test_files
    from covid_xray.checkpoints import load_checkpoint, sha256_file, write_json

    spec = config.get_model_spec(name)
    ckpt = Path(checkpoint) if checkpoint else spec.checkpoint_path()
    model, meta = load_checkpoint(ckpt)
    mode = checkpoint_mode(name, meta)
    out = Path(out_dir) if out_dir else spec.report_dir()
    out.mkdir(parents=True, exist_ok=True)

    all_samples = data.list_samples(data_dir)
    test = [s for s in all_samples if s.split == "test"]
    leaked = leaked_test_files(audit_for(all_samples))

    t0 = time.perf_counter()
    probs = predict_samples(model, test, mode)
    seconds = time.perf_counter() - t0
    y_true = np.array([s.label_index for s in test])
    y_pred = probs.argmax(axis=1)
    clean = np.array([s.relpath not in leaked for s in test])

    subsets = {
        "official": compute_metrics(y_true, y_pred),
        "leakage_free": compute_metrics(y_true[clean], y_pred[clean]),
    }
    metrics = {
        "model": name,
        "checkpoint": ckpt.name,
        "checkpoint_sha256": sha256_file(ckpt),
        "protocol": meta.get("protocol", "unknown"),
        "selection": meta.get("selection", "unknown"),
        "preprocessing": mode,
        "dataset_manifest": data.dataset_manifest_hash(all_samples),
        "leaked_test_files": sorted(leaked),
        "subsets": subsets,
        "paper_accuracy": spec.paper_accuracy,
    }
    write_json(out / config.METRICS_FILE, metrics)
    write_predictions(out / config.PREDICTIONS_FILE, test, probs, leaked)
    for key, sub in subsets.items():
        plot_confusion(
            sub["confusion_matrix"],
            f"{spec.display_name}, {config.TEST_SUBSET_TITLES[key].lower()}\n"
            f"n={sub['n']}, accuracy {sub['accuracy']:.3f}",
            out / config.CONFUSION_FILE.format(subset=key),
        )
    history = ckpt.with_name(f"{name}_history.csv")
    if history.exists():
        shutil.copyfile(history, out / config.HISTORY_FILE)
        save_history_plot(read_history(history), name, out / config.HISTORY_PLOT_FILE)
    log.info("%d test images in %.2f s (%.1f images/s)", len(test), seconds, len(test) / max(seconds, 1e-9))
    return metrics


def check_set_name(set_name: str) -> str:
    """A labelled folder's NAME: a plain folder name (letters, digits, . _ -), not the Kaggle key."""
    from covid_xray.datasets_external import LabelledFolderError

    if not SET_NAME_PATTERN.match(set_name or "") or set_name == KAGGLE_SET_KEY:
        raise LabelledFolderError(
            f"--name {set_name!r} cannot name an evaluated set: use 1 to 64 letters, digits, '.', '_' or '-' "
            f"(starting with a letter or digit), other than {KAGGLE_SET_KEY!r}, e.g. --name st-marys-2024."
        )
    return set_name


def evaluate_folder(
    name: str,
    folder: str | os.PathLike,
    set_name: str,
    groups_csv: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    checkpoint: str | None = None,
    reports_dir: str | os.PathLike | None = None,
) -> dict:
    """Evaluate one checkpoint on a labelled folder (one subfolder per class) and write
    metrics.json, predictions.csv and confusion_all.png to `reports/<model>/<set_name>/`.

    Raises:
        LabelledFolderError: the folder or the group CSV is unusable (message for people).
            Also raised when `set_name` is not a usable folder name.
    """
    from covid_xray.calibration import temperature_from_metadata
    from covid_xray.checkpoints import load_checkpoint, sha256_file, write_json
    from covid_xray.datasets_external import UNGROUPED, discover_labelled_folder, read_groups

    check_set_name(set_name)
    images = discover_labelled_folder(folder)
    groups = read_groups(groups_csv, images) if groups_csv else {im.relpath: UNGROUPED for im in images}
    spec = config.get_model_spec(name)
    ckpt = Path(checkpoint) if checkpoint else spec.checkpoint_path()
    model, meta = load_checkpoint(ckpt)
    mode = checkpoint_mode(name, meta)
    out = Path(out_dir) if out_dir else spec.report_dir(reports_dir) / set_name
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    probs = predict_samples(model, images, mode)
    seconds = time.perf_counter() - t0
    y_true = np.array([im.label_index for im in images])
    y_pred = probs.argmax(axis=1)
    group_list = [groups[im.relpath] for im in images]
    metrics = {
        "model": name,
        "kind": "labelled_folder",
        "set_name": set_name,
        "data_dir": str(Path(folder).expanduser().resolve()),
        "checkpoint": ckpt.name,
        "checkpoint_sha256": sha256_file(ckpt),
        "preprocessing": mode,
        "subsets": {"all": compute_metrics(y_true, y_pred)},
        "leakage_free": NO_LEAKAGE_FREE_SUBSET,
        "calibration": calibration_summary(probs, y_true, temperature_from_metadata(meta)),
        "groups_file": str(Path(groups_csv).expanduser().resolve()) if groups_csv else None,
        "groups": group_breakdown(y_true, y_pred, group_list) if groups_csv else None,
    }
    write_json(out / config.METRICS_FILE, metrics)
    with open(out / config.PREDICTIONS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FOLDER_PREDICTION_FIELDS)
        for im, p, group in zip(images, probs, group_list, strict=True):
            k = int(np.argmax(p))
            writer.writerow(
                [
                    im.relpath,
                    im.label,
                    config.CLASS_NAMES[k],
                    f"{p[k]:.6f}",
                    *[f"{v:.6f}" for v in p],
                    "" if group == UNGROUPED else group,
                ]
            )
    sub = metrics["subsets"]["all"]
    plot_confusion(
        sub["confusion_matrix"],
        f"{spec.display_name}, {set_name}\nn={sub['n']}, accuracy {sub['accuracy']:.3f}",
        out / config.CONFUSION_FILE.format(subset="all"),
    )
    log.info("%d images in %.2f s (%.1f images/s)", len(images), seconds, len(images) / max(seconds, 1e-9))
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{config.STUDIES}.evaluate",
        description="Evaluate a checkpoint on the official and leakage-free test sets.",
    )
    _options.add(parser, "model")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="with --name: a labelled folder (one subfolder per class); else the Kaggle dataset root "
        "(default $COVID_XRAY_DATA)",
    )
    parser.add_argument("--name", default=None, help="set name: outputs in reports/<model>/<NAME>/")
    parser.add_argument("--groups", default=None, help="CSV `file,group`: per-group breakdown")
    parser.add_argument("--out", default=None, help="output folder (default reports/<model>[/<NAME>])")
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default checkpoints/<model>.keras)"
    )
    args = parser.parse_args(argv)
    if args.name is not None and args.data_dir is None:
        parser.error("--name needs --data-dir: the labelled folder to evaluate")
    if args.groups is not None and args.name is None:
        parser.error("--groups needs --data-dir and --name (groups apply to a labelled folder)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from covid_xray.checkpoints import CheckpointError
    from covid_xray.data import DatasetNotFoundError
    from covid_xray.datasets_external import LabelledFolderError

    try:
        if args.name is not None:
            metrics = evaluate_folder(
                args.model, args.data_dir, args.name, args.groups, args.out, args.checkpoint
            )
        else:
            metrics = evaluate_model(args.model, args.data_dir, args.out, args.checkpoint)
    except LabelledFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, DatasetNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.model == "chexnet" and not config.resolve_chexnet_weights().exists():
            from covid_xray.weights import missing_weights_message

            print(missing_weights_message(config.resolve_chexnet_weights()), file=sys.stderr)
        return 2
    for key, sub in metrics["subsets"].items():
        print(
            f"{args.model} {key:13s} n={sub['n']:3d} accuracy={sub['accuracy']:.4f} "
            f"macro_f1={sub['macro_f1']:.4f}"
        )
    if args.name is not None:
        raw = metrics["calibration"]["raw"]
        print(
            f"  ECE={raw['ece']:.4f} NLL={raw['nll']:.4f} errors={raw['errors']} "
            f"with confidence >= {raw['threshold']}: {raw['confident_errors']}"
        )
        for group, g in (metrics["groups"] or {}).items():
            recall = " ".join(f"{c}={'-' if r is None else f'{r:.2f}'}" for c, r in g["recall"].items())
            print(f"  group {group}: n={g['n']} accuracy={g['accuracy']:.4f} recall {recall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
