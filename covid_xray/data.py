"""Dataset discovery, manifest hash, duplicates, leakage-aware splits, cached arrays and tf.data
pipelines (the leakage audit built on the duplicates: `covid_xray.audit`; the command line:
`covid_xray.studies.data`).

Layout on disk (the Kaggle "Covid-19 Image Dataset"):

    <root>/{train,test}/{Covid,Normal,Viral Pneumonia}/<image>

The root comes from `config.resolve_data_dir()` (argument, else $COVID_XRAY_DATA, else the
download location); a folder one level above the root (what `kagglehub` returns) also works.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config, imaging, preprocessing
from covid_xray.config import CLASS_NAMES, DECODE_DRAFT_SIZE, IMAGE_SIZE, NUM_CLASSES, SPLITS
from covid_xray.hashing import sha256_file

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm"})
# Two images whose 64-bit perceptual hashes differ in at most this many bits are treated as
# the same radiograph (re-encoded, re-scaled or slightly re-cropped). 6 is the threshold used
# to measure the dataset's documented defects (27 pairs, 11 across train/test).
NEAR_DUPLICATE_THRESHOLD = 6
PHASH_SIZE = 8
DECODE_WORKERS = max(1, min(4, os.cpu_count() or 1))


class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder is missing or does not have the expected layout."""


class DownloadError(RuntimeError):
    """The dataset could not be downloaded (missing client, failed download, bad destination)."""


def _not_found(message: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{message}\nGet the dataset with `{config.DOWNLOAD_COMMAND}` (needs `pip install kagglehub` "
        f"and Kaggle access), or point {config.DATA_ENV_VAR} at a folder laid out as "
        f"<root>/{{train,test}}/{{{','.join(CLASS_NAMES)}}}/<images>, e.g.\n"
        f"    export {config.DATA_ENV_VAR}=/path/to/Covid19-dataset"
    )


# ---------------------------------------------------------------------------
# Discovery.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One image file of the dataset, with its split and (folder) label."""

    path: Path
    split: str
    label: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"Unknown split {self.split!r}; expected one of {SPLITS}.")
        if self.label not in CLASS_NAMES:
            raise ValueError(f"Unknown label {self.label!r}; expected one of {CLASS_NAMES}.")

    @property
    def relpath(self) -> str:
        """Dataset-relative POSIX path, e.g. `test/Covid/0100.jpeg` (the key used in reports)."""
        return f"{self.split}/{self.label}/{self.path.name}"

    @property
    def label_index(self) -> int:
        """Index of the label in `CLASS_NAMES` (the model's output order)."""
        return CLASS_NAMES.index(self.label)


def _sort_key(sample: Sample) -> tuple[int, int, str]:
    return SPLITS.index(sample.split), sample.label_index, sample.path.name


def _looks_like_root(path: Path) -> bool:
    return any((path / split).is_dir() for split in SPLITS)


def find_dataset_root(path: str | os.PathLike) -> Path:
    """Return the folder holding `train/` and `test/`: `path` itself or one level below it.

    `kagglehub.dataset_download` returns a folder that contains `Covid19-dataset/`, so one
    level of descent is accepted.

    Raises:
        DatasetNotFoundError: no split folder at `path` nor in exactly one of its subfolders.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise _not_found(f"Dataset folder {path} does not exist.")
    if _looks_like_root(path):
        return path
    candidates = sorted(c for c in path.iterdir() if c.is_dir() and _looks_like_root(c))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise _not_found(f"{path} holds several datasets ({names}); point to one of them.")
    raise _not_found(f"No {'/'.join(SPLITS)} folders in {path} or its subfolders.")


def list_samples(data_dir: str | os.PathLike | None = None, split: str | None = None) -> list[Sample]:
    """List the dataset's images, sorted by split, class order, then file name.

    Args:
        data_dir: dataset root (or the folder above it); default `config.resolve_data_dir()`.
        split: "train" or "test"; default both.

    Raises:
        DatasetNotFoundError: the folder, a split folder or a class folder is missing or empty.
        ValueError: unknown split name.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    root = find_dataset_root(config.resolve_data_dir(data_dir))
    samples: list[Sample] = []
    for split_name in [split] if split else SPLITS:
        split_dir = root / split_name
        if not split_dir.is_dir():
            raise _not_found(f"Missing split folder {split_dir}.")
        for label in CLASS_NAMES:
            class_dir = split_dir / label
            if not class_dir.is_dir():
                raise _not_found(f"Missing class folder {class_dir}.")
            files = [
                p
                for p in class_dir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            ]
            if not files:
                raise _not_found(f"No images in {class_dir}.")
            samples.extend(Sample(p, split_name, label) for p in files)
    return sorted(samples, key=_sort_key)


