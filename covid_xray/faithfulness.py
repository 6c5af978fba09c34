"""Are the heatmaps faithful? The maths of the two checks (no I/O; the study that runs them on
the test set: `python -m covid_xray.studies.faithfulness`, its text: `covid_xray.report.faithfulness`).

Two checks per model and CAM method, on the test set (official, and its leakage-free subset):

- **Deletion test.** For each image, the heatmap of the model's predicted class is computed
  exactly as the app computes it (`inference.load_model`: checkpoint, recorded preprocessing,
  :class:`explain.Explainer`). The top k% most highlighted pixels (k = 5, 10, 20%) are replaced by
  the image mean (``--fill mean``) or by a heavy Gaussian blur of the image (``--fill blur``), and
  the predicted class's probability is measured again. The control removes *random blobs* of the
  same area: a uniform random field on a coarse grid (``RANDOM_GRID`` cells a side), upsampled
  bilinearly to the image and thresholded at its top k% (see :func:`random_mask`). Blobs, not
  scattered pixels, because CAM masks are blobs too: scattered single pixels damage a CNN's input
  in a very different way (high-frequency noise) from removing a region. The random drop of an
  image is the mean over ``RANDOM_DRAWS`` seeded draws; the same random masks serve every method.
  A heatmap is faithful in this sense when removing what it highlights hurts the prediction more
  than removing the same area at random.
- **Border mass.** The share of the heatmap's mass (sum of its [0, 1] values) in the outer 10% of
  the image on each side, where text markers and collimation edges sit. A uniform map gives
  1 - 0.8^2 = 0.36; more than that means the heatmaps favour the edges (`border_band`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from covid_xray import config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
DEFAULT_KS: tuple[float, ...] = (0.05, 0.10, 0.20)  # fractions of the image removed
FILLS: tuple[str, ...] = ("mean", "blur")
DEFAULT_FILL = "mean"
DEFAULT_SEED = 0
RANDOM_DRAWS = 3  # random masks per image and k; their drops are averaged
RANDOM_GRID = 8  # random blobs: a random field on an 8x8 grid (blobs ~ 1/8 of a side)
BORDER = 0.1  # border band, as a fraction of each side
BLUR_SIGMA = 0.1  # --fill blur: Gaussian sigma as a fraction of the longer side (22 px on 224)
# "Beats random": the heatmap's drop exceeds the random drop by more than this (probabilities);
# smaller differences are float noise on saturated predictions and count as ties.
TIE_TOLERANCE = 1e-3
# The reader calls a border mass within this of the uniform map's "about as much as uniform".
BORDER_MARGIN = 0.05
BATCH_SIZE = 32  # images per forward pass
SUBSETS: tuple[str, ...] = tuple(config.TEST_SUBSET_TITLES)
SUBSET_TITLES = {key: title.lower() for key, title in config.TEST_SUBSET_TITLES.items()}


def uniform_border_mass(border: float = BORDER) -> float:
    """Border mass of a uniform heatmap: 1 - (1 - 2 border)^2 (0.36 for a 10% border)."""
    return 1.0 - (1.0 - 2.0 * border) ** 2


def border_band(mass: float, border: float = BORDER) -> str:
    """The one reading of a border mass: "above", "about" or "below" a uniform map's (within
    `BORDER_MARGIN` of it reads "about"). Every text about border mass uses it."""
    uniform = uniform_border_mass(border)
    if mass > uniform + BORDER_MARGIN:
        return "above"
    if mass < uniform - BORDER_MARGIN:
        return "below"
    return "about"


# ---------------------------------------------------------------------------
# Pure core.
# ---------------------------------------------------------------------------
def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    return fraction


def topk_mask(heatmap: np.ndarray, fraction: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Boolean mask of the `fraction` most highlighted pixels of a 2-D map.

    Exactly ``round(fraction * size)`` pixels (at least one) are selected. Ties (e.g. the zeros
    of a ReLU'd CAM, when its support is smaller than the fraction) are broken at random with
    `rng` (a fixed seed when None), so no image region is favoured.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"Expected a 2-D heatmap, got shape {heatmap.shape}.")
    fraction = _check_fraction(fraction)
    flat = heatmap.ravel()
    count = max(1, int(round(fraction * flat.size)))
    threshold = np.partition(flat, flat.size - count)[flat.size - count]  # the count-th largest value
    mask = flat > threshold
    ties = np.flatnonzero(flat == threshold)
    missing = count - int(mask.sum())
    if missing:  # only ties at the threshold are left: pick them at random
        rng = np.random.default_rng(0) if rng is None else rng
        mask[rng.choice(ties, size=missing, replace=False)] = True
    return mask.reshape(heatmap.shape)


def random_mask(
    shape: tuple[int, int], fraction: float, rng: np.random.Generator, grid: int = RANDOM_GRID
) -> np.ndarray:
    """Random blobs covering `fraction` of an image of `shape` (H, W).

    A uniform random field on a `grid` x `grid` lattice, upsampled bilinearly to (H, W), keeps
    its top `fraction`: a few compact blobs, about (side / grid) across, at random places.
    """
    import cv2

    height, width = (int(s) for s in shape)
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}.")
    field = rng.random((grid, grid)).astype(np.float32)
    smooth = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
    return topk_mask(smooth, fraction, rng)


def fill_image(image: np.ndarray, fill: str = DEFAULT_FILL) -> np.ndarray:
    """What deleted pixels become: the image's per-channel mean, or a heavy Gaussian blur of it."""
    import cv2

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"Expected an (H, W, C) image, got shape {image.shape}.")
    if fill == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1), keepdims=True), image.shape).astype(np.float32)
    if fill == "blur":
        sigma = BLUR_SIGMA * max(image.shape[:2])
        blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        return blurred.reshape(image.shape).astype(np.float32)
    raise ValueError(f"Unknown fill {fill!r}; expected one of {FILLS}.")


