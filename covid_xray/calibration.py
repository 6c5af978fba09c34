"""Calibrated confidence: temperature scaling fitted on the validation split.

A model's softmax output is its confidence; on a few hundred images it is often over- or
under-confident. Temperature scaling (Guo et al., ICML 2017) divides the logits by one
number T fitted to minimise the negative log-likelihood (NLL) of the VALIDATION split; the
test split is never used to fit. The models output probabilities, so their log-probabilities
serve as logits (they differ from the real logits by a per-image constant, which softmax
ignores). T > 0 never changes the predicted class, only how sure the model says it is.

Command line::

    python -m covid_xray.calibration fit --model davidnet [--data-dir D] [--checkpoint-dir C]
        [--reports-dir R]
    python -m covid_xray.calibration show --model davidnet [--reports-dir R]

`fit` rebuilds the validation split the checkpoint was trained with (seed, fraction and
protocol from its JSON sidecar), fits T, stores `{"temperature": T, "fitted_on":
"validation", ...}` under the sidecar's "calibration" key (the app then shows calibrated
probabilities), and writes `reports/<model>/calibration.json` (ECE, NLL and accuracy before
and after, on validation, the official test and the leakage-free test, the latter two read
from the committed `predictions.csv`) and `reports/<model>/reliability.png`.

For the app: `calibration_markdown(name)` and `reliability_image_path(name)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config
from covid_xray.config import CLASS_NAMES, EVALUATE_COMMAND, MODELS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
# Probabilities are clipped to this floor before taking logs: predictions.csv keeps 6 decimals,
# so smaller test probabilities are unknown; one floor for validation, test and the app keeps
# the three on the same logits.
PROB_FLOOR = 1e-6
# Search range of T (a bounded 1-D search on log T).
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Stored T is rounded (reruns give the same files; 4 decimals change no reported digit).
TEMPERATURE_DECIMALS = 4
METRIC_DECIMALS = 6
DEFAULT_BINS = 10
# Reliability diagrams: both axes run this far beyond [0, 1], so markers at 0 or 1 are not clipped.
PLOT_MARGIN = 0.04
# calibration_markdown points out a test-set ECE that rose by more than this after scaling.
NOTABLE_ECE_CHANGE = 0.01
FIT_COMMAND = "python -m covid_xray.calibration fit --model {name}"
SIDECAR_KEY = "calibration"
REPORT_FILE = "calibration.json"
OOF_REPORT_FILE = "calibration_oof.json"  # written by covid_xray.oof_calibration
IMAGE_FILE = "reliability.png"
OOF_IMAGE_FILE = "calibration_oof.png"  # written by covid_xray.oof_calibration
# Splits of calibration.json, in display order (the test subsets use metrics.json's names).
SPLIT_TITLES: dict[str, str] = {"validation": "Validation (fitted on)", **config.TEST_SUBSET_TITLES}


class CalibrationError(ValueError):
    """Calibration cannot be fitted or read; the message says why and what to run."""


class PaperProtocolError(CalibrationError):
    """The checkpoint was trained with the "paper" protocol: its validation split IS the test split."""


# ---------------------------------------------------------------------------
# Pure functions.
# ---------------------------------------------------------------------------
def _as_probs(probs: Any) -> np.ndarray:
    array = np.asarray(probs, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] < 2:
        raise CalibrationError(
            f"Expected probabilities of shape (N, classes) or (classes,), got {array.shape}."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise CalibrationError("Probabilities must be finite and non-negative.")
    return array


def _as_labels(labels: Any, n: int, num_classes: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (n,):
        raise CalibrationError(f"Expected {n} labels, got shape {array.shape}.")
    if n and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= num_classes):
        raise CalibrationError(f"Labels must be class indices in [0, {num_classes}).")
    return array.astype(np.int64)


def _check_temperature(temperature: float) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise CalibrationError(f"Temperature must be a positive number, got {temperature!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise CalibrationError(f"Temperature must be a positive number, got {temperature!r}.")
    return value


def log_probabilities(probs: Any) -> np.ndarray:
    """log(p) with p clipped to `PROB_FLOOR`: the logits that temperature scaling divides."""
    return np.log(np.clip(_as_probs(probs), PROB_FLOOR, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(log p / T), same shape as `probs` ((N, K) or (K,)).

    T > 1 softens, T < 1 sharpens, T = 1 returns `probs` (renormalised, up to `PROB_FLOOR`);
    the argmax never changes.
    """
    temperature = _check_temperature(temperature)
    return _softmax(log_probabilities(probs) / temperature)


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean -log p(true class), with p clipped to `PROB_FLOOR` (NaN for no samples)."""
    p = _as_probs(probs).reshape(-1, np.shape(probs)[-1])
    y = _as_labels(labels, len(p), p.shape[1])
    if not len(p):
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(len(p)), y], PROB_FLOOR, 1.0))))


def fit_temperature(probs: Any, labels: Any, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T in `bounds` that minimises the NLL of `apply_temperature(probs, T)` on `labels`.

    The NLL is convex in 1/T, so a bounded 1-D search on log T finds its minimum. A T at a
    bound (e.g. a validation set without a single error pushes T towards 0) is logged.

    Raises:
        CalibrationError: no samples, mismatched labels, or invalid bounds.
    """
    from scipy.optimize import minimize_scalar

    logits = log_probabilities(probs).reshape(-1, np.shape(probs)[-1])
    y = _as_labels(labels, len(logits), logits.shape[1])
    if not len(logits):
        raise CalibrationError("Cannot fit a temperature on zero samples.")
    low, high = (_check_temperature(b) for b in bounds)
    if not low < high:
        raise CalibrationError(f"Invalid temperature bounds {bounds}.")
    true_logit = logits[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float(np.mean(log_norm - true_logit / math.exp(log_t)))

    result = minimize_scalar(
        nll, bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-7}
    )
    temperature = float(math.exp(result.x))
    if min(abs(math.log(temperature / low)), abs(math.log(temperature / high))) < 1e-3:
        logger.warning("Fitted temperature %.4g is at the search bound %s.", temperature, bounds)
    return temperature