# ---------------------------------------------------------------------------
# Per-file caches, keyed by (path, mtime, size) so an edited file is re-read.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Decoded:
    image: np.ndarray  # IMAGE_SIZE x IMAGE_SIZE x 3 uint8, read-only
    phash: int  # 64-bit perceptual hash of the full decoded image (grayscale)


_CacheKey = tuple[str, int, int]
_sha_cache: dict[_CacheKey, str] = {}
_decode_cache: dict[_CacheKey, _Decoded] = {}
_cache_lock = threading.Lock()


def _cache_key(path: Path) -> _CacheKey:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def clear_cache() -> None:
    """Forget every cached hash and decoded image (tests and long-lived processes)."""
    with _cache_lock:
        _sha_cache.clear()
        _decode_cache.clear()


def file_sha256(path: str | os.PathLike) -> str:
    """`hashing.sha256_file`, cached per path, mtime and size (the audit hashes every image)."""
    path = Path(path)
    key = _cache_key(path)
    cached = _sha_cache.get(key)
    if cached is None:
        cached = sha256_file(path)
        with _cache_lock:
            _sha_cache[key] = cached
    return cached


def _phash(rgb: np.ndarray) -> int:
    import imagehash
    from PIL import Image

    # Perceptual hash of the luminance: X-rays are grey, so colour channels add nothing, and
    # the DCT's low frequencies survive re-encoding, rescaling and small crops.
    bits = imagehash.phash(Image.fromarray(rgb).convert("L"), hash_size=PHASH_SIZE).hash
    return int("".join("1" if b else "0" for b in bits.flatten()), 2)


def _decode(path: Path) -> _Decoded:
    key = _cache_key(path)
    cached = _decode_cache.get(key)
    if cached is not None:
        return cached
    try:
        rgb = imaging.load_image(path, draft_size=DECODE_DRAFT_SIZE)
    except imaging.ImageDecodeError as exc:
        raise imaging.ImageDecodeError(f"{path}: {exc}", getattr(exc, "reason", "not_an_image")) from exc
    image = preprocessing.resize_for_model(rgb)
    image = np.ascontiguousarray(image, dtype=np.uint8)
    image.setflags(write=False)  # the cache hands out this array: nobody may modify it
    decoded = _Decoded(image=image, phash=_phash(rgb))
    with _cache_lock:
        _decode_cache[key] = decoded
    return decoded


def _decode_all(samples: Sequence[Sample]) -> list[_Decoded]:
    # PIL and OpenCV release the GIL while decoding/resizing, so threads overlap the work.
    paths = [s.path for s in samples]
    if len(paths) <= 1 or DECODE_WORKERS == 1:
        return [_decode(p) for p in paths]
    with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as pool:
        return list(pool.map(_decode, paths))


def dataset_manifest_hash(samples: Iterable[Sample]) -> str:
    """SHA-256 over the sorted lines `<relpath>\\t<file sha256>`: identifies the exact data used."""
    lines = sorted(f"{s.relpath}\t{file_sha256(s.path)}\n" for s in samples)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------
# Duplicates (shared by the split and the audit).
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DuplicatePair:
    """Two files showing the same radiograph; `a` < `b` as relpaths."""

    a: str
    b: str
    distance: int  # Hamming distance between the perceptual hashes
    exact: bool  # byte-identical files

    @property
    def scope(self) -> str:
        """The split holding both files ("train" or "test"), or "train/test" for a leak."""
        split_a, split_b = self.a.split("/", 1)[0], self.b.split("/", 1)[0]
        return split_a if split_a == split_b else "train/test"

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "distance": self.distance, "exact": self.exact, "scope": self.scope}


