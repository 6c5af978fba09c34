"""Calibrated confidence: the maths of temperature scaling (fit, apply, ECE, NLL, reliability bins).

A model's softmax output is its confidence; on a few hundred images it is often over- or
under-confident. Temperature scaling (Guo et al., ICML 2017) divides the logits by one
number T fitted to minimise the negative log-likelihood (NLL) of the VALIDATION split; the
test split is never used to fit. The models output probabilities, so their log-probabilities
serve as logits (they differ from the real logits by a per-image constant, which softmax
ignores). T > 0 never changes the predicted class, only how sure the model says it is.

Fitted by `python -m covid_xray.studies.calibrate fit` (validation split) and
`python -m covid_xray.studies.oof_calibrate` (out-of-fold predictions of a cross-validation); the
T the app applies is the sidecar's (`temperature_from_metadata`); the report's text:
`covid_xray.report.calibration`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from covid_xray import config

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
# calibration_markdown points out a test-set ECE that rose by more than this after scaling.
NOTABLE_ECE_CHANGE = 0.01
SIDECAR_KEY = "calibration"
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


# ---------------------------------------------------------------------------
# The sidecar's temperature (app, inference, evaluation).
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
