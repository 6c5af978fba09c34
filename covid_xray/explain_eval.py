"""Are the heatmaps faithful? `python -m covid_xray.explain_eval --model davidnet`.

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
  1 - 0.8^2 = 0.36; more than that means the heatmaps favour the edges.

Writes `reports/<model>/faithfulness.json` (config + results, deterministic given the seed) and
`reports/<model>/faithfulness.png`. The app reads these files (:func:`faithfulness_markdown`,
:func:`faithfulness_image_path`, :func:`border_mass_summary`) and never recomputes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

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
RESULT_FILE = "faithfulness.json"
PLOT_FILE = "faithfulness.png"
SUBSETS: tuple[str, ...] = tuple(config.TEST_SUBSET_TITLES)
SUBSET_TITLES = {key: title.lower() for key, title in config.TEST_SUBSET_TITLES.items()}


def uniform_border_mass(border: float = BORDER) -> float:
    """Border mass of a uniform heatmap: 1 - (1 - 2 border)^2 (0.36 for a 10% border)."""
    return 1.0 - (1.0 - 2.0 * border) ** 2


def command(name: str) -> str:
    """The command that (re)creates a model's faithfulness report."""
    return f"python -m covid_xray.explain_eval --model {name}"


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
class ModelNotTrainedError(RuntimeError):
    """The model has no checkpoint: nothing to score (the message names the command that fixes it)."""


def _select(samples: list, limit: int | None) -> list:
    """All samples, or `limit` of them evenly spread over the (class-sorted) list."""
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}.")
    picks = np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))
    return [samples[i] for i in picks]


