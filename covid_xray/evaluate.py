"""Evaluate a trained checkpoint on the test split: `python -m covid_xray.evaluate --model davidnet`.

Writes to `reports/<model>/` (see docs/ARCHITECTURE.md for the formats):
- metrics.json: accuracy, per-class precision/recall/F1, macro and weighted F1, confusion
  matrix, for the official test split and for its leakage-free subset (test images with no
  exact or near duplicate in train, per the leakage audit);
- predictions.csv: one row per test image;
- confusion_official.png, confusion_leakage_free.png;
- history.csv: the training curves copied from the checkpoint's run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from covid_xray import config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)

PREDICTION_FIELDS = ["file", "true", "predicted", "confidence", *[f"p_{c}" for c in config.CLASS_NAMES], "leaked"]


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro/weighted F1, confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(config.NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(config.CLASS_NAMES)
        },
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": list(config.CLASS_NAMES),
    }


def plot_confusion(matrix: list[list[int]], title: str, path: Path) -> None:
    """Save a confusion-matrix heat map with counts (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    names = [config.CLASS_DISPLAY_NAMES[c] for c in config.CLASS_NAMES]
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=110)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title, fontsize=10)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
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
        for sample, p in zip(samples, probs):
            k = int(np.argmax(p))
            writer.writerow(
                [sample.relpath, sample.label, config.CLASS_NAMES[k], f"{p[k]:.6f}", *[f"{v:.6f}" for v in p],
                 int(sample.relpath in leaked)]
            )


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Read predictions.csv back (probabilities as floats, leaked as bool)."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for key in ("confidence", *[f"p_{c}" for c in config.CLASS_NAMES]):
                row[key] = float(row[key])
            row["leaked"] = row["leaked"] == "1"
            rows.append(row)
    return rows


def _audit(samples):
    """The committed leakage audit when it describes this exact dataset, else a fresh one."""
    from covid_xray import data

    path = config.resolve_reports_dir() / "audit.json"
    if path.exists():
        report = data.AuditReport.from_json(path)
        if report.manifest_hash == data.dataset_manifest_hash(samples):
            return report
    return data.audit(samples)


def evaluate_model(
    name: str,
    data_dir: str | None = None,
    out_dir: str | None = None,
    checkpoint: str | None = None,
) -> dict:
    """Evaluate one checkpoint on the test split and write all outputs; return metrics."""
    from covid_xray import data
    from covid_xray.checkpoints import load_checkpoint, sha256_file, write_json

    spec = config.get_model_spec(name)
    ckpt = Path(checkpoint) if checkpoint else spec.checkpoint_path()
    model, meta = load_checkpoint(ckpt)
    mode = meta.get("preprocessing") or spec.preprocessing_for("default")
    out = Path(out_dir) if out_dir else spec.report_dir()
    out.mkdir(parents=True, exist_ok=True)

    all_samples = data.list_samples(data_dir)
    test = [s for s in all_samples if s.split == "test"]
    leaked = data.leaked_test_files(_audit(all_samples))

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
    write_json(out / "metrics.json", metrics)
    write_predictions(out / "predictions.csv", test, probs, leaked)
    for key, sub in subsets.items():
        plot_confusion(
            sub["confusion_matrix"],
            f"{spec.display_name}, {config.TEST_SUBSET_TITLES[key].lower()} "
            f"(n={sub['n']}, acc={sub['accuracy']:.3f})",
            out / f"confusion_{key}.png",
        )
    history = ckpt.with_name(f"{name}_history.csv")
    if history.exists():
        shutil.copyfile(history, out / "history.csv")
    log.info("%d test images in %.2f s (%.1f images/s)", len(test), seconds, len(test) / max(seconds, 1e-9))
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the official and leakage-free test sets.")
    parser.add_argument("--model", choices=sorted(config.MODELS), default="davidnet")
    parser.add_argument("--data-dir", default=None, help="dataset root (else $COVID_XRAY_DATA)")
    parser.add_argument("--out", default=None, help="output folder (default reports/<model>)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default checkpoints/<model>.keras)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from covid_xray.checkpoints import CheckpointError
    from covid_xray.data import DatasetNotFoundError

    try:
        metrics = evaluate_model(args.model, args.data_dir, args.out, args.checkpoint)
    except (CheckpointError, DatasetNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.model == "chexnet" and not config.resolve_chexnet_weights().exists():
            from covid_xray.weights import missing_weights_message

            print(missing_weights_message(config.resolve_chexnet_weights()), file=sys.stderr)
        return 2
    for key, sub in metrics["subsets"].items():
        print(f"{args.model} {key:13s} n={sub['n']:3d} accuracy={sub['accuracy']:.4f} macro_f1={sub['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
