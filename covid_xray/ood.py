"""Out-of-distribution guard: warn (never block) when an input is unlikely to be a frontal chest X-ray.

The models answer "Covid", "Normal" or "Viral Pneumonia" for *any* picture, a cat photo
included, with high confidence. This guard attaches warnings to the prediction instead:

1. Cheap checks on the decoded RGB image, at any size, before the model's resize:
   colour (radiographs are grey), intensity statistics (a radiograph has contrast and many
   grey levels; a uniform, nearly black/white or flat-coloured image has not), and aspect
   ratio (detector plates are roughly square).
2. A learned check (`FeatureGuard`): the Mahalanobis distance of the model's features (for
   DavidNet its last convolutional maps, globally averaged) to the nearest class mean of the
   train folder's images, with one shared (tied) Ledoit-Wolf shrinkage covariance (Lee et al.,
   NeurIPS 2018). The alarm threshold is a high quantile of OUT-OF-FOLD distances: every train
   image scored by a Gaussian fitted on the other folds (duplicate-aware 5-fold split), i.e.
   as far as a real chest X-ray the fit has not seen typically lies. The test split is never
   used to fit.

Usage in the app (one guard per model, built once, reused per request)::

    guard = load_guard("davidnet")          # Guard, or None when the model is not installed
    result = guard.check(rgb, model_input)  # rgb: decoded uint8 HxWx3; model_input: 224x224x3
    result.is_xray_likely, result.warnings, result.to_json()

`check_image(rgb)` runs the cheap checks alone (no model needed).

Command line::

    python -m covid_xray.ood fit --model davidnet [--data-dir D] [--checkpoint-dir C]
    python -m covid_xray.ood measure --model davidnet [--data-dir D] [--out reports/ood.json]

`fit` writes `checkpoints/ood_<model>.json`; `measure` prints the false-alarm rate on real
chest X-rays (the train folder out of fold, the 66 official test images, the curated examples,
all 317 together) and the hit rate on a synthesised set of non-X-ray images, and writes
`reports/ood.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from covid_xray import config, imaging, preprocessing
from covid_xray.config import CLASS_NAMES, DECODE_DRAFT_SIZE, INPUT_SHAPE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
# The cheap checks look at no more than about this many pixels: a 30-megapixel scan is
# sub-sampled on a regular grid (nearest pixels, no interpolation, so no new grey levels or
# colours are invented).
CHEAP_CHECK_MAX_PIXELS = 1_000_000
# Colour and grey-level statistics (means and histogram fractions) need far fewer pixels: they
# read a coarser grid (every 2nd pixel of a 640x640 image), a quarter of the work per request.
# The smoothness and gradient checks keep the finer grid above: they resize it themselves.
STATISTICS_MAX_PIXELS = 262_144

# Colour. A radiograph is a single-channel measurement of X-ray attenuation: R = G = B, up to
# JPEG chroma noise. On the 251 training images the mean channel spread (max - min of R, G, B,
# over 255) is at most 0.017 and the mean HSV saturation at most 0.03; no pixel differs by
# more than 40 levels between channels. The limits below leave a wide margin for
# re-encoded and slightly tinted exports; a phone photo of a film on a light box, or a colour
# photo, is far above them.
COLOUR_SPREAD_MAX = 0.08  # mean (max - min over channels) / 255
SATURATION_MAX = 0.20  # mean HSV saturation (0..1)
COLOURFUL_PIXEL_SPREAD = 40  # a pixel is "coloured" when its channels differ by more than this
COLOURFUL_FRACTION_MAX = 0.05  # ...and more than 5% of the pixels are coloured

# Intensity. Chest radiographs show lungs, mediastinum, bones and soft tissue: a wide grey
# range. Training images: grey-level standard deviation 0.12..0.33 (of 255), at most 25% of
# pixels near black (collimation borders) and 17% near white (labels, bones), at least 136
# grey levels in use, and no single grey level holding more than 22% of the pixels.
UNIFORM_STD_MAX = 0.04  # grey std / 255 below this: nearly uniform, nothing to read
DARK_LEVEL, BRIGHT_LEVEL = 10, 245  # "near black" is <= 10, "near white" is >= 245 (of 255)
DARK_FRACTION_MAX = 0.60  # more than 60% near-black pixels: a black (or mostly empty) image
BRIGHT_FRACTION_MAX = 0.50  # more than half near-white: a document, a screenshot, a blank page
# A grey level "is in use" when it holds at least 0.05% of the pixels (JPEG noise on a
# drawing adds many levels, each with a handful of pixels).
LEVEL_MIN_SHARE = 0.0005
GREY_LEVELS_MIN = 48  # fewer levels in use: a drawing, a diagram or a posterised image
TOP_LEVEL_FRACTION_MAX = 0.40  # one flat level covering 40% of the image: screenshot/drawing
# Smoothness. At 256x256 a radiograph is smooth: neighbouring pixels correlate at 0.965..0.999
# on the training images. Pure noise or fine texture (static, fabric, a dithered print) is
# near 0.
SMOOTHNESS_SIZE = 256
NEIGHBOUR_CORRELATION_MIN = 0.70
# Structure. A chest X-ray has the body in the middle and two lungs: a plane a + b*x + c*y
# (a brightness gradient) explains at most 84% of its grey variance (median ~5%) on the
# training images at 64x64. A bare gradient (a ramp, a blank page under uneven light) is
# explained almost entirely.
PLANE_FIT_SIZE = 64
PLANE_FIT_R2_MAX = 0.95

# Aspect ratio (width / height). Detector plates and film cassettes are 35x43 cm (0.81),
# 43x43 cm (1.0) or 43x35 cm landscape (1.23); exported crops and padded images stray further,
# so only clearly elongated images are flagged (a panorama, a phone screenshot, a long-bone film).
ASPECT_RATIO_MIN, ASPECT_RATIO_MAX = 0.6, 1.7

# Learned check.
# The representation each model's Mahalanobis guard uses (the output of this layer; maps are
# globally averaged). DavidNet: its last convolutional block, conv3 (64 channels, also the
# Grad-CAM layer). Its dense layers were tried first: dense2 put real adult X-rays with burned-in
# text (test/Covid/0102.jpeg, a curated example) further out than greyscale limb and skull
# images, because those layers encode "which class", not "a chest film"; on the pooled conv3
# maps every test image lies below the out-of-fold threshold and every synthesised non-X-ray
# above it (reports/ood.json). CheXNet: the 1024-d globally pooled DenseNet121 features, i.e.
# the input of the small trained head; they come from the pretrained base, so they describe
# "chest radiograph or not" far more broadly than a head fitted on ~250 images.
FEATURE_LAYERS: dict[str, str] = {name: spec.feature_layer for name, spec in config.MODELS.items()}
# The alarm threshold is this quantile of the train folder's out-of-fold distances: about 1%
# of real chest X-rays like the training ones are expected to raise the alarm.
DEFAULT_THRESHOLD_QUANTILE = 0.99
# Out-of-fold distances: a duplicate-aware stratified split of the train folder (data.cross_validation_folds).
CV_FOLDS = 5
CV_SEED = 0
FEATURE_BATCH_SIZE = 32
GUARD_FORMAT = "covid-xray-ood-guard"
GUARD_VERSION = 1
REPORT_FILENAME = "ood.json"
# Significant digits kept for matrices in the guard JSON (float32 precision is ~7).
JSON_DIGITS = 8

# Check codes (OODResult.flags), in the order the checks run.
CHEAP_FLAGS = ("colour", "uniform", "dark", "bright", "few_levels", "noise", "gradient", "aspect")
LEARNED_FLAG = "features"


class GuardError(ValueError):
    """A guard file is missing, malformed, or does not fit the model it is used with."""


# ---------------------------------------------------------------------------
# Result.
# ---------------------------------------------------------------------------
@dataclass
class OODResult:
    """What the guard says about one input.

    Attributes:
        is_xray_likely: False when any check raised a warning.
        warnings: one sentence per warning, meant for people.
        scores: the measured statistics (finite floats), e.g. "colour_spread", "aspect_ratio",
            "mahalanobis" and "mahalanobis_threshold" when the learned check ran.
        flags: machine codes of the checks that fired (`CHEAP_FLAGS`, `LEARNED_FLAG`).
        learned_check: whether the learned (feature-distance) check ran.
    """

    is_xray_likely: bool
    warnings: list[str]
    scores: dict[str, float]
    flags: list[str] = field(default_factory=list)
    learned_check: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (scores rounded to 6 significant digits)."""
        return {
            "is_xray_likely": bool(self.is_xray_likely),
            "warnings": list(self.warnings),
            "flags": list(self.flags),
            "learned_check": bool(self.learned_check),
            "scores": {k: float(f"{v:.6g}") for k, v in self.scores.items() if math.isfinite(v)},
        }

    def summary_markdown(self) -> str:
        """Empty when nothing fired; otherwise a warning block for the UI."""
        if self.is_xray_likely:
            return ""
        items = "\n".join(f"- {w}" for w in self.warnings)
        return f"**This may not be a frontal chest X-ray.** The predictions may be meaningless.\n\n{items}"