def _find_pairs(samples: Sequence[Sample], near_threshold: int) -> list[tuple[int, int, int, bool]]:
    """Index pairs (i < j, distance, exact) that are byte-identical or within the phash threshold."""
    if near_threshold < 0:
        raise ValueError(f"near_threshold must be >= 0, got {near_threshold}.")
    decoded = _decode_all(samples)
    shas = [file_sha256(s.path) for s in samples]
    hashes = np.array([d.phash for d in decoded], dtype=np.uint64)
    # Byte-identical files decode alike (distance 0), so every exact pair is found here too.
    pairs = []
    for i in range(len(samples) - 1):
        # XOR then popcount = Hamming distance to every later image, one row at a time.
        distances = np.bitwise_count(hashes[i + 1 :] ^ hashes[i])
        for offset in np.flatnonzero(distances <= near_threshold):
            j = i + 1 + int(offset)
            pairs.append((i, j, int(distances[offset]), shas[i] == shas[j]))
    return pairs


def duplicate_groups(
    samples: Sequence[Sample], near_threshold: int = NEAR_DUPLICATE_THRESHOLD
) -> list[list[Sample]]:
    """Group samples connected by exact or near duplicates (transitively); singletons included.

    Groups keep the input order, and are ordered by their first member.
    """
    parent = list(range(len(samples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _, _ in _find_pairs(samples, near_threshold):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[Sample]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(find(i), []).append(sample)
    return list(groups.values())


# ---------------------------------------------------------------------------
# Splits.
# ---------------------------------------------------------------------------
def _label_groups(samples: Sequence[Sample], near_threshold: int) -> tuple[list[list[Sample]], list[int]]:
    """Duplicate groups of `samples` and each group's label (its most common; ties: CLASS_NAMES order)."""
    groups = duplicate_groups(samples, near_threshold)
    counts = [Counter(s.label_index for s in g) for g in groups]
    labels = [min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for c in counts]
    return groups, labels


def _ungroup(samples: Sequence[Sample], groups, indices) -> list[Sample]:
    """The samples of the chosen groups, in the input order."""
    position = {id(s): k for k, s in enumerate(samples)}
    return sorted((s for i in indices for s in groups[i]), key=lambda s: position[id(s)])


def split_train_validation(
    samples: Sequence[Sample],
    val_fraction: float = 0.2,
    seed: int = 42,
    *,
    near_threshold: int = NEAR_DUPLICATE_THRESHOLD,
) -> tuple[list[Sample], list[Sample]]:
    """Stratified, deterministic, duplicate-aware train/validation split.

    Exact and near duplicates (see `duplicate_groups`) are kept on the same side: the train
    split holds the same radiograph several times, and a copy in both halves would let the
    model be validated on images it was trained on (an optimistic validation score and a
    wrong early-stopping epoch). Groups are split with sklearn's `train_test_split`,
    stratified by each group's majority label, so `val_fraction` counts groups (nearly all
    groups are single images).

    Returns:
        (train, val), each in the input order.

    Raises:
        ValueError: bad `val_fraction`, or too few images per class to stratify.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")
    samples = list(samples)
    groups, group_labels = _label_groups(samples, near_threshold)
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(groups)), test_size=val_fraction, random_state=seed, stratify=group_labels
        )
    except ValueError as exc:
        counts = Counter(CLASS_NAMES[i] for i in group_labels)
        raise ValueError(
            f"Cannot make a stratified {val_fraction:.0%} validation split of {len(samples)} images "
            f"({len(groups)} duplicate groups per class: {dict(counts)}): {exc}"
        ) from exc
    return _ungroup(samples, groups, train_idx), _ungroup(samples, groups, val_idx)


def cross_validation_folds(
    samples: Sequence[Sample],
    folds: int = 5,
    seed: int = 42,
    *,
    near_threshold: int = NEAR_DUPLICATE_THRESHOLD,
) -> list[tuple[list[Sample], list[Sample]]]:
    """Stratified, duplicate-aware k-fold cross-validation of `samples` (the train folder).

    Same grouping rule as `split_train_validation` (duplicates never straddle a fold), with
    sklearn's `StratifiedKFold` over the groups. Every sample is in exactly one validation
    fold, so the folds' validation predictions together are out-of-fold predictions for the
    whole train folder: a selection signal five times larger than one validation split.

    Returns:
        `folds` pairs (train, val), each list in the input order.
    """
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}.")
    samples = list(samples)
    groups, group_labels = _label_groups(samples, near_threshold)
    if min(Counter(group_labels).values()) < folds:
        raise ValueError(f"Cannot make {folds} stratified folds: a class has fewer than {folds} images.")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (_ungroup(samples, groups, tr), _ungroup(samples, groups, va))
        for tr, va in splitter.split(np.zeros(len(groups)), group_labels)
    ]


def make_splits(
    data_dir: str | os.PathLike | None = None,
    protocol: str = "default",
    val_fraction: float = 0.2,
    seed: int = 42,
    cv_folds: int = 0,
    cv_fold: int = 0,
) -> dict[str, list[Sample]]:
    """Return {"train", "val", "test"} sample lists for an experimental protocol.

    - "default": val is a stratified, duplicate-aware split of the train folder; test is
      untouched until the final evaluation. With `cv_folds` > 1, val is fold `cv_fold` of a
      `cross_validation_folds` split (seeded by `seed`) instead of a `val_fraction` split.
    - "paper": the paper's protocol: train is the whole train folder and val *is* the test
      folder (model selection on test: its scores are optimistic, reported as such).
    """
    if protocol not in config.PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; expected one of {config.PROTOCOLS}.")
    train_all = list_samples(data_dir, "train")
    test = list_samples(data_dir, "test")
    if protocol == "paper":
        return {"train": train_all, "val": list(test), "test": test}
    if cv_folds > 1:
        if not 0 <= cv_fold < cv_folds:
            raise ValueError(f"cv_fold must be in 0..{cv_folds - 1}, got {cv_fold}.")
        train, val = cross_validation_folds(train_all, folds=cv_folds, seed=seed)[cv_fold]
        return {"train": train, "val": val, "test": test}
    train, val = split_train_validation(train_all, val_fraction=val_fraction, seed=seed)
    return {"train": train, "val": val, "test": test}


# ---------------------------------------------------------------------------
# Arrays and tf.data.
# ---------------------------------------------------------------------------
def load_arrays(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize the samples (each file once per process, then cached).

    Returns:
        images: uint8 array (N, 224, 224, 3); labels: int64 array (N,) of `CLASS_NAMES` indices.
    """
    samples = list(samples)
    labels = np.array([s.label_index for s in samples], dtype=np.int64)
    if not samples:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), labels
    images = np.stack([d.image for d in _decode_all(samples)])
    return images, labels


def class_weights(labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """Balanced class weights (n_samples / (n_classes * count)), as the paper used via sklearn."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("Cannot compute class weights from an empty label array.")
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def build_augmenter(
    zoom: float = 0.1,
    rotation_degrees: float = 10.0,
    shear: float = 0.1,
    flip: bool = True,
    seed: int | None = None,
):
    """The paper's augmentation (random zoom, horizontal flip, rotation, shear), built once.

    Works on batches (or single images) of float values in the 0..255 range and keeps that
    range. Empty regions are filled with black, like the dark border of a radiograph, rather
    than mirrored anatomy. A zero strength (or `flip=False`) leaves that step out.

    Args:
        zoom: maximum zoom in/out, as a fraction of the image size.
        rotation_degrees: maximum rotation either way, in degrees.
        shear: maximum horizontal shear, as a fraction of the image width.
        flip: random left-right flip (as in the paper; note it puts the heart on the right,
            which real radiographs only show with situs inversus).
        seed: seed of the random transformations.

    Returns:
        A `keras.Sequential` of preprocessing layers.
    """
    import keras
    from keras import layers

    for name, value in (("zoom", zoom), ("rotation_degrees", rotation_degrees), ("shear", shear)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    steps = []
    if flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed, name="flip"))
    if rotation_degrees:
        # RandomRotation's factor is a fraction of a full turn.
        steps.append(layers.RandomRotation(rotation_degrees / 360.0, seed=seed, name="rotation", **fill))
    if zoom:
        steps.append(layers.RandomZoom(zoom, seed=seed, name="zoom", **fill))
    if shear:
        steps.append(layers.RandomShear(x_factor=shear, y_factor=0.0, seed=seed, name="shear", **fill))
    return keras.Sequential(steps, name="augmenter")


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    mode: str,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: bool | Callable = False,
    seed: int = 42,
):
    """A `tf.data.Dataset` of (normalised float32 images, one-hot float32 labels) batches.

    Pipeline: in-memory uint8 slices > cache > seeded shuffle > batch > augmentation (on
    0..255 floats) and normalisation (parallel map) > prefetch. Under a Keras backend other
    than TensorFlow (e.g. `KERAS_BACKEND=jax` on a GPU box without TensorFlow) the same
    batches come from an `ArrayBatches` PyDataset instead.

    Args:
        images: uint8 array (N, H, W, 3), e.g. from `load_arrays`.
        labels: int array (N,) of class indices.
        mode: preprocessing mode, "unit" or "imagenet" (`ModelSpec.preprocessing_for`).
        batch_size: images per batch (the last batch may be smaller).
        shuffle: reshuffle every epoch (training); evaluation keeps the file order.
        augment: True for `build_augmenter(seed=seed)`, or an augmenter (a callable on batches
            of 0..255 floats) to reuse; False for none.
        seed: shuffle (and default augmenter) seed.
    """
    import keras

    if mode not in preprocessing.PREPROCESSING_MODES:
        modes = preprocessing.PREPROCESSING_MODES
        raise ValueError(f"Unknown preprocessing mode {mode!r}; expected one of {modes}.")
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"Expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}.")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"Expected {images.shape[0]} labels, got an array of shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"Labels must be class indices in 0..{NUM_CLASSES - 1}, got {labels.min()}..{labels.max()}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")

    augmenter = build_augmenter(seed=seed) if augment is True else (augment or None)
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels.astype(np.int64)]
    if keras.backend.backend() != "tensorflow":
        return array_batches_class()(images, one_hot, mode=mode, batch_size=batch_size, shuffle=shuffle,
                                      augmenter=augmenter, seed=seed)
    import tensorflow as tf

    def prepare(x, y):
        x = tf.cast(x, tf.float32)
        if augmenter is not None:
            # Geometric augmentation on 0..255 values, then clip interpolation overshoot.
            x = tf.clip_by_value(augmenter(x, training=True), 0.0, 255.0)
        return preprocessing.normalize(x, mode), y

    ds = tf.data.Dataset.from_tensor_slices((images, one_hot)).cache()
    if shuffle:
        ds = ds.shuffle(max(1, len(images)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


@functools.cache
def array_batches_class():
    """The `ArrayBatches` PyDataset class, built on first use (it subclasses a Keras class, and
    `import covid_xray.data` stays free of Keras)."""
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        """`make_dataset`'s batches for any Keras backend: shuffled per epoch, augmented, normalised."""

        def __init__(self, images, one_hot, *, mode, batch_size, shuffle, augmenter, seed):
            super().__init__()
            self.images, self.one_hot, self.mode = images, one_hot, mode
            self.batch_size, self.shuffle, self.augmenter = batch_size, shuffle, augmenter
            self._rng = np.random.default_rng(seed)
            self._order = self._rng.permutation(len(images)) if shuffle else np.arange(len(images))

        def __len__(self):
            return -(-len(self.images) // self.batch_size)

        def __getitem__(self, index):
            idx = self._order[index * self.batch_size:(index + 1) * self.batch_size]
            x = self.images[idx].astype(np.float32)
            if self.augmenter is not None:
                x = np.clip(keras.ops.convert_to_numpy(self.augmenter(x, training=True)), 0.0, 255.0)
            return preprocessing.normalize(x, self.mode), self.one_hot[idx]

        def on_epoch_end(self):
            if self.shuffle:
                self._order = self._rng.permutation(len(self.images))

    return ArrayBatches