def delete(image: np.ndarray, mask: np.ndarray, fill: str | np.ndarray = DEFAULT_FILL) -> np.ndarray:
    """A float32 copy of `image` (H, W, C) with the pixels of `mask` (H, W) replaced.

    Args:
        fill: "mean", "blur" (see :func:`fill_image`) or a precomputed fill image of the same shape.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"Mask shape {mask.shape} does not match image shape {image.shape[:2]}.")
    replacement = fill_image(image, fill) if isinstance(fill, str) else np.asarray(fill, np.float32)
    if replacement.shape != image.shape:
        raise ValueError(f"Fill shape {replacement.shape} does not match image shape {image.shape}.")
    return np.where(mask[..., None], replacement, image)


def border_weights(shape: tuple[int, int], border: float = BORDER) -> np.ndarray:
    """Per-pixel share of area lying in the border band (outer `border` of each side), in [0, 1].

    Pixels cut by the band's inner edge count by the fraction of their area inside it, so a
    uniform map has a border mass of exactly 1 - (1 - 2 border)^2 at any image size.
    """
    if not 0.0 <= border < 0.5:
        raise ValueError(f"border must be in [0, 0.5), got {border}.")

    def inner(n: int) -> np.ndarray:  # share of each pixel [i, i+1] inside [border n, (1-border) n]
        edges = np.arange(n + 1, dtype=np.float64)
        return np.clip(np.minimum(edges[1:], (1 - border) * n) - np.maximum(edges[:-1], border * n), 0.0, 1.0)

    height, width = (int(s) for s in shape)
    return 1.0 - np.outer(inner(height), inner(width))


def border_mass(heatmap: np.ndarray, border: float = BORDER) -> float:
    """Share of a non-negative heatmap's mass in the outer `border` of each side (NaN for an empty map)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"Expected a 2-D heatmap, got shape {heatmap.shape}.")
    total = float(heatmap.sum())
    if total <= 0.0:
        return float("nan")
    return float((heatmap * border_weights(heatmap.shape, border)).sum() / total)