# ---------------------------------------------------------------------------
# Cheap checks.
# ---------------------------------------------------------------------------
def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"Expected a uint8 HxWx3 RGB image, got {rgb.dtype} array of shape {rgb.shape}.")
    return rgb


def _subsample(rgb: np.ndarray, max_pixels: int = CHEAP_CHECK_MAX_PIXELS) -> np.ndarray:
    """Every k-th pixel on a grid, so that at most about `max_pixels` remain."""
    height, width = rgb.shape[:2]
    step = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    return rgb[::step, ::step] if step > 1 else rgb


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """The statistics the cheap checks threshold, for an 8-bit RGB image of any size.

    Returns:
        colour_spread (mean channel max - min, /255), saturation (mean HSV S, 0..1),
        colourful_fraction, grey_std (/255), grey_mean (/255), dark_fraction, bright_fraction,
        grey_levels (levels holding >= LEVEL_MIN_SHARE of the pixels), top_level_fraction,
        neighbour_correlation (of adjacent pixels at SMOOTHNESS_SIZE; 1.0 for a flat image),
        plane_fit_r2 (grey variance explained by a linear brightness gradient; 1.0 for a flat
        image),
        aspect_ratio (width / height of the full image).
    """
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    fine = np.ascontiguousarray(_subsample(rgb))
    small = np.ascontiguousarray(_subsample(fine, STATISTICS_MAX_PIXELS))
    red, green, blue = small[..., 0], small[..., 1], small[..., 2]
    # Element-wise max/min of the three planes (much faster than reducing over axis 2).
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    saturation = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1]
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    fine_grey = grey if fine.shape == small.shape else cv2.cvtColor(fine, cv2.COLOR_RGB2GRAY)
    n = grey.size
    histogram = np.bincount(grey.ravel(), minlength=256)
    return {
        "colour_spread": float(spread.mean() / 255.0),
        "saturation": float(saturation.mean() / 255.0),
        "colourful_fraction": float((spread > COLOURFUL_PIXEL_SPREAD).mean()),
        "grey_std": float(grey.std() / 255.0),
        "grey_mean": float(grey.mean() / 255.0),
        "dark_fraction": float(histogram[: DARK_LEVEL + 1].sum() / n),
        "bright_fraction": float(histogram[BRIGHT_LEVEL:].sum() / n),
        "grey_levels": float(np.count_nonzero(histogram >= LEVEL_MIN_SHARE * n)),
        "top_level_fraction": float(histogram.max() / n),
        "neighbour_correlation": _neighbour_correlation(fine_grey),
        "plane_fit_r2": _plane_fit_r2(fine_grey),
        "aspect_ratio": float(width / height),
    }


def _neighbour_correlation(grey: np.ndarray) -> float:
    """Correlation of horizontally and vertically adjacent pixels after an area resize."""
    small = cv2.resize(grey, (SMOOTHNESS_SIZE, SMOOTHNESS_SIZE), interpolation=cv2.INTER_AREA).astype(
        np.float64
    )
    a = np.concatenate([small[:, :-1].ravel(), small[:-1, :].ravel()])
    b = np.concatenate([small[:, 1:].ravel(), small[1:, :].ravel()])
    a -= a.mean()
    b -= b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    # A flat image has no noise at all: call it perfectly smooth (the uniform check handles it).
    return float((a * b).sum() / denominator) if denominator > 1e-9 else 1.0


def _plane_fit_r2(grey: np.ndarray) -> float:
    """Fraction of the grey variance explained by a least-squares plane a + b*x + c*y."""
    small = cv2.resize(grey, (PLANE_FIT_SIZE, PLANE_FIT_SIZE), interpolation=cv2.INTER_AREA)
    values = small.astype(np.float64).ravel()
    total = float(((values - values.mean()) ** 2).sum())
    if total <= 1e-9:
        return 1.0
    y, x = np.mgrid[0:PLANE_FIT_SIZE, 0:PLANE_FIT_SIZE] / (PLANE_FIT_SIZE - 1.0)
    design = np.stack([np.ones(values.size), x.ravel(), y.ravel()], axis=1)
    coefficients = np.linalg.lstsq(design, values, rcond=None)[0]
    residual = float(((values - design @ coefficients) ** 2).sum())
    return 1.0 - residual / total


def cheap_checks(rgb: np.ndarray) -> tuple[list[str], list[str], dict[str, float]]:
    """Run the colour, intensity and aspect-ratio checks.

    Returns:
        (flags, warnings, scores): the codes of the checks that fired, one sentence per
        warning, and `image_statistics(rgb)`.

    Raises:
        ValueError: `rgb` is not a uint8 HxWx3 array.
    """
    s = image_statistics(rgb)
    flags: list[str] = []
    warnings: list[str] = []

    def warn(flag: str, text: str) -> None:
        flags.append(flag)
        warnings.append(text)

    if (
        s["colour_spread"] > COLOUR_SPREAD_MAX
        or s["saturation"] > SATURATION_MAX
        or s["colourful_fraction"] > COLOURFUL_FRACTION_MAX
    ):
        warn(
            "colour",
            f"The image is in colour ({s['colourful_fraction']:.0%} of its pixels are coloured, "
            f"mean saturation {s['saturation']:.2f}); X-rays are greyscale.",
        )
    uniform = s["grey_std"] < UNIFORM_STD_MAX
    if uniform:
        warn(
            "uniform",
            f"The image is nearly uniform (contrast {s['grey_std']:.3f}, a chest X-ray has at "
            f"least {UNIFORM_STD_MAX}): there is almost nothing in it to read.",
        )
    if s["dark_fraction"] > DARK_FRACTION_MAX:
        warn("dark", f"{s['dark_fraction']:.0%} of the image is black; a chest X-ray is mostly grey.")
    if s["bright_fraction"] > BRIGHT_FRACTION_MAX:
        warn(
            "bright",
            f"{s['bright_fraction']:.0%} of the image is white, like a document or a screenshot.",
        )
    # A uniform image trivially has few levels: one warning says it already.
    if not uniform and (
        s["grey_levels"] < GREY_LEVELS_MIN or s["top_level_fraction"] > TOP_LEVEL_FRACTION_MAX
    ):
        warn(
            "few_levels",
            f"The image uses few grey levels ({s['grey_levels']:.0f} in use; one flat level covers "
            f"{s['top_level_fraction']:.0%} of it), like a drawing or a screenshot rather than a radiograph.",
        )
    if s["neighbour_correlation"] < NEIGHBOUR_CORRELATION_MIN:
        warn(
            "noise",
            f"The image is mostly fine-grained noise or texture (neighbouring pixels correlate at only "
            f"{s['neighbour_correlation']:.2f}); radiographs are smooth at this scale.",
        )
    if not uniform and s["plane_fit_r2"] > PLANE_FIT_R2_MAX:
        warn(
            "gradient",
            f"The image is a plain brightness gradient ({s['plane_fit_r2']:.0%} of its contrast is a "
            "smooth ramp) with no anatomy in it.",
        )
    ratio = s["aspect_ratio"]
    if not ASPECT_RATIO_MIN <= ratio <= ASPECT_RATIO_MAX:
        shape = (
            f"{ratio:.1f} times wider than tall" if ratio > 1 else f"{1 / ratio:.1f} times taller than wide"
        )
        warn(
            "aspect",
            f"The image is {shape}; frontal chest X-rays are roughly square "
            f"(width/height {ASPECT_RATIO_MIN} to {ASPECT_RATIO_MAX}).",
        )
    return flags, warnings, s


