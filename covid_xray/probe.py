"""What-if probe: re-run a model on masked copies of its input and show how each class moves.

A heatmap says where the gradient is; the probe asks the model directly: "what do you answer
when this part of the film is gone?". If hiding the border (burned-in text, side markers, the
collimation edge) changes the answer while hiding the chest does not, the model reads a shortcut.

Masks (`MASKS`, on the 224x224 model input, as fractions of its side so any size works):

- `border`: a band along the four edges (`BORDER_BAND`) plus square corners (`CORNER`), where
  hospitals burn in text, dates and L/R markers;
- `below_lungs`: the bottom band (`BELOW_LUNGS_FROM` down): abdomen, the pediatric films'
  diaper and hands, detector labels;
- `outside_chest`: everything outside the central chest box (`CHEST_BOX`);
- `chest`: the central chest box itself, leaving only the border ("only the border").

Masking method: the masked pixels are replaced by the image's own median grey (per channel),
with the mask's edge feathered by a Gaussian of `FEATHER_SIGMA` pixels. Why: a black (zero)
fill paints a sharp black frame or box, itself a strong, out-of-distribution feature
(collimation borders are black, so it even mimics one film type); noise adds texture the model
never saw; a blur keeps the region's coarse brightness, so a bright label or a dark frame would
survive as a smudge and the shortcut it carries with it. The median grey carries no structure,
sits inside the film's own intensity range, and the feathered edge adds no new sharp contour.

All masks of one image (plus the unmasked image) go through the model in ONE batched forward
pass. Usage::

    probe = Probe(model, "unit", name="davidnet", display_name="DavidNet")
    result = probe.run(model_input)          # uint8 224x224x3 (preprocessing.resize_for_model)
    result.outcomes[0].delta["Covid"], result.outcomes[0].flipped
    flip_sentences(result)   # ["Masking the image border changes DavidNet's answer from COVID-19 to Normal."]
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np

from covid_xray import preprocessing
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, IMAGE_SIZE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# ---------------------------------------------------------------------------
# Configurable parameters (fractions of the image side).
# ---------------------------------------------------------------------------
BORDER_BAND = 0.08  # 18 px at 224: burned-in text and markers sit in the outer band
CORNER = 0.20  # 45 px corner squares: dates, hospital names, L/R markers
BELOW_LUNGS_FROM = 0.80  # rows from 80% down (the bottom 45 px at 224)
# (top, left, bottom, right): the central chest box of a frontal film resized to a square.
CHEST_BOX = (0.10, 0.14, 0.82, 0.86)
FEATHER_SIGMA = 2.0  # pixels at 224; the edge of a mask ramps over about 2 sigma each side
FILL_METHOD = "median grey of the image (per channel), mask edge feathered by a 2 px Gaussian"


@dataclass(frozen=True)
class MaskSpec:
    """One mask: its code, the phrase that completes "Masking ...", and a short description."""

    name: str
    phrase: str
    description: str


MASKS: tuple[MaskSpec, ...] = (
    MaskSpec("border", "the image border", "border band and corners (burned-in text, side markers)"),
    MaskSpec("below_lungs", "the region below the lungs", "bottom band below the lungs"),
    MaskSpec("outside_chest", "everything outside the chest", "everything outside the central chest box"),
    MaskSpec("chest", "the chest (leaving only the border)", "the central chest box: only the border stays"),
)
MASK_NAMES: tuple[str, ...] = tuple(m.name for m in MASKS)
_SPECS = {m.name: m for m in MASKS}


def mask_spec(name: str) -> MaskSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"Unknown mask {name!r}; expected one of {MASK_NAMES}.") from None


def _px(fraction: float, size: int) -> int:
    return int(round(fraction * size))


@cache
def _binary_mask(name: str, size: int) -> np.ndarray:
    mask_spec(name)
    m = np.zeros((size, size), np.float32)
    if name == "border":
        band, corner = _px(BORDER_BAND, size), _px(CORNER, size)
        m[:band], m[-band:], m[:, :band], m[:, -band:] = 1, 1, 1, 1
        for rows in (slice(0, corner), slice(size - corner, size)):
            for cols in (slice(0, corner), slice(size - corner, size)):
                m[rows, cols] = 1
    elif name == "below_lungs":
        m[_px(BELOW_LUNGS_FROM, size) :] = 1
    else:
        top, left, bottom, right = (_px(f, size) for f in CHEST_BOX)
        box = np.zeros_like(m)
        box[top:bottom, left:right] = 1
        m = box if name == "chest" else 1 - box
    return m


def region_share(heatmap: np.ndarray, name: str) -> float:
    """Share of a square heatmap's mass (values >= 0) inside mask `name`'s region (hard edges);
    NaN for an all-zero map. Heatmap notes read the regions the probe masks this way."""
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2 or heat.shape[0] != heat.shape[1]:
        raise ValueError(f"Expected a square 2-D heatmap, got shape {heat.shape}.")
    total = float(heat.sum())
    return float((heat * _binary_mask(name, heat.shape[0])).sum() / total) if total > 0 else float("nan")


@cache
def mask_weights(name: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) float32 weights in [0, 1]: 1 where the mask replaces the image, feathered
    edges (the image border itself is not feathered: reflect padding). Read-only, cached."""
    m = _binary_mask(name, size)
    sigma = FEATHER_SIGMA * size / IMAGE_SIZE
    soft = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    soft = np.clip(soft, 0.0, 1.0).astype(np.float32)
    soft.setflags(write=False)
    return soft


