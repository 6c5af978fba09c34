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

Fitted and measured by `python -m covid_xray.studies.ood fit|measure` (`covid_xray.studies.ood`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from covid_xray import config, preprocessing
from covid_xray.config import CLASS_NAMES, INPUT_SHAPE

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
# The representation each model's Mahalanobis guard uses is `ModelSpec.feature_layer` (maps are
# globally averaged). DavidNet: its last convolutional block, conv3 (64 channels, also the
# Grad-CAM layer). Its dense layers were tried first: dense2 put real adult X-rays with burned-in
# text (test/Covid/0102.jpeg, a curated example) further out than greyscale limb and skull
# images, because those layers encode "which class", not "a chest film"; on the pooled conv3
# maps every test image lies below the out-of-fold threshold and every synthesised non-X-ray
# above it (reports/ood.json). CheXNet: the 1024-d globally pooled DenseNet121 features, i.e.
# the input of the small trained head; they come from the pretrained base, so they describe
# "chest radiograph or not" far more broadly than a head fitted on ~250 images.
# The alarm threshold is this quantile of the train folder's out-of-fold distances: about 1%
# of real chest X-rays like the training ones are expected to raise the alarm.
DEFAULT_THRESHOLD_QUANTILE = 0.99
# Out-of-fold distances: a duplicate-aware stratified split of the train folder (data.cross_validation_folds).
CV_FOLDS = 5
CV_SEED = 0
FEATURE_BATCH_SIZE = 32
GUARD_FORMAT = "covid-xray-ood-guard"
GUARD_VERSION = 1
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
                f"No OOD guard at {path}. Fit it with `{config.OOD_COMMAND} fit --model <model>`."
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
    """The layer whose output the learned check models (`ModelSpec.feature_layer`).

    Unregistered models fall back to the input of their `predictions` layer.

    Raises:
        GuardError: the model has neither the registered layer nor a `predictions` layer.
    """
    spec = config.MODELS.get(model_name or "") or config.MODELS.get(getattr(model, "name", ""))
    name = spec.feature_layer if spec else None
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

    def __call__(
        self, batch: np.ndarray, batch_size: int = FEATURE_BATCH_SIZE, mode: str | None = None
    ) -> np.ndarray:
        """(N, D) float32 features of an (N, H, W, 3) batch: normalised float32, or uint8 model
        inputs normalised with `mode` one batch at a time (a float32 copy of a whole training set
        would add ~150 MB to the peak memory)."""
        batch = np.asarray(batch)
        if batch.ndim == 3:
            batch = batch[None]
        raw = batch.dtype == np.uint8
        if raw and mode is None:
            raise GuardError("uint8 images need the preprocessing mode to be normalised.")
        parts = []
        for i in range(0, len(batch), batch_size):
            part = batch[i : i + batch_size]
            part = preprocessing.normalize(part, mode) if raw else part
            parts.append(self._fn(np.asarray(part, np.float32)).numpy())
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
        return self.extractor(model_input, mode=self.preprocessing)

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
            f"`{config.OOD_COMMAND} fit --model {model_name}`."
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