def check_image(rgb: np.ndarray) -> OODResult:
    """The cheap checks alone, as an `OODResult` (no model needed)."""
    flags, warnings, scores = cheap_checks(rgb)
    return OODResult(is_xray_likely=not flags, warnings=warnings, scores=scores, flags=flags)


# ---------------------------------------------------------------------------
# Learned check: Mahalanobis distance to the class means of the training features.
# ---------------------------------------------------------------------------
@dataclass
class FeatureGuard:
    """Tied-covariance Gaussian model of a network's penultimate features.

    Attributes:
        means: (K, D) class means of the training features.
        precision: (D, D) inverse of the shared Ledoit-Wolf covariance.
        threshold: distances above it raise the alarm.
        model_name, model_sha256, feature_layer, preprocessing: what the guard was fitted for.
        info: provenance (sizes, shrinkage, quantile, score summaries); free-form JSON.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    model_name: str = ""
    model_sha256: str = ""
    feature_layer: str = ""
    preprocessing: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.means = np.atleast_2d(np.asarray(self.means, dtype=np.float64))
        self.precision = np.asarray(self.precision, dtype=np.float64)
        dim = self.means.shape[1]
        if self.precision.shape != (dim, dim):
            raise GuardError(
                f"The precision matrix is {self.precision.shape}, but the class means have {dim} features."
            )
        if not (np.isfinite(self.means).all() and np.isfinite(self.precision).all()):
            raise GuardError("The guard's class means or precision matrix contain non-finite values.")
        self.threshold = float(self.threshold)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def fit(
        cls,
        train_features: np.ndarray,
        train_labels: np.ndarray,
        val_features: np.ndarray,
        quantile: float = DEFAULT_THRESHOLD_QUANTILE,
        **metadata: Any,
    ) -> FeatureGuard:
        """Fit class means and a shared shrinkage covariance on training features; set the
        threshold at `quantile` of the validation features' distances.

        Args:
            train_features: (N, D) features of the training images.
            train_labels: (N,) class indices.
            val_features: (M, D) features of held-out in-distribution images (M >= 1).
            quantile: in (0, 1]; 1.0 takes the validation maximum.
            **metadata: model_name, model_sha256, feature_layer, preprocessing, info.

        Raises:
            ValueError: shapes that do not fit, an empty split, or a bad quantile.
        """
        x = np.asarray(train_features, dtype=np.float64)
        y = np.asarray(train_labels).astype(np.int64)
        v = np.asarray(val_features, dtype=np.float64)
        _check_features(x, y)
        if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] != x.shape[1]:
            raise ValueError(f"Expected (M >= 1, {x.shape[1]}) validation features, got shape {v.shape}.")
        _check_quantile(quantile)
        classes, means, precision, shrinkage = _fit_gaussian(x, y)
        info = dict(metadata.pop("info", {}) or {})
        guard = cls(means=means, precision=precision, threshold=0.0, **metadata)
        val_scores = guard.score(v)
        guard.threshold = float(np.quantile(val_scores, quantile))
        info.update(
            {
                "classes": _class_names(classes),
                "n_train": int(x.shape[0]),
                "n_val": int(v.shape[0]),
                "feature_dim": int(x.shape[1]),
                "shrinkage": shrinkage,
                "threshold_source": "validation",
                "threshold_quantile": float(quantile),
                "train_scores": _summary(guard.score(x)),
                "val_scores": _summary(val_scores),
            }
        )
        guard.info = info
        return guard

    @classmethod
    def fit_out_of_fold(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        held_out: Sequence[np.ndarray],
        quantile: float = DEFAULT_THRESHOLD_QUANTILE,
        **metadata: Any,
    ) -> FeatureGuard:
        """Fit class means and covariance on ALL `features`; set the threshold at `quantile` of
        their out-of-fold distances (`out_of_fold_scores`).

        Args:
            features: (N, D) features of real in-distribution images (the train folder).
            labels: (N,) class indices.
            held_out: index arrays of the folds, covering every row exactly once.
            quantile: in (0, 1]; 1.0 takes the out-of-fold maximum.
            **metadata: model_name, model_sha256, feature_layer, preprocessing, info.

        Raises:
            ValueError: shapes that do not fit, folds that do not partition the rows, a bad quantile.
        """
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).astype(np.int64)
        _check_features(x, y)
        _check_quantile(quantile)
        oof = out_of_fold_scores(x, y, held_out)
        classes, means, precision, shrinkage = _fit_gaussian(x, y)
        info = dict(metadata.pop("info", {}) or {})
        guard = cls(means=means, precision=precision, threshold=float(np.quantile(oof, quantile)), **metadata)
        info.update(
            {
                "classes": _class_names(classes),
                "n_train": int(x.shape[0]),
                "feature_dim": int(x.shape[1]),
                "shrinkage": shrinkage,
                "threshold_source": "out-of-fold",
                "folds": len(held_out),
                "threshold_quantile": float(quantile),
                "train_scores": _summary(guard.score(x)),
                "out_of_fold_scores": _summary(oof),
                "out_of_fold_flagged": int(np.sum(oof > guard.threshold)),
            }
        )
        guard.info = info
        return guard

    def score(self, features: np.ndarray) -> np.ndarray:
        """Min over classes of the Mahalanobis distance, for (N, D) or (D,) features -> (N,)."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if f.shape[1] != self.dim:
            raise ValueError(f"Expected features of dimension {self.dim}, got shape {f.shape}.")
        diffs = f[:, None, :] - self.means[None, :, :]  # (N, K, D)
        squared = np.einsum("nkd,de,nke->nk", diffs, self.precision, diffs)
        return np.sqrt(np.maximum(squared, 0.0)).min(axis=1)

    def is_outlier(self, features: np.ndarray) -> np.ndarray:
        """(N,) booleans: distance above the threshold."""
        return self.score(features) > self.threshold

    # JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": GUARD_FORMAT,
            "version": GUARD_VERSION,
            "model": self.model_name,
            "model_sha256": self.model_sha256,
            "feature_layer": self.feature_layer,
            "preprocessing": self.preprocessing,
            "threshold": self.threshold,
            "means": _round_nested(self.means),
            "precision": _round_nested(self.precision),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureGuard:
        """Inverse of `to_dict`.

        Raises:
            GuardError: not a guard file, a newer version, or missing/inconsistent fields.
        """
        if not isinstance(data, dict) or data.get("format") != GUARD_FORMAT:
            raise GuardError(f"Not an OOD guard file (expected format {GUARD_FORMAT!r}).")
        if int(data.get("version", 0)) > GUARD_VERSION:
            raise GuardError(
                f"The guard file has version {data.get('version')}, newer than this code's {GUARD_VERSION}."
            )
        try:
            return cls(
                means=np.asarray(data["means"], dtype=np.float64),
                precision=np.asarray(data["precision"], dtype=np.float64),
                threshold=float(data["threshold"]),
                model_name=str(data.get("model", "")),
                model_sha256=str(data.get("model_sha256", "")),
                feature_layer=str(data.get("feature_layer", "")),
                preprocessing=str(data.get("preprocessing", "")),
                info=dict(data.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GuardError):
                raise
            raise GuardError(f"The guard file is incomplete or malformed: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write the guard as JSON (parent folders created); return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One line per key, one line per matrix row: readable and diff-friendly, without the
        # one-number-per-line bloat of json.dumps(indent=...).
        entries = []
        for key, value in self.to_dict().items():
            if key in ("means", "precision"):
                rows = ",\n  ".join(json.dumps(row) for row in value)
                entries.append(f"{json.dumps(key)}: [\n  {rows}\n ]")
            else:
                entries.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
        path.write_text("{\n " + ",\n ".join(entries) + "\n}\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureGuard:
        """Read a guard written by `save`.

        Raises:
            GuardError: missing, unreadable or malformed file.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GuardError(
                f"No OOD guard at {path}. Fit it with `python -m covid_xray.ood fit --model <model>`."
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GuardError(f"Could not read the OOD guard {path}: {exc}") from exc
        return cls.from_dict(data)


def _check_features(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"Expected (N >= 2, D) training features, got shape {x.shape}.")
    if y.shape != (x.shape[0],):
        raise ValueError(f"Expected {x.shape[0]} training labels, got shape {y.shape}.")


def _check_quantile(quantile: float) -> None:
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}.")


def _class_names(classes: np.ndarray) -> list[str]:
    return [CLASS_NAMES[c] if 0 <= c < len(CLASS_NAMES) else str(c) for c in classes.tolist()]


def _fit_gaussian(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(classes, class means, precision of the tied Ledoit-Wolf covariance, shrinkage)."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(y)
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    # Tied covariance: pool every image's deviation from its own class mean. With ~250 images
    # and 64..1024 features the sample covariance is (near) singular; Ledoit-Wolf shrinks it
    # towards a scaled identity by the analytically optimal amount.
    residuals = x - means[np.searchsorted(classes, y)]
    lw = LedoitWolf(assume_centered=True).fit(residuals)
    covariance = lw.covariance_
    # A tiny ridge keeps the inverse finite when features are constant (dead ReLUs).
    ridge = 1e-6 * max(float(np.trace(covariance)) / covariance.shape[0], 1e-12)
    precision = np.linalg.inv(covariance + ridge * np.eye(covariance.shape[0]))
    return classes, means, (precision + precision.T) / 2, float(lw.shrinkage_)


def out_of_fold_scores(
    features: np.ndarray, labels: np.ndarray, held_out: Sequence[np.ndarray]
) -> np.ndarray:
    """(N,) distance of each row under a Gaussian fitted WITHOUT its fold (as for an unseen image).

    Raises:
        ValueError: the folds do not cover every row exactly once, or a fold leaves too little to fit.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    n = x.shape[0]
    rows = [np.asarray(f, dtype=np.int64) for f in held_out]
    order = np.sort(np.concatenate(rows)) if rows else np.array([], np.int64)
    if len(held_out) < 2 or not np.array_equal(order, np.arange(n)):
        raise ValueError(f"held_out must be >= 2 folds covering each of the {n} rows exactly once.")
    scores = np.empty(n)
    for fold in held_out:
        keep = np.ones(n, bool)
        keep[fold] = False
        if keep.sum() < 2:
            raise ValueError("A fold leaves fewer than 2 rows to fit on.")
        _, means, precision, _ = _fit_gaussian(x[keep], y[keep])
        scores[fold] = FeatureGuard(means=means, precision=precision, threshold=0.0).score(x[fold])
    return scores


def train_folds(samples: Sequence[Any], folds: int = CV_FOLDS, seed: int = CV_SEED) -> list[np.ndarray]:
    """Held-out index arrays of `data.cross_validation_folds` (duplicates never straddle folds)."""
    from covid_xray import data

    index = {s.relpath: i for i, s in enumerate(samples)}
    splits = data.cross_validation_folds(samples, folds, seed)
    return [np.array([index[s.relpath] for s in val]) for _, val in splits]


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "p95": float(np.quantile(values, 0.95)),
        "max": float(values.max()),
    }


def _round_nested(array: np.ndarray) -> list:
    return [[float(f"{v:.{JSON_DIGITS}g}") for v in row] for row in np.atleast_2d(array).tolist()]


def guard_path(model_name: str, checkpoint_dir: str | os.PathLike | None = None) -> Path:
    """`checkpoints/ood_<model>.json` (the checkpoint folder honours $COVID_XRAY_CHECKPOINT_DIR)."""
    config.get_model_spec(model_name)
    return config.resolve_checkpoint_dir(checkpoint_dir) / f"ood_{model_name}.json"


def feature_layer_name(model, model_name: str | None = None) -> str:
    """The layer whose output the learned check models (see `FEATURE_LAYERS`).

    Unregistered models fall back to the input of their `predictions` layer.

    Raises:
        GuardError: the model has neither the registered layer nor a `predictions` layer.
    """
    name = FEATURE_LAYERS.get(model_name or "") or FEATURE_LAYERS.get(getattr(model, "name", ""))
    layer_names = {layer.name for layer in model.layers}
    if name and name in layer_names:
        return name
    if "predictions" in layer_names:
        inbound = model.get_layer("predictions").input
        producer = getattr(inbound, "_keras_history", None)
        if producer is not None:
            return producer[0].name
    raise GuardError(
        f"Cannot find the feature layer of model {getattr(model, 'name', '?')!r} "
        f"(expected {name!r} or a layer named 'predictions')."
    )


class FeatureExtractor:
    """A model's penultimate features, as one compiled function built once and reused.

    Args:
        model: the classifier (Keras functional model).
        layer: the layer whose output is returned; a convolutional (N, H, W, C) output is
            global-average pooled to (N, C).
    """

    def __init__(self, model, layer: str):
        import keras
        import tensorflow as tf

        self.layer = layer
        sub = keras.Model(model.input, model.get_layer(layer).output, name=f"{model.name}_features")
        self._model = sub
        shape = (None, *tuple(model.input.shape[1:]))
        self._pooled = len(sub.output.shape) == 4

        def features(x):
            out = tf.cast(sub(x, training=False), tf.float32)
            if self._pooled:
                # Feature maps: average over the image, one value per channel.
                return tf.reduce_mean(out, axis=(1, 2))
            return tf.reshape(out, (tf.shape(x)[0], -1))

        # A fixed input signature: traced once, whatever the batch size.
        self._fn = tf.function(
            features, input_signature=[tf.TensorSpec(shape, tf.float32)], reduce_retracing=True
        )

    @property
    def dim(self) -> int:
        out_shape = self._model.output.shape
        return int(out_shape[-1]) if self._pooled else int(np.prod(out_shape[1:]))

    def __call__(self, batch: np.ndarray, batch_size: int = FEATURE_BATCH_SIZE) -> np.ndarray:
        """(N, D) float32 features of an (N, H, W, 3) normalised float32 batch."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        parts = [self._fn(batch[i : i + batch_size]).numpy() for i in range(0, len(batch), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def warm_up(self) -> None:
        """Trace the function now so that the first request does not pay for it."""
        self(np.zeros((1, *INPUT_SHAPE), np.float32))


# ---------------------------------------------------------------------------
# Guard: cheap + learned checks, built once per model.
# ---------------------------------------------------------------------------
class Guard:
    """The OOD guard of one model: cheap checks always, plus the learned check when enabled.

    Args:
        model_name: registered model name (for messages).
        feature_guard: the fitted Mahalanobis model, or None.
        extractor: the model's feature function, or None.
        preprocessing: normalisation mode of the model's input ("unit" or "imagenet").
        disabled_reason: why the learned check is off (logged and kept for the UI).
    """

    def __init__(
        self,
        model_name: str,
        feature_guard: FeatureGuard | None = None,
        extractor: FeatureExtractor | None = None,
        preprocessing: str = "unit",
        disabled_reason: str | None = None,
    ):
        self.model_name = model_name
        self.display_name = (
            config.MODELS[model_name].display_name if model_name in config.MODELS else model_name
        )
        self.preprocessing = preprocessing
        self.feature_guard = feature_guard if extractor is not None else None
        self.extractor = extractor if feature_guard is not None else None
        if self.feature_guard is None and disabled_reason is None:
            disabled_reason = "no fitted feature guard"
        self.disabled_reason = disabled_reason if self.feature_guard is None else None

    @property
    def learned_enabled(self) -> bool:
        return self.feature_guard is not None

    def features(self, model_input: np.ndarray) -> np.ndarray:
        """(N, D) features of resized uint8 images (or already-normalised float32 batches)."""
        if self.extractor is None:
            raise GuardError(f"The learned check of {self.display_name} is disabled: {self.disabled_reason}.")
        x = np.asarray(model_input)
        if x.ndim == 3:
            x = x[None]
        if x.dtype == np.uint8:
            x = preprocessing.normalize(x, self.preprocessing)
        return self.extractor(x)

    def check(
        self, rgb: np.ndarray, model_input: np.ndarray | None = None, *, features: np.ndarray | None = None
    ) -> OODResult:
        """Run every check on one image.

        Args:
            rgb: the decoded uint8 HxWx3 image at its own size (what `imaging.load_image` gives).
            model_input: the same image resized for the model: uint8 224x224x3
                (`preprocessing.resize_for_model(rgb)`, normalised here with the model's mode)
                or an already-normalised float32 224x224x3 array. None: resized here.
            features: this image's (D,) features when the caller already has them (the
                explainer computes them in its forward pass); None runs the feature function.

        Raises:
            ValueError: `rgb` is not a uint8 HxWx3 array.
        """
        flags, warnings, scores = cheap_checks(rgb)
        learned = False
        if self.learned_enabled:
            if model_input is None:
                model_input = preprocessing.resize_for_model(np.asarray(rgb))
            try:
                if features is None:
                    features = self.features(model_input)
                features = np.asarray(features, np.float32).reshape(1, -1)
                distance = float(self.feature_guard.score(features)[0])
            except Exception as exc:  # noqa: BLE001 - the guard warns; it must never break a prediction
                logger.warning("OOD feature check of %s failed: %s", self.display_name, exc)
            else:
                learned = math.isfinite(distance)
                scores["mahalanobis"] = distance
                scores["mahalanobis_threshold"] = self.feature_guard.threshold
                if learned and distance > self.feature_guard.threshold:
                    flags.append(LEARNED_FLAG)
                    warnings.append(
                        f"The image looks unlike the chest X-rays {self.display_name} was trained on "
                        f"(feature distance {distance:.1f}, alarm above {self.feature_guard.threshold:.1f})."
                    )
        return OODResult(
            is_xray_likely=not flags, warnings=warnings, scores=scores, flags=flags, learned_check=learned
        )

    def warm_up(self) -> None:
        if self.extractor is not None:
            self.extractor.warm_up()


def _checkpoint_sha(path: Path, metadata: dict) -> str:
    from covid_xray.checkpoints import sha256_file

    if metadata.get("sha256"):
        return str(metadata["sha256"])
    return sha256_file(path) if path.exists() else ""


def load_guard(
    model_name: str,
    checkpoint_dir: str | os.PathLike | None = None,
    *,
    model=None,
    metadata: dict | None = None,
    path: str | os.PathLike | None = None,
    warm_up: bool = True,
) -> Guard | None:
    """Build a model's guard once (feature function compiled and warmed) for reuse per request.

    Never raises for a missing or stale guard file: the learned check is then disabled (with
    a logged warning, and the reason in `Guard.disabled_reason`) and the cheap checks still run.

    Args:
        model_name: a registered model ("davidnet", "chexnet").
        checkpoint_dir: folder of `<model>.keras` and `ood_<model>.json`.
        model: the already-loaded classifier (shares its weights); None loads the checkpoint.
        metadata: the checkpoint's JSON sidecar when `model` is given (for its sha256 and
            preprocessing); None reads it from `checkpoint_dir`.
        path: the guard JSON (default `guard_path(model_name, checkpoint_dir)`).
        warm_up: trace the feature function now.

    Returns:
        The guard, or None when the model's checkpoint cannot be loaded (no predictions to guard;
        `check_image` still gives the cheap checks).

    Raises:
        ValueError: unknown model name.
    """
    from covid_xray.checkpoints import CheckpointError, load_checkpoint, read_metadata

    spec = config.get_model_spec(model_name)
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    if model is None:
        try:
            model, metadata = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            logger.warning("No OOD guard for %s: %s", spec.display_name, exc)
            return None
    elif metadata is None:
        metadata = read_metadata(checkpoint)
    metadata = metadata or {}
    mode = preprocessing.checkpoint_mode(model_name, metadata)
    guard_file = Path(path) if path else guard_path(model_name, checkpoint_dir)

    def disabled(reason: str) -> Guard:
        logger.warning("OOD learned check of %s disabled: %s", spec.display_name, reason)
        return Guard(model_name, preprocessing=mode, disabled_reason=reason)

    try:
        feature_guard = FeatureGuard.load(guard_file)
    except GuardError as exc:
        return disabled(str(exc))
    model_sha = _checkpoint_sha(checkpoint, metadata)
    if not model_sha or feature_guard.model_sha256 != model_sha:
        return disabled(
            f"{guard_file.name} was fitted for model sha256 {feature_guard.model_sha256[:12] or '?'}..., "
            f"but the loaded checkpoint is {model_sha[:12] or 'unknown'}...; refit it with "
            f"`python -m covid_xray.ood fit --model {model_name}`."
        )
    if feature_guard.preprocessing and feature_guard.preprocessing != mode:
        return disabled(
            f"{guard_file.name} was fitted on {feature_guard.preprocessing!r} inputs, "
            f"the model uses {mode!r}."
        )
    try:
        layer = feature_guard.feature_layer or feature_layer_name(model, model_name)
        extractor = FeatureExtractor(model, layer)
        if extractor.dim != feature_guard.dim:
            return disabled(
                f"layer {layer!r} gives {extractor.dim} features, the guard expects {feature_guard.dim}."
            )
        if warm_up:
            extractor.warm_up()
    except (GuardError, ValueError, KeyError) as exc:
        return disabled(f"cannot build the feature function: {exc}")
    return Guard(model_name, feature_guard, extractor, preprocessing=mode)


# ---------------------------------------------------------------------------
# Fitting.
# ---------------------------------------------------------------------------
def _split_settings(metadata: dict) -> tuple[str, float, int]:
    cfg = metadata.get("config") or {}
    protocol = str(cfg.get("protocol") or metadata.get("protocol") or "default")
    return protocol, float(cfg.get("val_fraction", 0.2)), int(cfg.get("seed", 42))


def fit_guard(
    model_name: str,
    checkpoint_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    quantile: float = DEFAULT_THRESHOLD_QUANTILE,
    layer: str | None = None,
    out: str | os.PathLike | None = None,
) -> tuple[FeatureGuard, Path]:
    """Fit the learned check of a trained checkpoint and save `checkpoints/ood_<model>.json`.

    Class means and covariance come from every image of the train folder; the threshold is
    the `quantile` of their out-of-fold distances (`FeatureGuard.fit_out_of_fold` over
    `train_folds`). The test split is never read.

    Args:
        layer: feature layer (default `feature_layer_name(model)`); convolutional outputs are
            global-average pooled.

    Raises:
        CheckpointError: missing or corrupted checkpoint.
        DatasetNotFoundError: no dataset.
        GuardError: no usable feature layer.
    """
    from covid_xray import data

    model, metadata, checkpoint, mode = _load_model(model_name, checkpoint_dir)
    spec = config.get_model_spec(model_name)
    layer = layer or feature_layer_name(model, model_name)
    if layer not in {lay.name for lay in model.layers}:
        raise GuardError(f"{spec.display_name} has no layer named {layer!r}.")
    extractor = FeatureExtractor(model, layer)
    samples = data.list_samples(data_dir, "train")
    t0 = time.perf_counter()
    images, labels = data.load_arrays(samples)
    features = extractor(preprocessing.normalize(images, mode))
    logger.info(
        "Features of %d train-folder images from layer %r (%d-d) in %.1f s",
        len(features),
        layer,
        features.shape[1],
        time.perf_counter() - t0,
    )
    guard = FeatureGuard.fit_out_of_fold(
        features,
        labels,
        train_folds(samples),
        quantile=quantile,
        model_name=model_name,
        model_sha256=_checkpoint_sha(checkpoint, metadata),
        feature_layer=layer,
        preprocessing=mode,
        info={
            "checkpoint": checkpoint.name,
            "fitted_on": "train folder",
            "cv": {"folds": CV_FOLDS, "seed": CV_SEED, "duplicate_aware": True},
            "model_protocol": _split_settings(metadata)[0],
            "dataset_manifest": data.dataset_manifest_hash(samples),
        },
    )
    path = guard.save(Path(out) if out else guard_path(model_name, checkpoint_dir))
    return guard, path


def _load_model(model_name: str, checkpoint_dir) -> tuple[Any, dict, Path, str]:
    """(model, sidecar, checkpoint path, preprocessing mode) of a trained checkpoint."""
    from covid_xray.checkpoints import load_checkpoint

    spec = config.get_model_spec(model_name)
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    model, metadata = load_checkpoint(checkpoint)
    return model, metadata, checkpoint, preprocessing.checkpoint_mode(model_name, metadata)


# ---------------------------------------------------------------------------
# Synthesised non-X-ray inputs (for `measure`).
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticCase:
    """One generated non-X-ray input: its category, a name, and the encoded file bytes."""

    category: str
    name: str
    content: bytes
    note: str


# Categories of the non-X-ray set; the hit rate is reported per category and overall.
NON_XRAY_CATEGORIES = ("photo", "screenshot", "scene", "limb", "skull", "pattern", "corpus")
# Cases of tests/corpus.py that decode to something other than a chest X-ray (ramps, flat
# grey, a bright square, a colour photo). Its other decodable cases draw a synthetic
# chest-like picture; they are scored separately as "corpus_chest_like", outside the hit rate.
CORPUS_NON_XRAY = (
    "png_gray16",
    "tiff_gray16",
    "png_rgba",
    "gif_animated",
    "jpeg_exif_rotated",
    "photo_colour",
    "dicom_mono2_16bit",
    "dicom_window",
)


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(rgb)
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=88)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def _smooth_field(rng: np.random.Generator, height: int, width: int, channels: int, cells: int) -> np.ndarray:
    """Random values on a coarse grid, upsampled smoothly: 0..1 float32 (H, W, C)."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth.reshape(height, width, channels), 0, 1)