def fill_values(image: np.ndarray) -> np.ndarray:
    """(3,) float32 per-channel median of a uint8 HxWx3 image: the masks' fill."""
    return np.median(image.reshape(-1, image.shape[-1]), axis=0).astype(np.float32)


def masked_images(image: np.ndarray, names: Sequence[str] = MASK_NAMES) -> np.ndarray:
    """(len(names), H, W, 3) uint8 masked copies of a uint8 square HxWx3 model input."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"Expected a square uint8 HxWx3 model input, got {image.dtype} {image.shape}.")
    x = image.astype(np.float32)
    fill = fill_values(image)
    out = np.empty((len(names), *image.shape), np.uint8)
    for i, name in enumerate(names):
        w = mask_weights(name, image.shape[0])[..., None]
        out[i] = np.clip(np.rint(x * (1.0 - w) + fill * w), 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskOutcome:
    """The model's answer with one mask applied."""

    mask: str
    phrase: str
    probabilities: dict[str, float]  # keys: CLASS_NAMES
    delta: dict[str, float]  # masked minus original, per class
    predicted: str
    flipped: bool  # the argmax differs from the unmasked image's

    def to_json(self, digits: int = 6) -> dict[str, Any]:
        return {
            "mask": self.mask,
            "probabilities": {c: round(p, digits) for c, p in self.probabilities.items()},
            "delta": {c: round(d, digits) for c, d in self.delta.items()},
            "predicted": self.predicted,
            "flipped": self.flipped,
        }


@dataclass(frozen=True)
class ProbeResult:
    """One model's probe of one image."""

    model_name: str
    display_name: str
    probabilities: dict[str, float]  # the unmasked image
    predicted: str
    outcomes: tuple[MaskOutcome, ...]
    seconds: float = 0.0  # wall time of the forward pass
    fill: str = FILL_METHOD

    @property
    def flips(self) -> list[MaskOutcome]:
        return [o for o in self.outcomes if o.flipped]

    def outcome(self, mask: str) -> MaskOutcome:
        for o in self.outcomes:
            if o.mask == mask:
                return o
        raise KeyError(mask)

    def sentences(self) -> list[str]:
        return flip_sentences(self)

    def rows(self) -> list[dict[str, Any]]:
        """Long-format rows for a bar chart: {mask, class, probability, delta}, the unmasked
        image first as mask "none"."""
        rows = [
            {"mask": "none", "class": CLASS_DISPLAY_NAMES[c], "probability": p, "delta": 0.0}
            for c, p in self.probabilities.items()
        ]
        for o in self.outcomes:
            rows += [
                {"mask": o.mask, "class": CLASS_DISPLAY_NAMES[c], "probability": p, "delta": o.delta[c]}
                for c, p in o.probabilities.items()
            ]
        return rows

    def to_json(self, digits: int = 6) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "probabilities": {c: round(p, digits) for c, p in self.probabilities.items()},
            "predicted": self.predicted,
            "masks": [o.to_json(digits) for o in self.outcomes],
            "fill": self.fill,
        }


def flip_sentence(display_name: str, outcome: MaskOutcome, original: str) -> str:
    """ "Masking the image border changes DavidNet's answer from COVID-19 to Normal."""
    return (
        f"Masking {outcome.phrase} changes {display_name}'s answer from "
        f"{CLASS_DISPLAY_NAMES[original]} to {CLASS_DISPLAY_NAMES[outcome.predicted]}."
    )


def flip_sentences(result: ProbeResult) -> list[str]:
    """One sentence per mask that flips the answer (empty when none does)."""
    return [flip_sentence(result.display_name, o, result.predicted) for o in result.flips]