PredictFn = Callable[[np.ndarray], np.ndarray]


def _class_probabilities(
    predict_fn: PredictFn, items: Iterator[tuple[int, np.ndarray]], classes: np.ndarray, batch_size: int
) -> list[tuple[int, float]]:
    """Run (index, image) pairs through `predict_fn` in batches: (index, p[classes[index]]) each."""
    out: list[tuple[int, float]] = []
    indices: list[int] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        probs = np.asarray(predict_fn(np.stack(batch)), dtype=np.float64)
        out.extend((i, float(probs[j, classes[i]])) for j, i in enumerate(indices))
        indices.clear()
        batch.clear()

    for index, image in items:
        indices.append(index)
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return out


def base_probabilities(
    predict_fn: PredictFn, images: np.ndarray, classes: Sequence[int], batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """Probability of `classes[i]` for each unmodified image, (N,)."""
    classes = np.asarray(classes, dtype=int)
    pairs = _class_probabilities(
        predict_fn, ((i, np.asarray(img, np.float32)) for i, img in enumerate(images)), classes, batch_size
    )
    return np.array([p for _, p in pairs])


def _masked_drops(
    predict_fn: PredictFn,
    images: np.ndarray,
    classes: Sequence[int],
    masks_for: Callable[[int], list[np.ndarray]],
    fill: str,
    batch_size: int,
    base: np.ndarray | None,
) -> np.ndarray:
    """Drop of p[class] for each image and each mask that `masks_for(i)` gives, (N, n_masks)."""
    classes = np.asarray(classes, dtype=int)
    if base is None:
        base = base_probabilities(predict_fn, images, classes, batch_size)

    def items() -> Iterator[tuple[int, np.ndarray]]:
        for i, image in enumerate(images):
            replacement = fill_image(image, fill)
            for mask in masks_for(i):
                yield i, delete(image, mask, replacement)

    pairs = _class_probabilities(predict_fn, items(), classes, batch_size)
    probs = np.array([p for _, p in pairs]).reshape(len(images), -1)
    return base[:, None] - probs


def heatmap_deletion_drops(
    predict_fn: PredictFn,
    images: np.ndarray,
    heatmaps: Sequence[np.ndarray],
    classes: Sequence[int],
    ks: Sequence[float] = DEFAULT_KS,
    fill: str = DEFAULT_FILL,
    rng: np.random.Generator | None = None,
    *,
    base: np.ndarray | None = None,
    batch_size: int = BATCH_SIZE,
) -> np.ndarray:
    """Drop in p[class] when each image's top-k heatmap pixels are removed, (N, len(ks))."""
    rng = np.random.default_rng(0) if rng is None else rng
    return _masked_drops(
        predict_fn,
        images,
        classes,
        lambda i: [topk_mask(heatmaps[i], k, rng) for k in ks],
        fill,
        batch_size,
        base,
    )


def random_deletion_drops(
    predict_fn: PredictFn,
    images: np.ndarray,
    classes: Sequence[int],
    ks: Sequence[float] = DEFAULT_KS,
    fill: str = DEFAULT_FILL,
    rng: np.random.Generator | None = None,
    *,
    draws: int = RANDOM_DRAWS,
    grid: int = RANDOM_GRID,
    base: np.ndarray | None = None,
    batch_size: int = BATCH_SIZE,
) -> np.ndarray:
    """Drop in p[class] when random blobs of each k's area are removed, mean over `draws`, (N, len(ks))."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    rng = np.random.default_rng(0) if rng is None else rng
    shape = np.asarray(images[0]).shape[:2] if len(images) else (0, 0)

    def masks(_: int) -> list[np.ndarray]:
        return [random_mask(shape, k, rng, grid) for k in ks for _ in range(draws)]

    drops = _masked_drops(predict_fn, images, classes, masks, fill, batch_size, base)
    return drops.reshape(len(images), len(ks), draws).mean(axis=2)


def deletion_scores(
    predict_fn: PredictFn,
    images: np.ndarray,
    heatmaps: Sequence[np.ndarray],
    classes: Sequence[int],
    ks: Sequence[float] = DEFAULT_KS,
    fill: str = DEFAULT_FILL,
    rng: np.random.Generator | None = None,
    *,
    draws: int = RANDOM_DRAWS,
    grid: int = RANDOM_GRID,
    batch_size: int = BATCH_SIZE,
) -> dict[str, np.ndarray]:
    """The deletion test on a batch of images: per image and k, heatmap drop vs random drop.

    Args:
        predict_fn: images (B, H, W, C) in the same space as `images` -> probabilities (B, classes).
        images: (N, H, W, C) images, e.g. 0..255 pixels (normalise inside `predict_fn`).
        heatmaps: N maps (H, W); larger = more important.
        classes: the class whose probability is tracked, per image (the predicted one).
        ks: fractions of the image removed.
        fill: "mean" or "blur".
        rng: randomness for the random masks and tie-breaking (deterministic given its seed).

    Returns:
        {"base": (N,) probabilities before deletion, "heatmap": (N, K) drops, "random": (N, K)
        drops averaged over `draws` random masks}.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    classes = np.asarray(classes, dtype=int)
    if len(heatmaps) != len(images) or len(classes) != len(images):
        raise ValueError(
            f"Got {len(images)} images, {len(heatmaps)} heatmaps and {len(classes)} classes; they must match."
        )
    base = base_probabilities(predict_fn, images, classes, batch_size)
    random_drops = random_deletion_drops(
        predict_fn, images, classes, ks, fill, rng, draws=draws, grid=grid, base=base, batch_size=batch_size
    )
    heat = heatmap_deletion_drops(
        predict_fn, images, heatmaps, classes, ks, fill, rng, base=base, batch_size=batch_size
    )
    return {"base": base, "heatmap": heat, "random": random_drops}


def _k_key(k: float) -> str:
    return f"{k:g}"


def summarize_deletion(heatmap_drops: np.ndarray, random_drops: np.ndarray, ks: Sequence[float]) -> dict:
    """Per k: mean heatmap and random drops, their difference (with its standard error over images),
    and the share of images where the heatmap beats (or loses to) random by more than TIE_TOLERANCE."""
    heatmap_drops, random_drops = np.asarray(heatmap_drops, float), np.asarray(random_drops, float)
    out = {}
    for j, k in enumerate(ks):
        diff = heatmap_drops[:, j] - random_drops[:, j]
        n = len(diff)
        out[_k_key(k)] = {
            "heatmap_drop": _num(heatmap_drops[:, j].mean()) if n else None,
            "random_drop": _num(random_drops[:, j].mean()) if n else None,
            "difference": _num(diff.mean()) if n else None,
            "difference_se": _num(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
            "beats_random": _num(np.mean(diff > TIE_TOLERANCE)) if n else None,
            "loses_to_random": _num(np.mean(diff < -TIE_TOLERANCE)) if n else None,
        }
    return out


def summarize_border(values: Sequence[float]) -> dict:
    """Mean and median border mass over non-empty maps; empty maps (no positive evidence) are counted."""
    values = np.asarray(values, dtype=float)
    valid = values[np.isfinite(values)]
    return {
        "mean": _num(valid.mean()) if len(valid) else None,
        "median": _num(np.median(valid)) if len(valid) else None,
        "n": int(len(valid)),
        "n_empty": int(len(values) - len(valid)),
    }


def _num(value: float, digits: int = 6) -> float | None:
    """A float rounded for stable, diff-friendly JSON; NaN becomes None."""
    value = float(value)
    return None if not np.isfinite(value) else round(value, digits)


# ---------------------------------------------------------------------------
# Running the test on a checkpoint.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Plot.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Reading (for the app: never recomputes).
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------