def decide_temperature(
    probs: Any, labels: Any, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> tuple[float, float | None, str]:
    """Fit T on validation and decide whether it may be applied.

    A validation split without a single misclassified image (easy to get with ~50 images, the
    same split early stopping used) has no identifiable temperature: its NLL keeps falling as
    T -> 0, and the fit lands on the search bound. Applying that T would only make the model
    more confident on new images, so it is refused and the raw probabilities are served.

    Returns:
        (fitted T, T to apply or None, reason for people: empty when applied).
    """
    fitted = round(fit_temperature(probs, labels, bounds), TEMPERATURE_DECIMALS)
    p = _as_probs(probs).reshape(-1, np.shape(probs)[-1])
    y = _as_labels(labels, len(p), p.shape[1])
    errors = int(np.sum(p.argmax(axis=1) != y))
    low, high = bounds
    if errors == 0 or fitted <= low * 1.001:
        return (
            fitted,
            None,
            (
                f"not applied: the validation split has {errors} misclassified image(s) of {len(y)}, so its "
                f"log loss keeps falling as T shrinks (fitted T = {fitted:g}, the search bound is "
                f"{low:g}); such a T would only make the model more confident. The app and API serve "
                "the raw probabilities."
            ),
        )
    if fitted >= high / 1.001:
        return fitted, None, f"not applied: the fitted T = {fitted:g} is at the search bound {high:g}."
    return fitted, fitted, ""


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence histogram: per equal-width bin, count, mean confidence and accuracy.

    Bin k holds confidences in [edges[k], edges[k+1]) (the last bin includes 1.0); empty bins
    have NaN confidence and accuracy.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of (count / n) * |accuracy - confidence|."""
        if not self.n:
            return float("nan")
        full = self.counts > 0
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float(np.sum(self.counts[full] / self.n * gaps))


def reliability_bins(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Bin samples by top-label confidence (max probability) into `n_bins` equal-width bins."""
    if n_bins < 1:
        raise CalibrationError(f"n_bins must be >= 1, got {n_bins}.")
    p = _as_probs(probs).reshape(-1, np.shape(probs)[-1])
    y = _as_labels(labels, len(p), p.shape[1])
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), counts, mean_conf, accuracy)


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE with `n_bins` equal-width confidence bins (0 = perfectly calibrated)."""
    return reliability_bins(probs, labels, n_bins).ece


def _round(value: float) -> float | None:
    return round(float(value), METRIC_DECIMALS) if math.isfinite(value) else None


def calibration_metrics(probs: Any, labels: Any, temperature: float, n_bins: int = DEFAULT_BINS) -> dict:
    """n, accuracy (unchanged by T) and ECE / NLL / mean confidence before and after scaling."""
    p = _as_probs(probs).reshape(-1, np.shape(probs)[-1])
    y = _as_labels(labels, len(p), p.shape[1])
    scaled = apply_temperature(p, temperature) if len(p) else p

    def scores(q: np.ndarray) -> dict:
        return {
            "ece": _round(expected_calibration_error(q, y, n_bins)),
            "nll": _round(negative_log_likelihood(q, y)),
            "mean_confidence": _round(float(q.max(axis=1).mean()) if len(q) else float("nan")),
        }

    accuracy = float(np.mean(p.argmax(axis=1) == y)) if len(p) else float("nan")
    return {"n": int(len(p)), "accuracy": _round(accuracy), "before": scores(p), "after": scores(scaled)}


def plot_reliability(
    splits: Mapping[str, tuple[Any, Any]],
    temperature: float,
    path: str | os.PathLike,
    *,
    title: str = "",
    n_bins: int = DEFAULT_BINS,
) -> Path:
    """Save reliability diagrams, one column per split: accuracy against confidence before and
    after temperature scaling (top), and how many images fall in each confidence bin (bottom).

    Args:
        splits: {title: (probabilities (N, K), labels (N,))}, raw (uncalibrated) probabilities.
    """
    fig = reliability_figure(splits, temperature, title=title, n_bins=n_bins)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No metadata: the file only changes when the numbers do.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def reliability_figure(
    splits: Mapping[str, tuple[Any, Any]], temperature: float, *, title: str = "", n_bins: int = DEFAULT_BINS
):
    """The matplotlib Figure `plot_reliability` saves. Both axes run PLOT_MARGIN beyond [0, 1],
    so a point at confidence or accuracy 1.0 (or 0.0) is drawn whole, not cut by the frame."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    temperature = _check_temperature(temperature)
    fig = Figure(figsize=(4.2 * max(len(splits), 1), 6.4), dpi=100)
    axes = fig.subplots(2, max(len(splits), 1), squeeze=False, gridspec_kw={"height_ratios": [3, 1.3]})
    width = 1.0 / n_bins
    for column, (name, (probs, labels)) in enumerate(splits.items()):
        top, bottom = axes[0, column], axes[1, column]
        top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        centers = None
        for offset, (label, q, style) in enumerate(
            (
                ("raw", _as_probs(probs), dict(color="tab:red", marker="o")),
                (
                    f"calibrated (T={temperature:.2f})",
                    apply_temperature(probs, temperature),
                    dict(color="tab:blue", marker="s"),
                ),
            )
        ):
            bins = reliability_bins(q, labels, n_bins)
            full = bins.counts > 0
            top.plot(
                bins.confidence[full],
                bins.accuracy[full],
                linewidth=1.5,
                label=f"{label}: ECE {bins.ece:.3f}",
                **style,
            )
            centers = bins.edges[:-1] + width / 2
            bottom.bar(
                centers + (offset - 0.5) * width * 0.45,
                bins.counts,
                width=width * 0.45,
                color=style["color"],
                alpha=0.75,
                label=label.split(":")[0],
            )
        top.set_xlim(-PLOT_MARGIN, 1 + PLOT_MARGIN)
        top.set_ylim(-PLOT_MARGIN, 1 + PLOT_MARGIN)
        top.set_xlabel("confidence (top class)")
        top.set_ylabel("accuracy")
        top.set_title(f"{name} (n={len(np.asarray(labels))})", fontsize=10)
        top.grid(alpha=0.3)
        top.legend(fontsize=7, loc="lower right")
        bottom.set_xlim(-PLOT_MARGIN, 1 + PLOT_MARGIN)  # aligned with the diagram above
        bottom.set_xlabel("confidence bin")
        bottom.set_ylabel("images")
        bottom.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Fitting a checkpoint.