# ---------------------------------------------------------------------------
# Probe.
# ---------------------------------------------------------------------------
class Probe:
    """One model's what-if probe: a compiled batched forward pass, built once, reused.

    Args:
        model: the Keras classifier (softmax output over `CLASS_NAMES`).
        mode: its preprocessing mode ("unit" or "imagenet").
        name, display_name: for results and sentences.
        temperature: the calibration temperature the app applies (None: raw probabilities), so
            the probe's numbers match the served ones; it cannot change an argmax.
    """

    def __init__(
        self,
        model,
        mode: str,
        *,
        name: str = "",
        display_name: str | None = None,
        temperature: float | None = None,
    ):
        import tensorflow as tf

        if mode not in preprocessing.PREPROCESSING_MODES:
            raise ValueError(f"Unknown preprocessing mode {mode!r}.")
        self.model = model
        self.mode = mode
        self.name = name or model.name
        self.display_name = display_name or self.name
        self.temperature = temperature
        shape = (None, *tuple(model.input.shape[1:]))
        self.size = int(shape[1])

        def forward(x):
            return tf.cast(model(x, training=False), tf.float32)

        # A free batch size in one signature: traced once, whatever the number of masks.
        self._fn = tf.function(forward, input_signature=[tf.TensorSpec(shape, tf.float32)])

    @classmethod
    def for_loaded(cls, loaded) -> Probe:
        """The probe of a served model (`inference.LoadedModel`), sharing its weights."""
        from covid_xray.config import MODELS

        spec = MODELS.get(loaded.name)
        return cls(
            loaded.explainer.model,
            loaded.preprocessing,
            name=loaded.name,
            display_name=spec.display_name if spec else loaded.name,
            temperature=loaded.temperature,
        )

    def warm_up(self) -> None:
        """Trace the compiled function now (a batch of 1 + len(MASKS), as requests send)."""
        self._fn(np.zeros((1 + len(MASKS), self.size, self.size, 3), np.float32))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, num_classes) probabilities of uint8 (N, H, W, 3) model inputs, one forward pass."""
        x = preprocessing.normalize(np.asarray(images), self.mode)
        return self._calibrated(self._fn(x).numpy().astype(np.float64))

    def _calibrated(self, probs: np.ndarray) -> np.ndarray:
        if self.temperature is None:
            return probs
        from covid_xray.calibration import apply_temperature

        return np.stack([apply_temperature(p, self.temperature) for p in probs])

    def run(
        self,
        model_input: np.ndarray,
        masks: Sequence[str] = MASK_NAMES,
        *,
        baseline: np.ndarray | Mapping[str, float] | None = None,
    ) -> ProbeResult:
        """Probe one uint8 224x224x3 model input with every mask, in one batched forward pass.

        Args:
            model_input: `preprocessing.resize_for_model(rgb)`.
            masks: mask names (`MASK_NAMES` by default).
            baseline: the unmasked image's RAW probabilities when the request already has them
                (`ModelPrediction.raw_probabilities`, a dict or an array in `CLASS_NAMES`
                order): the batch then holds the masked copies only (CheXNet: 4 images, not 5).
                None: the unmasked image joins the batch.

        Raises:
            ValueError: not a square uint8 RGB array of the model's size, or an unknown mask.
        """
        for name in masks:
            mask_spec(name)
        image = np.asarray(model_input)
        if image.shape != (self.size, self.size, 3):
            raise ValueError(f"Expected a {self.size}x{self.size}x3 model input, got shape {image.shape}.")
        masked = masked_images(image, masks)
        start = time.perf_counter()
        if baseline is None:
            probs = self.probabilities(np.concatenate([image[None], masked]))
            original, probs = probs[0], probs[1:]
        else:
            if isinstance(baseline, Mapping):
                baseline = [baseline[c] for c in CLASS_NAMES]
            original = self._calibrated(np.asarray(baseline, np.float64)[None])[0]
            probs = self.probabilities(masked)
        seconds = time.perf_counter() - start
        return _result(self.name, self.display_name, original, probs, masks, seconds)


def _result(name, display_name, original, masked, masks, seconds) -> ProbeResult:
    classes = CLASS_NAMES[: len(original)]
    base = int(np.argmax(original))
    outcomes = []
    for mask, p in zip(masks, masked, strict=True):
        index = int(np.argmax(p))
        outcomes.append(
            MaskOutcome(
                mask=mask,
                phrase=mask_spec(mask).phrase,
                probabilities={c: float(v) for c, v in zip(classes, p, strict=True)},
                delta={c: float(v - o) for c, v, o in zip(classes, p, original, strict=True)},
                predicted=classes[index],
                flipped=index != base,
            )
        )
    return ProbeResult(
        model_name=name,
        display_name=display_name,
        probabilities={c: float(v) for c, v in zip(classes, original, strict=True)},
        predicted=classes[base],
        outcomes=tuple(outcomes),
        seconds=seconds,
    )


def probe_all(probes: Mapping[str, Probe], model_input: np.ndarray) -> dict[str, ProbeResult]:
    """Every model's probe of one image, {model name: ProbeResult}."""
    return {name: probe.run(model_input) for name, probe in probes.items()}


def time_probe(
    probes: Mapping[str, Probe], model_input: np.ndarray, n: int = 5, *, with_baseline: bool = False
) -> dict[str, float]:
    """Median seconds per probe of one image (all masks), per model and "total" (warm).
    `with_baseline`: the request's probabilities are passed in (masked copies only in the batch)."""
    baselines = {}
    for name, probe in probes.items():
        probe.run(model_input)  # trace and warm
        raw = probe._fn(preprocessing.normalize(model_input[None], probe.mode)).numpy()[0]
        baselines[name] = raw if with_baseline else None
    times: dict[str, list[float]] = {k: [] for k in probes}
    totals = []
    for _ in range(n):
        start = time.perf_counter()
        for name, probe in probes.items():
            t = time.perf_counter()
            probe.run(model_input, baseline=baselines[name])
            times[name].append(time.perf_counter() - t)
        totals.append(time.perf_counter() - start)
    result = {name: float(np.median(v)) for name, v in times.items()}
    result["total"] = float(np.median(totals))
    return result