def _photo(rng: np.random.Generator, height: int, width: int, variant: int) -> np.ndarray:
    """A colour photo-like picture: smooth colour fields or gradients, plus sensor noise."""
    if variant % 2 == 0:
        img = _smooth_field(rng, height, width, 3, cells=int(rng.integers(3, 8)))
    else:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        t = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1) / 3
        start, end = rng.random(3), rng.random(3)
        img = start[None, None, :] * (1 - t[..., None]) + end[None, None, :] * t[..., None]
    img = img * 255 + rng.normal(0, 6, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _screenshot(rng: np.random.Generator, height: int, width: int, dark: bool) -> np.ndarray:
    """A UI/document screenshot: flat background, a title bar, boxes, lines and text."""
    background = (32, 33, 36) if dark else (255, 255, 255)
    ink = (230, 230, 230) if dark else (20, 20, 20)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    bar = tuple(int(c) for c in rng.integers(30, 220, 3))
    cv2.rectangle(img, (0, 0), (width - 1, max(24, height // 18)), bar, thickness=-1)
    scale = max(0.4, width / 1600)
    row = max(40, height // 12)
    y = row + 30
    while y < height - 20:
        words = " ".join(
            "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(3, 9))))
            for _ in range(int(rng.integers(3, 9)))
        )
        cv2.putText(img, words, (20, y), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)
        if rng.random() < 0.3:
            x0 = int(rng.integers(0, width // 2))
            box = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(img, (x0, y + 8), (x0 + int(rng.integers(60, width // 2)), y + row - 12), box, 2)
        if rng.random() < 0.3:
            cv2.line(img, (10, y + row // 2), (width - 10, y + row // 2), ink, 1)
        y += row
    return img


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A saturated outdoor-scene-like picture: sky gradient, green ground, sun, tree blobs."""
    img = np.zeros((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.4, 0.65))
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None]
    img[:horizon] = (np.array([40, 110, 230]) * (1 - t) + np.array([170, 210, 250]) * t)[:, None, :]
    ground = _smooth_field(rng, height - horizon, width, 1, cells=6)
    img[horizon:] = np.array([40, 150, 50]) * (0.6 + 0.6 * ground)
    sun = (int(rng.integers(width // 8, width - width // 8)), int(rng.integers(20, max(21, horizon // 2))))
    cv2.circle(img, sun, max(10, width // 16), (255, 220, 60), -1)
    for _ in range(int(rng.integers(3, 8))):
        centre = (int(rng.integers(0, width)), horizon + int(rng.integers(-height // 10, height // 10)))
        axes = (int(rng.integers(width // 30, width // 10)), int(rng.integers(height // 15, height // 6)))
        cv2.ellipse(img, centre, axes, 0, 0, 360, (20, int(rng.integers(90, 160)), 30), -1)
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _grey(img: np.ndarray, rng: np.random.Generator, noise: float = 4.0) -> np.ndarray:
    """Blur a drawn greyscale radiograph-like picture, add noise, return it as RGB uint8."""
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 2.0)
    img += rng.normal(0, noise, img.shape)
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _limb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A hand/limb-radiograph-like picture: grey soft tissue and elongated bright bones on black."""
    img = np.full((height, width), 12, np.float32)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * width
    tilt = rng.uniform(-15, 15)
    cv2.ellipse(
        img, (int(cx), int(height * 0.6)), (int(width * 0.22), int(height * 0.45)), tilt, 0, 360, 95, -1
    )
    # Two long bones (forearm) and five finger rays with short phalanges.
    for dx in (-0.06, 0.06):
        centre = (int(cx + dx * width), int(height * 0.75))
        cv2.ellipse(img, centre, (int(width * 0.035), int(height * 0.22)), tilt, 0, 360, 215, -1)
    for finger in range(5):
        x = cx + (finger - 2) * width * 0.07
        for segment in range(3):
            y = height * (0.42 - 0.12 * segment)
            cv2.ellipse(img, (int(x), int(y)), (int(width * 0.02), int(height * 0.05)), tilt, 0, 360, 200, -1)
    return _grey(img, rng)


def _skull(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A skull-radiograph-like picture: a bright elliptical vault, grey brain, dark orbits."""
    img = np.full((height, width), 10, np.float32)
    centre = (width // 2, int(height * 0.48))
    axes = (int(width * rng.uniform(0.32, 0.4)), int(height * rng.uniform(0.38, 0.45)))
    cv2.ellipse(img, centre, axes, 0, 0, 360, 225, -1)
    inner = (int(axes[0] * 0.9), int(axes[1] * 0.9))
    cv2.ellipse(img, centre, inner, 0, 0, 360, 110, -1)
    texture = _smooth_field(rng, height, width, 1, cells=12)[..., 0]
    img += (texture - 0.5) * 40 * (img > 50)
    for side in (-1, 1):
        orbit = (centre[0] + side * axes[0] // 3, centre[1] + axes[1] // 4)
        cv2.ellipse(img, orbit, (axes[0] // 6, axes[1] // 8), 0, 0, 360, 55, -1)
    cv2.ellipse(
        img, (centre[0], centre[1] + int(axes[1] * 0.85)), (axes[0] // 2, axes[1] // 5), 0, 0, 180, 200, 8
    )
    return _grey(img, rng)


def _patterns(rng: np.random.Generator) -> list[tuple[str, np.ndarray, str]]:
    """Checkerboards, uniform grey and pure noise (name, RGB, note)."""
    out = []
    for square in (16, 64):
        y, x = np.mgrid[0:512, 0:512]
        board = np.where((x // square + y // square) % 2 == 0, 230, 25).astype(np.uint8)
        out.append(
            (f"checkerboard_{square}", np.repeat(board[..., None], 3, axis=2), f"{square}-pixel checkerboard")
        )
    for level in (128, 40):
        out.append(
            (f"uniform_{level}", np.full((480, 480, 3), level, np.uint8), f"uniform grey level {level}")
        )
    uniform_noise = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    out.append(("noise_uniform", np.repeat(uniform_noise[..., None], 3, axis=2), "uniform white noise, grey"))
    gauss = np.clip(rng.normal(128, 40, (512, 512)), 0, 255).astype(np.uint8)
    out.append(("noise_gaussian", np.repeat(gauss[..., None], 3, axis=2), "Gaussian noise around mid-grey"))
    return out


def synthetic_non_xrays(seed: int = 0) -> list[SyntheticCase]:
    """The generated non-X-ray set (without the corpus cases): 37 encoded images.

    Colour photos (JPEG), screenshots (PNG, light and dark themes, desktop and phone shapes),
    saturated outdoor scenes (JPEG), greyscale non-chest radiograph-like images (limbs and
    skulls, JPEG) and patterns (checkerboards, uniform grey, noise; PNG).
    """
    rng = np.random.default_rng(seed)
    cases: list[SyntheticCase] = []
    photo_sizes = [
        (480, 640),
        (640, 480),
        (600, 800),
        (768, 1024),
        (512, 512),
        (720, 960),
        (900, 600),
        (480, 720),
    ]
    for i, (h, w) in enumerate(photo_sizes):
        kind = "smooth colour field" if i % 2 == 0 else "colour gradient"
        cases.append(
            SyntheticCase("photo", f"photo_{i}", _encode(_photo(rng, h, w, i), "JPEG"), f"{kind}, {w}x{h}")
        )
    screen_sizes = [
        (800, 1280),
        (1080, 1920),
        (768, 1024),
        (900, 1440),
        (2340, 1080),
        (1200, 800),
        (600, 800),
        (1024, 1024),
    ]
    for i, (h, w) in enumerate(screen_sizes):
        dark = i in (3, 6)
        theme = "dark" if dark else "light"
        img = _screenshot(rng, h, w, dark)
        cases.append(
            SyntheticCase("screenshot", f"screenshot_{i}", _encode(img, "PNG"), f"{theme} UI, {w}x{h}")
        )
    for i, (h, w) in enumerate([(480, 640), (600, 800), (720, 960), (512, 512), (640, 480), (768, 1024)]):
        cases.append(
            SyntheticCase(
                "scene", f"scene_{i}", _encode(_scene(rng, h, w), "JPEG"), f"outdoor scene, {w}x{h}"
            )
        )
    for i, (h, w) in enumerate([(640, 512), (800, 600), (512, 512), (700, 560), (600, 480)]):
        cases.append(
            SyntheticCase(
                "limb", f"limb_{i}", _encode(_limb(rng, h, w), "JPEG"), f"hand/forearm-like, {w}x{h}"
            )
        )
    for i, (h, w) in enumerate([(640, 512), (512, 512), (600, 560), (700, 600)]):
        cases.append(
            SyntheticCase("skull", f"skull_{i}", _encode(_skull(rng, h, w), "JPEG"), f"skull-like, {w}x{h}")
        )
    for name, img, note in _patterns(rng):
        cases.append(SyntheticCase("pattern", name, _encode(img, "PNG"), note))
    return cases


def _corpus_cases(directory: Path) -> tuple[list[tuple[str, Path, str]], list[tuple[str, Path, str]]]:
    """Decodable cases of tests/corpus.py: (non-X-ray cases, chest-like cases), each (name, path, note).

    Returns two empty lists (with a logged warning) when the tests folder is not importable,
    e.g. in an installed package.
    """
    try:
        from tests.corpus import build_corpus
    except ImportError as exc:
        logger.warning("tests/corpus.py not importable (%s); the corpus category is left out.", exc)
        return [], []
    cases = [c for c in build_corpus(directory, include_large=False) if c.expect == "ok"]
    non_xray = [(c.name, c.path, c.note) for c in cases if c.name in CORPUS_NON_XRAY]
    chest_like = [(c.name, c.path, c.note) for c in cases if c.name not in CORPUS_NON_XRAY]
    return non_xray, chest_like


# ---------------------------------------------------------------------------
# Measurement.
# ---------------------------------------------------------------------------
def _example_files() -> set[str]:
    """Dataset-relative files of the app's curated examples (examples/examples.csv)."""
    import csv

    if not config.EXAMPLES_FILE.exists():
        return set()
    with config.EXAMPLES_FILE.open(newline="", encoding="utf-8") as handle:
        return {row["file"] for row in csv.DictReader(handle)}


def _train_out_of_fold_rows(guard: Guard, samples: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows like `_score_rows` for the train folder: cheap checks as usual, the learned check with
    each image's OUT-OF-FOLD distance (the guard itself was fitted on these images)."""
    from covid_xray import data

    rows = []
    for s in samples:
        flags, _, _ = cheap_checks(imaging.load_image(s.path, draft_size=DECODE_DRAFT_SIZE))
        rows.append(
            {"category": "train", "name": s.relpath, "note": s.label, "cheap": bool(flags), "flags": flags}
        )
    distances: list[float | None] = [None] * len(rows)
    if guard.learned_enabled:
        images, labels = data.load_arrays(samples)
        distances = out_of_fold_scores(guard.features(images), labels, train_folds(samples)).tolist()
    for row, distance in zip(rows, distances, strict=True):
        learned = distance is not None and distance > guard.feature_guard.threshold
        row["flags"] = [*row["flags"], *([LEARNED_FLAG] if learned else [])]
        row.update(
            learned=learned,
            flagged=bool(row["flags"]),
            mahalanobis=None if distance is None else round(distance, 3),
        )
    return rows


def _rate(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def _score_rows(guard: Guard, items: Sequence[tuple[str, str, Any, str]]) -> list[dict[str, Any]]:
    """Run the guard on (category, name, source, note) items; one row per item."""
    rows = []
    for category, name, source, note in items:
        rgb = imaging.load_image(source, draft_size=DECODE_DRAFT_SIZE)
        result = guard.check(rgb, preprocessing.resize_for_model(rgb))
        cheap = [f for f in result.flags if f != LEARNED_FLAG]
        rows.append(
            {
                "category": category,
                "name": name,
                "note": note,
                "size": f"{rgb.shape[1]}x{rgb.shape[0]}",
                "flagged": not result.is_xray_likely,
                "cheap": bool(cheap),
                "learned": LEARNED_FLAG in result.flags,
                "flags": result.flags,
                "mahalanobis": round(result.scores["mahalanobis"], 3)
                if "mahalanobis" in result.scores
                else None,
            }
        )
    return rows


def _rates(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "combined": _rate([r["flagged"] for r in rows]),
        "cheap_only": _rate([r["cheap"] for r in rows]),
        "learned_only": _rate([r["learned"] for r in rows]),
    }


def measure(
    model_name: str,
    checkpoint_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """False-alarm rate on the official test split and hit rate on the synthesised non-X-ray set.

    Raises:
        CheckpointError: the model's checkpoint is missing or corrupted.
        DatasetNotFoundError: no dataset.
    """
    from covid_xray import data
    from covid_xray.checkpoints import load_checkpoint

    spec = config.get_model_spec(model_name)
    model, metadata = load_checkpoint(spec.checkpoint_path(checkpoint_dir))
    guard = load_guard(model_name, checkpoint_dir, model=model, metadata=metadata)
    if guard is None:  # only when the checkpoint is unloadable, which load_checkpoint ruled out
        raise GuardError(f"Could not build the OOD guard of {spec.display_name}.")

    test = data.list_samples(data_dir, "test")
    test_rows = _score_rows(guard, [("test", s.relpath, s.path, s.label) for s in test])
    train_rows = _train_out_of_fold_rows(guard, data.list_samples(data_dir, "train"))
    examples = _example_files()
    example_rows = [r for r in test_rows if r["name"] in examples]
    leaked: set[str] = set()
    audit_path = data.default_audit_path()
    if audit_path.exists():
        leaked = data.leaked_test_files(data.AuditReport.from_json(audit_path))
    clean_rows = [r for r in test_rows if r["name"] not in leaked]

    items: list[tuple[str, str, Any, str]] = [
        (c.category, c.name, c.content, c.note) for c in synthetic_non_xrays(seed)
    ]
    with tempfile.TemporaryDirectory(prefix="ood-corpus-") as tmp:
        corpus_non_xray, corpus_chest = _corpus_cases(Path(tmp))
        items += [("corpus", name, path.read_bytes(), note) for name, path, note in corpus_non_xray]
        chest_items = [
            ("corpus_chest_like", name, path.read_bytes(), note) for name, path, note in corpus_chest
        ]
    ood_rows = _score_rows(guard, items)
    chest_rows = _score_rows(guard, chest_items)

    fg = guard.feature_guard
    return {
        "model": model_name,
        "model_sha256": metadata.get("sha256", ""),
        "learned_check": guard.learned_enabled,
        "learned_check_disabled_reason": guard.disabled_reason,
        "feature_layer": fg.feature_layer if fg else None,
        "threshold": fg.threshold if fg else None,
        "threshold_quantile": fg.info.get("threshold_quantile") if fg else None,
        "val_scores": fg.info.get("val_scores") if fg else None,
        "test_false_alarm": {
            "official": _rates(test_rows),
            "leakage_free": _rates(clean_rows),
            "flagged_files": [
                {"file": r["name"], "flags": r["flags"], "mahalanobis": r["mahalanobis"]}
                for r in test_rows
                if r["flagged"]
            ],
        },
        "real_xray_false_alarm": {
            "train_out_of_fold": _rates(train_rows),
            "official_test": _rates(test_rows),
            "curated_examples": _rates(example_rows),
            "all_real": _rates([*train_rows, *test_rows]),
            "flagged_train_files": [
                {"file": r["name"], "flags": r["flags"], "mahalanobis": r["mahalanobis"]}
                for r in train_rows
                if r["flagged"]
            ],
        },
        "non_xray_hit_rate": {
            "overall": _rates(ood_rows),
            "per_category": {
                c: _rates([r for r in ood_rows if r["category"] == c])
                for c in NON_XRAY_CATEGORIES
                if any(r["category"] == c for r in ood_rows)
            },
        },
        "corpus_chest_like_flagged": _rates(chest_rows),
        "non_xray_cases": ood_rows,
        "corpus_chest_like_cases": chest_rows,
        "settings": {
            "colour_spread_max": COLOUR_SPREAD_MAX,
            "saturation_max": SATURATION_MAX,
            "colourful_fraction_max": COLOURFUL_FRACTION_MAX,
            "uniform_std_max": UNIFORM_STD_MAX,
            "dark_fraction_max": DARK_FRACTION_MAX,
            "bright_fraction_max": BRIGHT_FRACTION_MAX,
            "grey_levels_min": GREY_LEVELS_MIN,
            "top_level_fraction_max": TOP_LEVEL_FRACTION_MAX,
            "neighbour_correlation_min": NEIGHBOUR_CORRELATION_MIN,
            "plane_fit_r2_max": PLANE_FIT_R2_MAX,
            "aspect_ratio_range": [ASPECT_RATIO_MIN, ASPECT_RATIO_MAX],
            "synthetic_seed": seed,
        },
    }


def _fmt(rate: float | None) -> str:
    return "   n/a" if rate is None else f"{rate:6.1%}"


def format_table(result: dict[str, Any]) -> str:
    """The measurement as a plain-text table."""
    lines = [
        f"OOD guard of {result['model']}: learned check "
        + (
            f"on (layer {result['feature_layer']}, threshold {result['threshold']:.2f})"
            if result["learned_check"]
            else f"OFF ({result['learned_check_disabled_reason']})"
        ),
        f"{'set':34s} {'n':>4s} {'combined':>9s} {'cheap':>7s} {'learned':>8s}",
    ]

    def row(label: str, rates: dict[str, Any]) -> None:
        lines.append(
            f"{label:34s} {rates['n']:4d} {_fmt(rates['combined']):>9s} "
            f"{_fmt(rates['cheap_only']):>7s} {_fmt(rates['learned_only']):>8s}"
        )

    real = result["real_xray_false_alarm"]
    row("false alarms: train, out of fold", real["train_out_of_fold"])
    row("false alarms: official test", result["test_false_alarm"]["official"])
    row("false alarms: leakage-free test", result["test_false_alarm"]["leakage_free"])
    row("false alarms: curated examples", real["curated_examples"])
    row("false alarms: all real X-rays", real["all_real"])
    row("hits: all non-X-ray inputs", result["non_xray_hit_rate"]["overall"])
    for category, rates in result["non_xray_hit_rate"]["per_category"].items():
        row(f"  hits: {category}", rates)
    row("flagged: corpus chest-like (info)", result["corpus_chest_like_flagged"])
    return "\n".join(lines)


def write_report(result: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Merge one model's measurement into `reports/ood.json` (other models' entries kept)."""
    path = Path(path) if path else config.resolve_reports_dir() / REPORT_FILENAME
    report: dict[str, Any] = {}
    if path.exists():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            logger.warning("Overwriting unreadable %s", path)
    report.setdefault("models", {})[result["model"]] = result
    report["description"] = (
        "OOD guard measurement (python -m covid_xray.ood measure): fraction of real chest X-rays "
        "flagged (false alarms: the train folder with out-of-fold feature distances, the official "
        "and leakage-free test, the curated examples, all real images together) and of synthesised "
        "non-X-ray inputs flagged (hits), for the cheap checks, the learned feature-distance check, "
        "and both combined."
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------
def _cmd_fit(args: argparse.Namespace) -> int:
    guard, path = fit_guard(
        args.model, args.checkpoint_dir, args.data_dir, quantile=args.quantile, layer=args.layer, out=args.out
    )
    info = guard.info
    oof = info["out_of_fold_scores"]
    print(
        f"{args.model}: layer {guard.feature_layer} ({guard.dim}-d), {info['n_train']} train-folder images, "
        f"shrinkage {info['shrinkage']:.3f}"
    )
    print(
        f"  out-of-fold distances ({info['folds']} folds) median {oof['median']:.2f}, max {oof['max']:.2f}; "
        f"threshold (quantile {args.quantile}) = {guard.threshold:.3f}, above it: "
        f"{info['out_of_fold_flagged']} of {info['n_train']}; written to {path}"
    )
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    result = measure(args.model, args.checkpoint_dir, args.data_dir, seed=args.seed)
    print(format_table(result))
    path = write_report(result, args.out)
    print(f"Written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m covid_xray.ood`."""
    parser = argparse.ArgumentParser(prog="python -m covid_xray.ood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", choices=sorted(config.MODELS), default="davidnet")
    common.add_argument("--data-dir", default=None, help=f"dataset root (default ${config.DATA_ENV_VAR})")
    common.add_argument(
        "--checkpoint-dir",
        default=None,
        help=f"checkpoint folder (default ${config.CHECKPOINT_DIR_ENV_VAR} or checkpoints/)",
    )
    p = sub.add_parser(
        "fit", parents=[common], help="fit the learned check; writes checkpoints/ood_<model>.json"
    )
    p.add_argument(
        "--quantile",
        type=float,
        default=DEFAULT_THRESHOLD_QUANTILE,
        help="quantile of the train folder's out-of-fold distances that sets the threshold",
    )
    p.add_argument(
        "--layer", default=None, help="feature layer (default: conv3 / head_flatten; conv maps are pooled)"
    )
    p.add_argument("--out", default=None, help="guard JSON path (default <checkpoint dir>/ood_<model>.json)")
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser(
        "measure", parents=[common], help="false alarms on test, hits on synthesised non-X-rays"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthesised non-X-ray set")
    p.add_argument("--out", default=None, help="report path (default <reports dir>/ood.json)")
    p.set_defaults(func=_cmd_measure)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from covid_xray.checkpoints import CheckpointError
    from covid_xray.data import DatasetNotFoundError

    try:
        return args.func(args)
    except (CheckpointError, DatasetNotFoundError, GuardError, imaging.ImageDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