# ---------------------------------------------------------------------------
def split_settings(metadata: Mapping[str, Any], name: str = "model") -> tuple[str, float, int]:
    """(protocol, val_fraction, seed) the checkpoint was trained with, from its JSON sidecar.

    Raises:
        PaperProtocolError: protocol "paper" (validated on test: fitting there would use test).
        CalibrationError: the sidecar does not record the split.
    """
    cfg = metadata.get("config") or {}
    if "paper" in (cfg.get("protocol"), metadata.get("protocol")):
        raise PaperProtocolError(
            f"The {name} checkpoint was trained with the 'paper' protocol, whose validation split is "
            "the test split; fitting a temperature there would tune on the test set. Calibrate a "
            "checkpoint trained with the default protocol (`python train.py --protocol default --install`)."
        )
    protocol = cfg.get("protocol") or metadata.get("protocol")
    recorded = {"protocol": protocol, "val_fraction": cfg.get("val_fraction"), "seed": cfg.get("seed")}
    missing = [key for key, value in recorded.items() if value is None]
    if missing:
        raise CalibrationError(
            f"The {name} checkpoint's JSON sidecar does not record {', '.join(missing)} of its training "
            "split, so its validation images cannot be rebuilt. Retrain it with `python train.py --install`."
        )
    if protocol not in config.PROTOCOLS:
        raise CalibrationError(f"Unknown protocol {protocol!r} in the {name} checkpoint's sidecar.")
    return str(protocol), float(cfg["val_fraction"]), int(cfg["seed"])