def evaluate_faithfulness(
    name: str,
    data_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    reports_dir: str | os.PathLike | None = None,
    *,
    methods: Sequence[str] | None = None,
    ks: Sequence[float] = DEFAULT_KS,
    fill: str = DEFAULT_FILL,
    seed: int = DEFAULT_SEED,
    limit: int | None = None,
    draws: int = RANDOM_DRAWS,
    grid: int = RANDOM_GRID,
    write: bool = True,
) -> dict:
    """Score one model's heatmaps on the test set; write faithfulness.json/.png; return the report.

    Raises:
        ModelNotTrainedError: the model has no checkpoint.
        checkpoints.CheckpointError: the checkpoint exists but cannot be loaded.
        data.DatasetNotFoundError: no dataset.
    """
    from covid_xray import data, inference
    from covid_xray.audit import audit_for, leaked_test_files
    from covid_xray.checkpoints import sha256_file
    from covid_xray.explain import METHODS
    from covid_xray.preprocessing import normalize

    spec = config.get_model_spec(name)
    methods = list(METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown or no methods {unknown or methods}; expected some of {METHODS}.")
    if fill not in FILLS:
        raise ValueError(f"Unknown fill {fill!r}; expected one of {FILLS}.")
    ks = [_check_fraction(k) for k in ks]
    reports = config.resolve_reports_dir(reports_dir)
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    if not checkpoint.exists():
        message = inference.unavailable_message(name, checkpoint)
        detail = inference.unavailable_detail(name, checkpoint)
        raise ModelNotTrainedError(f"{message}\n{detail}\nThen score its heatmaps:\n    {command(name)}")

    all_samples = data.list_samples(data_dir)
    test = _select([s for s in all_samples if s.split == "test"], limit)
    leaked = leaked_test_files(audit_for(all_samples, reports))
    loaded = inference.load_model(name, checkpoint_dir)
    explainer, mode = loaded.explainer, loaded.preprocessing
    timings: dict[str, float] = {}

    start = time.perf_counter()
    images, _ = data.load_arrays(test)
    images = images.astype(np.float32)  # 0..255 pixels; deletion happens here, then `normalize`
    timings["load"] = time.perf_counter() - start

    model = explainer.model

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(normalize(batch, mode)))

    start = time.perf_counter()
    base_probs = np.concatenate(
        [predict_fn(images[i : i + BATCH_SIZE]) for i in range(0, len(images), BATCH_SIZE)]
    ).astype(np.float64)
    classes = base_probs.argmax(axis=1)
    base = base_probs[np.arange(len(images)), classes]
    random_drops = random_deletion_drops(
        predict_fn,
        images,
        classes,
        ks,
        fill,
        np.random.default_rng([seed, 0]),
        draws=draws,
        grid=grid,
        base=base,
    )
    timings["random"] = time.perf_counter() - start

    per_method: dict[str, dict] = {}
    for method in methods:
        start = time.perf_counter()
        heatmaps = [
            explainer.explain(normalize(image, mode), method, class_index=int(c))[1]
            for image, c in zip(images, classes, strict=True)
        ]
        explained = time.perf_counter()
        rng = np.random.default_rng([seed, 1 + METHODS.index(method)])
        drops = heatmap_deletion_drops(predict_fn, images, heatmaps, classes, ks, fill, rng, base=base)
        per_method[method] = {
            "drops": drops,
            "border": np.array([border_mass(h) for h in heatmaps]),
            "support": np.array([float(np.mean(h > 0)) for h in heatmaps]),
        }
        timings[method] = time.perf_counter() - start
        log.info(
            "%s %s: heatmaps %.1f s, deletion %.1f s",
            name,
            method,
            explained - start,
            timings[method] - (explained - start),
        )

    is_leaked = np.array([s.relpath in leaked for s in test])
    results = {}
    for subset in SUBSETS:
        keep = np.ones(len(test), bool) if subset == "official" else ~is_leaked
        results[subset] = {
            "n": int(keep.sum()),
            "random_drop": {
                _k_key(k): _num(random_drops[keep, j].mean()) if keep.any() else None
                for j, k in enumerate(ks)
            },
            "methods": {
                m: {
                    "deletion": summarize_deletion(r["drops"][keep], random_drops[keep], ks),
                    "border_mass": summarize_border(r["border"][keep]),
                    "support": _num(r["support"][keep].mean()) if keep.any() else None,
                }
                for m, r in per_method.items()
            },
        }
    report = {
        "model": name,
        "display_name": spec.display_name,
        "config": {
            "methods": methods,
            "ks": [float(k) for k in ks],
            "fill": fill,
            "blur_sigma_fraction": BLUR_SIGMA if fill == "blur" else None,
            "seed": int(seed),
            "random_draws": int(draws),
            "random_masks": f"blobs: top k of a uniform random {grid}x{grid} field, bilinear upsampling",
            "random_grid": int(grid),
            "tie_tolerance": TIE_TOLERANCE,
            "target": "the model's predicted class; score = its softmax probability",
            "border": BORDER,
            "uniform_border_mass": _num(uniform_border_mass(BORDER)),
            "n_images": len(test),
            "n_leakage_free": int((~is_leaked).sum()),
            "limit": limit,
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": sha256_file(checkpoint),
            "preprocessing": mode,
            "scorecam_max_n": int(explainer.scorecam_max_n),
            "command": _command_line(name, methods, fill, seed, limit),
        },
        "results": results,
        "images": [
            {
                "file": sample.relpath,
                "true": sample.label,
                "predicted": config.CLASS_NAMES[int(classes[i])],
                "probability": _num(base[i]),
                "leaked": bool(is_leaked[i]),
                "random_drop": [_num(v) for v in random_drops[i]],
                "methods": {
                    m: {"drop": [_num(v) for v in r["drops"][i]], "border_mass": _num(r["border"][i])}
                    for m, r in per_method.items()
                },
            }
            for i, sample in enumerate(test)
        ],
    }
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}  # dropped before writing
    if write:
        out = spec.report_dir(reports)
        write_report(report, out / RESULT_FILE)
        plot_faithfulness(report, out / PLOT_FILE)
    return report


def _command_line(name: str, methods: Sequence[str], fill: str, seed: int, limit: int | None) -> str:
    from covid_xray.explain import METHODS

    parts = [command(name)]
    if list(methods) != list(METHODS):
        parts.append("--methods " + " ".join(methods))
    if fill != DEFAULT_FILL:
        parts.append(f"--fill {fill}")
    if seed != DEFAULT_SEED:
        parts.append(f"--seed {seed}")
    if limit is not None:
        parts.append(f"--limit {limit}")
    return " ".join(parts)


def write_report(report: dict, path: Path) -> None:
    """faithfulness.json without run-dependent fields (timings), so the seed fixes its bytes."""
    from covid_xray.checkpoints import write_json

    write_json(path, {k: v for k, v in report.items() if k != "timings_s"})


# ---------------------------------------------------------------------------
# Plot.
# ---------------------------------------------------------------------------
def _method_label(method: str) -> str:
    from covid_xray.inference import METHOD_DISPLAY_NAMES

    return METHOD_DISPLAY_NAMES.get(method, method)


def plot_faithfulness(report: dict, path: Path) -> None:
    """Deletion curves (drop vs k, each method vs random) and border-mass bars, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, official = report["config"], report["results"]["official"]
    ks = [100 * k for k in cfg["ks"]]
    keys = [_k_key(k) for k in cfg["ks"]]
    colors = plt.get_cmap("tab10").colors
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)

    for index, method in enumerate(cfg["methods"]):
        deletion = official["methods"][method]["deletion"]
        left.plot(
            ks,
            [deletion[k]["heatmap_drop"] for k in keys],
            "o-",
            color=colors[index],
            label=_method_label(method),
        )
    left.plot(
        ks,
        [official["random_drop"][k] for k in keys],
        "s--",
        color="0.35",
        label=f"random blobs (mean of {cfg['random_draws']})",
    )
    left.axhline(0.0, color="0.8", linewidth=0.8)
    left.set_xticks(ks)
    left.set_xlabel("pixels removed (% of image, most highlighted first)")
    left.set_ylabel("mean drop in predicted-class probability")
    left.set_title(
        f"Deletion test, {SUBSET_TITLES['official']} (n={official['n']}, fill: {cfg['fill']})", fontsize=10
    )
    left.legend(fontsize=8)

    width = 0.38
    positions = np.arange(len(cfg["methods"]))
    for offset, subset in ((-width / 2, "official"), (width / 2, "leakage_free")):
        sub = report["results"][subset]
        values = [sub["methods"][m]["border_mass"]["mean"] or 0.0 for m in cfg["methods"]]
        bars = right.bar(
            positions + offset,
            values,
            width,
            label=f"{SUBSET_TITLES[subset]} (n={sub['n']})",
            color="tab:blue" if subset == "official" else "tab:orange",
        )
        right.bar_label(bars, fmt="%.2f", fontsize=8)
    right.axhline(
        cfg["uniform_border_mass"],
        color="0.3",
        linestyle="--",
        linewidth=1,
        label=f"uniform map ({cfg['uniform_border_mass']:.2f})",
    )
    right.set_xticks(positions, [_method_label(m) for m in cfg["methods"]])
    right.set_ylim(0, 1)
    right.set_ylabel(f"mean heatmap mass in the outer {cfg['border']:.0%} border")
    right.set_title("Border mass (text markers, collimation edges)", fontsize=10)
    right.legend(fontsize=8, loc="upper left")

    fig.suptitle(f"{report['display_name']}: are the heatmaps faithful?", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------------
# Reading (for the app: never recomputes).
# ---------------------------------------------------------------------------
def _report_path(name: str, reports_dir, filename: str) -> Path:
    return config.get_model_spec(name).report_dir(reports_dir) / filename


def load_faithfulness(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """The saved report of a model, or None when it is missing or unreadable."""
    path = _report_path(name, reports_dir, RESULT_FILE)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not {"config", "results"} <= report.keys():
        return None
    return report


def faithfulness_image_path(name: str, reports_dir: str | os.PathLike | None = None) -> Path | None:
    """reports/<model>/faithfulness.png when it exists, else None."""
    path = _report_path(name, reports_dir, PLOT_FILE)
    return path if path.is_file() else None


def border_mass_summary(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """Border mass per method from the saved report, or None when there is none.

    Returns:
        {"border": 0.1, "uniform": 0.36, "n": 66, "methods": {"gradcam": {"mean", "median"}, ...},
        "leakage_free": {"n": 57, "methods": {...}}}: "methods" is the official test set.
    """
    report = load_faithfulness(name, reports_dir)
    if report is None:
        return None

    def methods(subset: dict) -> dict:
        return {
            m: {"mean": r["border_mass"]["mean"], "median": r["border_mass"]["median"]}
            for m, r in subset["methods"].items()
        }

    official, clean = report["results"]["official"], report["results"]["leakage_free"]
    return {
        "border": report["config"]["border"],
        "uniform": report["config"]["uniform_border_mass"],
        "n": official["n"],
        "methods": methods(official),
        "leakage_free": {"n": clean["n"], "methods": methods(clean)},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(row: dict) -> str:
    """'better', 'worse' or 'indistinguishable' from random: difference beyond 2 standard errors."""
    diff, se = row["difference"], row["difference_se"]
    if diff is None or se is None:
        return "indistinguishable"
    if diff > 2 * se:
        return "better"
    if diff < -2 * se:
        return "worse"
    return "indistinguishable"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _range(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.0%}" if round(100 * low) == round(100 * high) else f"{low:.0%} to {high:.0%}"


def _deletion_sentences(cfg: dict, subset: dict, pct: str, key: str) -> list[str]:
    """What the deletion test says at the largest k, per verdict group (see `_verdict`)."""
    rows = {_method_label(m): subset["methods"][m]["deletion"][key] for m in cfg["methods"]}
    groups: dict[str, list[str]] = {"better": [], "indistinguishable": [], "worse": []}
    for label, row in rows.items():
        groups[_verdict(row)].append(label)
    sentences = []
    better = groups["better"]
    if better:
        diffs = ", ".join(f"{rows[m]['difference']:.3f}" for m in better)
        beats = [rows[m]["beats_random"] for m in better]
        loses = [rows[m]["loses_to_random"] for m in better]
        reading = (
            "These maps mostly point at pixels the model relies on"
            if min(beats) >= 0.75
            else "They point at pixels the model relies on for some images, not reliably for each"
        )
        sentences.append(
            f"On average, removing the {pct} most highlighted pixels lowers the predicted class's "
            f"probability more than removing random blobs for {_join(better)} (by {diffs}; beyond two "
            f"standard errors), but image by image the heatmap wins on {_range(beats)} of images and "
            f"loses on {_range(loses)}. {reading}."
        )
    weak = groups["indistinguishable"] + groups["worse"]
    if weak:
        how = "no better than, or worse than," if groups["worse"] else "no better than"
        sentences.append(
            f"{_join(weak)} {'is' if len(weak) == 1 else 'are'} {how} random at {pct}: "
            "do not read these maps as the model's reasons."
        )
    return sentences


def _border_sentences(cfg: dict, subset: dict) -> list[str]:
    """Border mass against a uniform map, per band (above, about equal, below)."""
    uniform = cfg["uniform_border_mass"]
    bands: dict[str, list[str]] = {"above": [], "about": [], "below": []}
    for method in cfg["methods"]:
        mean = subset["methods"][method]["border_mass"]["mean"]
        if mean is None:
            continue
        band = (
            "above"
            if mean > uniform + BORDER_MARGIN
            else "below"
            if mean < uniform - BORDER_MARGIN
            else "about"
        )
        bands[band].append(f"{_method_label(method)} ({mean:.2f})")
    # {s}: verb ending, {its}: possessive, for one method or several.
    templates = {
        "above": "{who} put{s} more of {its} mass on the image border than a uniform map would ({u:.2f}): "
        "look for text markers and collimation edges, a shortcut rather than lung findings.",
        "about": "{who} put{s} about as much mass on the border as a uniform map ({u:.2f}); the lungs fill "
        "the centre, so a map focused on them would put clearly less there: the edges (markers, "
        "collimation) get their share of the attention.",
        "below": "{who} keep{s} most of {its} mass off the border (uniform map: {u:.2f}): on average not "
        "drawn to edge markers, though single images can be.",
    }
    sentences = []
    for band, template in templates.items():
        if bands[band]:
            one = len(bands[band]) == 1
            sentences.append(
                template.format(
                    who=_join(bands[band]), s="s" if one else "", its="its" if one else "their", u=uniform
                )
            )
    return sentences


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def faithfulness_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """A compact table of the saved faithfulness report and an honest reading of it (Markdown).

    A missing report gives a message with the command that creates it.
    """
    spec = config.get_model_spec(name)
    report = load_faithfulness(name, reports_dir)
    if report is None:
        path = _report_path(name, reports_dir, RESULT_FILE)
        return (
            f"No heatmap faithfulness report for {spec.display_name} yet ({path.name} is missing in "
            f"{path.parent}). Create it with (a trained checkpoint is needed):"
            f"\n\n```bash\n{command(name)}\n```"
        )
    cfg, official = report["config"], report["results"]["official"]
    clean = report["results"]["leakage_free"]
    keys = [_k_key(k) for k in cfg["ks"]]
    big = keys[-1]
    pct = [f"{100 * k:g}%" for k in cfg["ks"]]
    uniform = cfg["uniform_border_mass"]
    fill = "the image mean" if cfg["fill"] == "mean" else "a heavy blur of the image"
    intro = (
        f"**Are the heatmaps faithful?** {spec.display_name}, {SUBSET_TITLES['official']} "
        f"(n={official['n']}). Deletion: mean drop in the predicted class's probability when the "
        f"top k% of the heatmap is replaced by {fill}, vs random blobs of the same area (mean of "
        f"{cfg['random_draws']} draws). Border mass: share of the heatmap in the outer "
        f"{cfg['border']:.0%} of each side (a uniform map gives {uniform:.2f})."
    )
    drop_columns = " | ".join(f"drop at {p}: heatmap / random" for p in pct)
    lines = [
        intro,
        "",
        f"| method | {drop_columns} | wins / losses vs random at {pct[-1]} | border mass mean / median |",
        "|---|" + "---:|" * (len(keys) + 2),
    ]
    for method in cfg["methods"]:
        row = official["methods"][method]
        deletion, border = row["deletion"], row["border_mass"]
        cells = [f"{_fmt(deletion[k]['heatmap_drop'])} / {_fmt(official['random_drop'][k])}" for k in keys]
        cells.append(f"{_share(deletion[big]['beats_random'])} / {_share(deletion[big]['loses_to_random'])}")
        cells.append(f"{_fmt(border['mean'], 2)} / {_fmt(border['median'], 2)}")
        lines.append(f"| {_method_label(method)} | " + " | ".join(cells) + " |")

    sentences = _deletion_sentences(cfg, official, pct[-1], big) + _border_sentences(cfg, official)
    same = all(
        _verdict(official["methods"][m]["deletion"][big]) == _verdict(clean["methods"][m]["deletion"][big])
        for m in cfg["methods"]
    )
    clean_note = (
        f"The leakage-free subset (n={clean['n']}) gives the same deletion verdicts"
        if same
        else f"The leakage-free subset (n={clean['n']}) changes some deletion verdicts"
    )
    sentences.append(
        f"{clean_note} (see {RESULT_FILE}). Deleted regions make unnatural images and confident "
        "predictions barely move, so these numbers show sensitivity, not medical reasoning."
    )
    lines += ["", " ".join(sentences)]
    if cfg.get("limit") is not None:
        lines += ["", f"*Computed on {cfg['n_images']} test images only (--limit {cfg['limit']}).*"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------
def _print_table(report: dict) -> None:
    cfg = report["config"]
    keys = [_k_key(k) for k in cfg["ks"]]
    for subset in SUBSETS:
        sub = report["results"][subset]
        print(
            f"\n{report['display_name']}, {SUBSET_TITLES[subset]} (n={sub['n']}), "
            f"fill={cfg['fill']}, seed={cfg['seed']}: drop heatmap / random / difference +- se / beats"
        )
        ks_header = " ".join(f"{'k=' + format(100 * float(k), 'g') + '%':>32s}" for k in keys)
        print(f"{'method':11s} {ks_header} {'border mean/median':>19s}")
        for method in cfg["methods"]:
            row = sub["methods"][method]
            cells = []
            for k in keys:
                d = row["deletion"][k]
                cell = f"{_fmt(d['heatmap_drop'])}/{_fmt(d['random_drop'])}/{_fmt(d['difference'])}"
                cells.append(f"{cell}+-{_fmt(d['difference_se'])}/{_share(d['beats_random'])}")
            border = row["border_mass"]
            print(
                f"{_method_label(method):11s} "
                + " ".join(f"{c:>32s}" for c in cells)
                + f" {_fmt(border['mean']):>9s}/{_fmt(border['median'])}"
            )
    print(f"\n(border mass of a uniform map: {cfg['uniform_border_mass']:.2f})")


def main(argv: list[str] | None = None) -> int:
    from covid_xray.explain import METHODS

    parser = argparse.ArgumentParser(
        description="Are the heatmaps faithful? Deletion test and border mass on the test set."
    )
    parser.add_argument(
        "--model",
        nargs="+",
        choices=sorted(config.MODELS),
        default=list(config.MODELS),
        help="models to score (default: all; those without a checkpoint are skipped)",
    )
    parser.add_argument("--data-dir", default=None, help="dataset root (else $COVID_XRAY_DATA)")
    parser.add_argument(
        "--checkpoint-dir", default=None, help="folder of <model>.keras (default checkpoints/)"
    )
    parser.add_argument("--reports-dir", default=None, help="reports folder (default reports/)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--fill",
        choices=FILLS,
        default=DEFAULT_FILL,
        help="what removed pixels become: the image mean or a heavy Gaussian blur",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--limit", type=int, default=None, help="score only N test images (evenly spread)")
    parser.add_argument("--draws", type=int, default=RANDOM_DRAWS, help="random masks per image and k")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from covid_xray.checkpoints import CheckpointError
    from covid_xray.data import DatasetNotFoundError

    status = 0
    for name in args.model:
        start = time.perf_counter()
        try:
            report = evaluate_faithfulness(
                name,
                args.data_dir,
                args.checkpoint_dir,
                args.reports_dir,
                methods=args.methods,
                fill=args.fill,
                seed=args.seed,
                limit=args.limit,
                draws=args.draws,
            )
        except ModelNotTrainedError as exc:
            print(f"Skipping {config.MODELS[name].display_name}: {exc}")
            continue
        except (CheckpointError, DatasetNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        _print_table(report)
        out = config.get_model_spec(name).report_dir(args.reports_dir)
        print(
            f"Wrote {out / RESULT_FILE} and {out / PLOT_FILE} in {time.perf_counter() - start:.1f} s "
            f"(stages, s: {report['timings_s']})"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