def _test_predictions(path: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Raw probabilities, labels, leaked mask and files from a committed predictions.csv."""
    from covid_xray.evaluate import read_predictions

    if not path.exists():
        raise CalibrationError(
            f"No test predictions at {path}; run `{EVALUATE_COMMAND.format(name=name)}` first."
        )
    rows = read_predictions(path)
    if not rows:
        raise CalibrationError(f"{path} holds no predictions; rerun `{EVALUATE_COMMAND.format(name=name)}`.")
    probs = np.array([[row[f"p_{c}"] for c in CLASS_NAMES] for row in rows], dtype=np.float64)
    labels = np.array([CLASS_NAMES.index(row["true"]) for row in rows], dtype=np.int64)
    leaked = np.array([row["leaked"] for row in rows], dtype=bool)
    return probs, labels, leaked, [row["file"] for row in rows]


def _evaluated_sha256(report_dir: Path) -> str | None:
    """The checkpoint sha256 recorded in `<report_dir>/metrics.json` (None when unknown)."""
    try:
        metrics = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = metrics.get("checkpoint_sha256") if isinstance(metrics, dict) else None
    return value if isinstance(value, str) else None


def fit_model(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    reports_dir: str | os.PathLike | None = None,
    n_bins: int = DEFAULT_BINS,
) -> dict:
    """Fit T for a checkpoint on its validation split; update its sidecar, write the report and PNG.

    Returns:
        The calibration report (also written to `<reports>/<model>/calibration.json`).

    Raises:
        PaperProtocolError: the checkpoint's validation split is the test split.
        CalibrationError: missing/stale predictions.csv, or a dataset other than the training one.
        CheckpointError, DatasetNotFoundError: missing checkpoint or dataset.
    """
    from covid_xray import data
    from covid_xray.checkpoints import (
        CheckpointError,
        load_checkpoint,
        read_metadata,
        sha256_file,
        sidecar_path,
        write_json,
    )
    from covid_xray.evaluate import predict_samples
    from covid_xray.preprocessing import checkpoint_mode

    spec = config.get_model_spec(name)
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    if not checkpoint.exists():
        raise CheckpointError(
            f"Checkpoint not found: {checkpoint}. Train it with `python train.py --model {name} --install`."
        )
    metadata = read_metadata(checkpoint)
    protocol, val_fraction, seed = split_settings(metadata, spec.display_name)

    # Test probabilities: exactly the committed evaluation of this very checkpoint.
    report_dir = spec.report_dir(reports_dir)
    predictions = report_dir / "predictions.csv"
    test_probs, test_labels, leaked, test_files = _test_predictions(predictions, name)
    evaluated = _evaluated_sha256(report_dir)
    current = sha256_file(checkpoint)
    if evaluated and evaluated != current:
        raise CalibrationError(
            f"{predictions} was written for another checkpoint (sha256 {evaluated[:12]}..., this one is "
            f"{current[:12]}...); rerun `{EVALUATE_COMMAND.format(name=name)}` first."
        )

    # Validation probabilities: the split the checkpoint was trained with, preprocessed as in evaluation.
    splits = data.make_splits(data_dir, protocol, val_fraction, seed)
    limited = bool((metadata.get("config") or {}).get("max_per_class"))
    recorded = metadata.get("dataset_manifest")
    if recorded and not limited:
        actual = data.dataset_manifest_hash([s for split in splits.values() for s in split])
        if actual != recorded:
            raise CalibrationError(
                f"The dataset at {config.resolve_data_dir(data_dir)} is not the one {spec.display_name} was "
                f"trained on (manifest {actual[:12]}... != {recorded[:12]}...), so its validation split "
                "cannot be rebuilt."
            )
    recorded_val = (metadata.get("split_sizes") or {}).get("val")
    if recorded_val is not None and not limited and recorded_val != len(splits["val"]):
        raise CalibrationError(
            f"The rebuilt validation split has {len(splits['val'])} images, {spec.display_name} was trained "
            f"with {recorded_val}: not the same split."
        )
    if sorted(test_files) != sorted(s.relpath for s in splits["test"]):
        raise CalibrationError(
            f"{predictions} does not list this dataset's test images; "
            f"rerun `{EVALUATE_COMMAND.format(name=name)}`."
        )
    model, metadata = load_checkpoint(checkpoint)
    mode = checkpoint_mode(name, metadata, protocol)
    val = splits["val"]
    val_probs = predict_samples(model, val, mode)
    val_labels = np.array([s.label_index for s in val], dtype=np.int64)

    fitted, applied, reason = decide_temperature(val_probs, val_labels)
    # The tables and the diagram show the fitted T's effect even when it is not applied (why not).
    temperature = fitted
    parts = {
        "validation": (val_probs, val_labels),
        "official": (test_probs, test_labels),
        "leakage_free": (test_probs[~leaked], test_labels[~leaked]),
    }
    report = {
        "model": name,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": current,
        "method": "temperature scaling of log-probabilities, T minimising validation NLL",
        "temperature": applied,
        "fitted_temperature": fitted,
        "applied": applied is not None,
        "reason": reason,
        "fitted_on": "validation",
        "split": {"protocol": protocol, "val_fraction": val_fraction, "seed": seed},
        "preprocessing": mode,
        "n_bins": n_bins,
        "prob_floor": PROB_FLOOR,
        "predictions_sha256": sha256_file(predictions),
        "splits": {key: calibration_metrics(p, y, temperature, n_bins) for key, (p, y) in parts.items()},
    }
    write_json(report_dir / REPORT_FILE, report)
    plot_reliability(
        {SPLIT_TITLES[key]: parts[key] for key in ("validation", "official")},
        temperature,
        report_dir / IMAGE_FILE,
        title=f"{spec.display_name}: reliability before and after temperature scaling"
        + ("" if applied is not None else f" (T = {fitted:g} not applied)"),
        n_bins=n_bins,
    )
    validation = report["splits"]["validation"]
    metadata = dict(metadata)
    kept = metadata.get(SIDECAR_KEY) or {}
    if str(kept.get("fitted_on", "")).startswith("out-of-fold"):  # 251 OOF images beat 50 validation ones
        logger.info("The sidecar keeps its out-of-fold temperature T = %s.", kept.get("temperature"))
        return report
    metadata[SIDECAR_KEY] = {
        "temperature": applied,
        "fitted_temperature": fitted,
        "reason": reason,
        "fitted_on": "validation",
        "n_val": len(val),
        "split": report["split"],
        "val_nll": {"before": validation["before"]["nll"], "after": validation["after"]["nll"]},
        "val_ece": {"before": validation["before"]["ece"], "after": validation["after"]["ece"]},
    }
    write_json(sidecar_path(checkpoint), metadata)
    return report


# ---------------------------------------------------------------------------
# Reading (app, inference).
# ---------------------------------------------------------------------------
def temperature_from_metadata(metadata: Mapping[str, Any] | None) -> float | None:
    """The fitted T recorded in a checkpoint's sidecar, or None (uncalibrated or unusable entry)."""
    entry = (metadata or {}).get(SIDECAR_KEY)
    if not isinstance(entry, Mapping) or entry.get("temperature") is None:
        return None
    try:
        return _check_temperature(entry["temperature"])
    except CalibrationError:
        logger.warning("Ignoring invalid calibration entry %r in a checkpoint sidecar.", entry)
        return None


def load_calibration(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/calibration.json`, or None when missing or unreadable."""
    path = config.get_model_spec(name).report_dir(reports_dir) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def reliability_image_path(name: str, reports_dir: str | os.PathLike | None = None) -> Path | None:
    """The reliability diagram of the temperature the app serves: `calibration_oof.png` when the
    served checkpoint's T was fitted out of fold, else `reliability.png`; None when it is missing."""
    folder = config.get_model_spec(name).report_dir(reports_dir)
    oof = load_oof_calibration(name, reports_dir)
    served_oof = oof is not None and _served_out_of_fold(name, oof.get("temperature"))
    path = folder / (OOF_IMAGE_FILE if served_oof else IMAGE_FILE)
    return path if path.is_file() else None


def _served_out_of_fold(name: str, temperature: Any) -> bool:
    """Whether the served checkpoint's sidecar carries this out-of-fold temperature."""
    sidecar = _sidecar(name)
    entry = sidecar.get(SIDECAR_KEY) if isinstance(sidecar.get(SIDECAR_KEY), dict) else {}
    return str(entry.get("fitted_on", "")).startswith("out-of-fold") and (
        temperature_from_metadata(sidecar) == temperature
    )


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def load_oof_calibration(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/calibration_oof.json` (covid_xray.oof_calibration), or None (missing, unreadable)."""
    path = config.get_model_spec(name).report_dir(reports_dir) / OOF_REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("sets"), dict) else None


def _sidecar(name: str) -> dict:
    """The served checkpoint's JSON sidecar ({} when none or unreadable); JSON only, no TensorFlow."""
    path = config.get_model_spec(name).checkpoint_path().with_suffix(".json")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return sidecar if isinstance(sidecar, dict) else {}


def _confident(scores: Mapping[str, Any]) -> str:
    errors, confident = scores.get("errors"), scores.get("confident_errors")
    if not isinstance(errors, int) or not isinstance(confident, int):
        return "n/a"
    return f"{confident}/{errors}" + (f" ({confident / errors:.0%})" if errors else "")


def _oof_markdown(name: str, oof: dict, validation: dict | None) -> str:
    """The Model report's calibration section when an out-of-fold temperature was fitted."""
    spec = config.get_model_spec(name)
    temperature = oof.get("temperature")
    sidecar = _sidecar(name)
    served = temperature_from_metadata(sidecar)
    applied = _served_out_of_fold(name, temperature)
    sets = oof["sets"]
    fitted = sets.get("oof") or {}
    folds = {f.get("folds") for f in oof.get("fold_models") or [] if isinstance(f, dict)} - {None}
    k = f"{folds.pop()}-fold " if len(folds) == 1 else ""
    where = (
        f"fitted on the {oof.get('n_oof', fitted.get('n', '?'))} out-of-fold predictions "
        f"({(fitted.get('before') or {}).get('errors', '?')} errors) of a {k}cross-validation of the shipped "
        "recipe"
    )
    threshold = (fitted.get("before") or {}).get("threshold", 0.9)
    if applied:
        head = (
            f"**{spec.display_name}: calibrated confidence.** The app and API divide its logits by the "
            f"temperature T = {_fmt(temperature, 4)}, {where}; the test split was not used to fit."
        )
    else:
        head = (
            f"**{spec.display_name}: out-of-fold temperature not applied.** "
            f"T = {_fmt(temperature, 4)}, {where}"
            + (
                f"; apply it with `python -m covid_xray.oof_calibration apply --model {name}`."
                if oof.get("helps_on_every_test_set")
                else "; it does not lower NLL and ECE on every test set, so the app serves "
                + ("raw probabilities." if served is None else f"its sidecar's T = {served:g}.")
            )
        )
    lines = [
        head,
        "",
        "| | n | errors | ECE before → after | NLL before → after | "
        f"errors with confidence ≥ {threshold:g}, before → after |",
        "|---|---:|---:|---|---|---|",
    ]
    titles = {"oof": "Out-of-fold train (fitted on)", **config.TEST_SUBSET_TITLES}
    for key, title in titles.items():
        sub = sets.get(key)
        if not isinstance(sub, dict):
            continue
        before, after = sub.get("before") or {}, sub.get("after") or {}
        lines.append(
            f"| {title} | {sub.get('n', '?')} | {before.get('errors', '?')} | "
            f"{_fmt(before.get('ece'))} → {_fmt(after.get('ece'))} | "
            f"{_fmt(before.get('nll'))} → {_fmt(after.get('nll'))} | "
            f"{_confident(before)} → {_confident(after)} |"
        )
    lines.append("")
    if isinstance(temperature, (int, float)) and temperature > 1:
        lines.append(
            "T > 1: out of fold the raw model was overconfident; scaling softens its probabilities. "
            "The predicted class never changes. ECE is the average gap between confidence and accuracy, "
            "NLL the log loss; lower is better for both."
        )
    elif isinstance(temperature, (int, float)):
        lines.append(
            "T <= 1: out of fold the raw model was not overconfident; the predicted class never changes."
        )
    n_test = (sets.get("official") or {}).get("n")
    if isinstance(n_test, int) and n_test > 0:
        lines.append(
            f"With {n_test} test images one image weighs {1 / n_test:.3f} in ECE and one error moves the "
            "confident share a lot: read small changes as noise."
        )
    if validation is not None and validation.get("applied") is False:
        n_val = ((validation.get("splits") or {}).get("validation") or {}).get("n", "?")
        lines.append(
            f"Earlier, a temperature fitted on the {n_val}-image validation split "
            f"(T = {_fmt(validation.get('fitted_temperature'), 2)}) was not applied: that split has no "
            "error, so its log loss only keeps falling as the model is made more confident. The out-of-fold "
            "predictions "
            "do have errors, which is why T is fitted there."
        )
    evaluated = _evaluated_sha256(spec.report_dir())
    if applied and evaluated and sidecar.get("sha256") not in (None, evaluated):
        lines.append(
            "**Out of date:** the served checkpoint is not the evaluated one this temperature was checked "
            "on; "
            f"rerun `{EVALUATE_COMMAND.format(name=name)}` and the out-of-fold fit."
        )
    return "\n".join(lines)


def calibration_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """A short table for people: ECE and NLL before -> after per split, T, and what it means.

    With an out-of-fold report (calibration_oof.json) that section comes first: the T the app
    applies (read from the checkpoint sidecar), where it was fitted, and the share of errors made
    with confidence >= 0.9 before and after on each test set; the validation fit is context.
    """
    spec = config.get_model_spec(name)
    report = load_calibration(name, reports_dir)
    oof = load_oof_calibration(name, reports_dir)
    if oof is not None:
        return _oof_markdown(name, oof, report)
    if report is None or not isinstance(report.get("splits"), dict):
        return (
            f"**{spec.display_name}: no calibration yet.** Its probabilities are the raw softmax outputs. "
            f"Fit a temperature on the validation split with `{FIT_COMMAND.format(name=name)}`."
        )
    temperature = report.get("temperature")
    splits = report["splits"]
    n_val = (splits.get("validation") or {}).get("n", "?")
    if report.get("applied") is False:
        fitted = report.get("fitted_temperature")
        lines = [
            f"**{spec.display_name}: calibration {report.get('reason') or 'not applied.'}**",
            "",
            f"What the fitted T = {_fmt(fitted, 4)} would do (fitted on the validation split, n={n_val}; "
            "the test split was not used to fit):",
            "",
            "| | n | accuracy | ECE raw → with T | NLL raw → with T |",
            "|---|---:|---:|---|---|",
        ]
    else:
        lines = [
            f"**{spec.display_name}: calibrated confidence.** "
            f"Temperature T = {_fmt(temperature, 2)}, fitted on "
            f"the validation split (n={n_val}); the test split was not used to fit.",
            "",
            "| | n | accuracy | ECE before → after | NLL before → after |",
            "|---|---:|---:|---|---|",
        ]
    for key, title in SPLIT_TITLES.items():
        sub = splits.get(key)
        if not isinstance(sub, dict):
            continue
        before, after = sub.get("before") or {}, sub.get("after") or {}
        accuracy = sub.get("accuracy")
        lines.append(
            f"| {title} | {sub.get('n', '?')} | "
            f"{f'{accuracy:.1%}' if isinstance(accuracy, (int, float)) else 'n/a'} | "
            f"{_fmt(before.get('ece'))} → {_fmt(after.get('ece'))} | "
            f"{_fmt(before.get('nll'))} → {_fmt(after.get('nll'))} |"
        )
    lines.append("")
    if report.get("applied") is False:
        lines.append(
            "A validation split that the model gets entirely right says nothing about how wrong its "
            "confidence is elsewhere; calibrating it honestly needs held-out images with errors "
            "(e.g. out-of-fold predictions from cross-validation)."
        )
    elif isinstance(temperature, (int, float)) and abs(temperature - 1) < 0.05:
        meaning = "T is close to 1: the raw probabilities were already about as well calibrated as T allows."
    elif isinstance(temperature, (int, float)) and temperature > 1:
        meaning = "T > 1: the raw model was overconfident on validation; scaling softens its probabilities."
    else:
        meaning = "T < 1: the raw model was underconfident on validation; scaling sharpens its probabilities."
    if report.get("applied") is not False:
        lines.append(
            f"{meaning} The predicted class never changes. ECE is the average gap between confidence and "
            "accuracy, NLL the log loss; lower is better for both."
        )
    for key in ("official", "leakage_free"):
        sub = splits.get(key) or {}
        ece_before = (sub.get("before") or {}).get("ece")
        ece_after = (sub.get("after") or {}).get("ece")
        if not (isinstance(ece_before, (int, float)) and isinstance(ece_after, (int, float))):
            continue
        if ece_after > ece_before + NOTABLE_ECE_CHANGE:
            lines.append(
                f"On the {SPLIT_TITLES[key].lower()} set the ECE "
                f"{'would go' if report.get('applied') is False else 'went'} up "
                f"({ece_before:.3f} → {ece_after:.3f}): a temperature fitted on {n_val} validation "
                "images does not carry over there."
            )
    n_test = (splits.get("official") or {}).get("n")
    if isinstance(n_test, int) and n_test > 0:
        lines.append(
            f"With {n_test} test images one image weighs {1 / n_test:.3f} in ECE: "
            "read small changes as noise."
        )
    evaluated = _evaluated_sha256(spec.report_dir(reports_dir))
    if evaluated and report.get("checkpoint_sha256") and evaluated != report["checkpoint_sha256"]:
        lines.append(
            f"**Out of date:** this calibration is for another checkpoint than the evaluated one; rerun "
            f"`{FIT_COMMAND.format(name=name)}`."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------
def _cmd_fit(args: argparse.Namespace) -> int:
    report = fit_model(
        args.model,
        data_dir=args.data_dir,
        checkpoint_dir=args.checkpoint_dir,
        reports_dir=args.reports_dir,
        n_bins=args.bins,
    )
    print(
        f"{args.model}: T = {report['fitted_temperature']:.4f} "
        f"(fitted on {report['splits']['validation']['n']} "
        "validation images)" + ("" if report["applied"] else f"; {report['reason']}")
    )
    for key, sub in report["splits"].items():
        b, a = sub["before"], sub["after"]
        print(
            f"  {key:13s} n={sub['n']:3d} accuracy={_fmt(sub['accuracy'], 4)} "
            f"ECE {_fmt(b['ece'], 4)} -> {_fmt(a['ece'], 4)}  "
            f"NLL {_fmt(b['nll'], 4)} -> {_fmt(a['nll'], 4)}  "
            f"mean confidence {_fmt(b['mean_confidence'], 4)} -> {_fmt(a['mean_confidence'], 4)}"
        )
    from covid_xray.checkpoints import read_metadata

    spec = config.get_model_spec(args.model)
    report_dir = spec.report_dir(args.reports_dir)
    entry = read_metadata(spec.checkpoint_path(args.checkpoint_dir)).get(SIDECAR_KEY) or {}
    if str(entry.get("fitted_on", "")).startswith("out-of-fold"):
        print(
            f"wrote {report_dir / REPORT_FILE} and {report_dir / IMAGE_FILE}; the checkpoint sidecar "
            "keeps its "
            f"{entry['fitted_on']} temperature T = {entry.get('temperature')}"
        )
    else:
        print(
            f"wrote {report_dir / REPORT_FILE}, {report_dir / IMAGE_FILE} and the checkpoint sidecar's "
            f"'{SIDECAR_KEY}' entry"
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    print(calibration_markdown(args.model, args.reports_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m covid_xray.calibration`."""
    parser = argparse.ArgumentParser(
        prog="python -m covid_xray.calibration",
        description="Temperature scaling fitted on the validation split.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", choices=sorted(MODELS), default="davidnet")
    common.add_argument(
        "--reports-dir",
        default=None,
        help=f"reports folder (default ${config.REPORTS_DIR_ENV_VAR} or reports/)",
    )
    p = sub.add_parser(
        "fit", parents=[common], help="fit T; update the sidecar, write calibration.json + PNG"
    )
    p.add_argument("--data-dir", default=None, help=f"dataset root (default ${config.DATA_ENV_VAR})")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help=f"checkpoint folder (default ${config.CHECKPOINT_DIR_ENV_VAR} or checkpoints/)",
    )
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help="confidence bins of ECE and the plot")
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser("show", parents=[common], help="print the calibration table (markdown)")
    p.set_defaults(func=_cmd_show)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    errors: tuple[type[Exception], ...] = (CalibrationError,)
    if args.command == "fit":  # `show` reads JSON only: no TensorFlow import
        from covid_xray.checkpoints import CheckpointError
        from covid_xray.data import DatasetNotFoundError

        errors += (CheckpointError, DatasetNotFoundError)
    try:
        return args.func(args)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
