"""Similar training films: the k nearest TRAINING images of an image in a model's feature space.

For a teacher or an error review, the closest training films explain many answers at once: an
adult normal film that lands among COVID-19 films (the model reads "adult", not "disease"), or
a leaked test image whose byte-identical twin in train is its first neighbour.

Feature space: the layer the OOD guard reads (`ModelSpec.feature_layer` in `covid_xray.config`),
so the explainer's forward pass already returns these features and serving needs no second pass:
DavidNet's last convolutional block `conv3`, globally averaged (64-d); CheXNet's `head_flatten`,
the 1024 globally pooled DenseNet121 activations of its Grad-CAM layer `relu`.

Distance: cosine distance (1 - cosine similarity, 0 = same direction, 1 = unrelated, at most 2)
between STANDARDISED features: each unit is centred on its training mean and divided by its
training standard deviation; units that never vary on the training set are dropped. Why:
ReLU units differ in scale by orders of magnitude, so without standardising a few units decide
every distance; ReLU features are all >= 0, so uncentred cosine calls any two films similar;
and cosine ignores the overall activation strength (contrast and exposure scale it). The
choice rests on these reasons, not on a score: on DavidNet's 251 training films, raw, centred
and standardised features with L2 or cosine distance all reach 98.0-98.4% leave-one-out 1-NN
label agreement (this one: 98.0%, `python -m covid_xray.studies.neighbours --model davidnet`); the test
split was not used to choose.

Usage::

    index = NeighbourIndex.build(model, "dense2", data.list_samples(None, "train"), "unit",
                                 cache_dir=None, checkpoint_sha=metadata["sha256"])
    neighbours = index.query(features, k=5, query_file="test/Covid/COVID-00012.jpg")
    neighbours[0].file, neighbours[0].label, neighbours[0].age, neighbours[0].distance
    leaked_twin_first(neighbours)   # True: the first neighbour is the query's copy in train

The training features are computed once and cached in `cache_dir` (default
`~/.cache/covid-xray/neighbours`) in a file keyed by the checkpoint's sha256, the dataset
manifest hash, the feature layer and the preprocessing mode: a retrained checkpoint or changed
data gets a new file.
The command line (build or reuse the cache, lookup time, leave-one-out agreement):
`python -m covid_xray.studies.neighbours`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import data, preprocessing
from covid_xray.config import CLASS_DISPLAY_NAMES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
DEFAULT_K = 5
DEFAULT_CACHE_DIR = Path("~/.cache/covid-xray/neighbours")
CACHE_ENV_VAR = "COVID_XRAY_NEIGHBOURS_CACHE"
CACHE_FORMAT = "covid-xray-neighbours"
CACHE_VERSION = 1
# Images per forward pass while the index is built (in the app's background, beside requests):
# batch 32 raised the app's peak memory by ~450 MB (DavidNet's 222x222x32 first activations alone
# are 200 MB at batch 32). Any batch of two or more images gives the same features as any other
# on these CPUs (tests/test_neighbours.py), so a smaller one costs only a little speed.
FEATURE_BATCH_SIZE = 8
# A unit whose training standard deviation is below this fraction of the largest unit's is
# treated as constant (dead ReLU) and dropped from the distance.
MIN_RELATIVE_STD = 1e-6

# Provenance, from the dataset's README (shared/data/README.md) and the leakage audit: Normal and
# Viral Pneumonia come from the Kermany et al. pediatric collection; COVID-19 images from the
# covid-chestxray-dataset, which is mostly adults but does not record age for every film.
SOURCE_BY_LABEL: dict[str, tuple[str, str]] = {
    "Covid": ("covid-chestxray-dataset (Univ. of Montreal)", "adult (most)"),
    "Normal": ("Kermany et al. pediatric collection", "child"),
    "Viral Pneumonia": ("Kermany et al. pediatric collection", "child"),
}
# Files whose provenance differs from their folder's (matched against the source collections).
SOURCE_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "train/Covid/COVID-00020.jpg": (
        "Kermany et al. pediatric collection (a viral-pneumonia film filed under Covid)",
        "child",
    ),
}


class NeighbourError(ValueError):
    """The index cannot be built or queried (no training images, features of the wrong size)."""


def provenance(relpath: str, label: str) -> tuple[str, str]:
    """(source collection, "child" / "adult (most)" / "unknown") of a dataset file."""
    if relpath in SOURCE_EXCEPTIONS:
        return SOURCE_EXCEPTIONS[relpath]
    return SOURCE_BY_LABEL.get(label, ("unknown", "unknown"))


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache folder: argument, else $COVID_XRAY_NEIGHBOURS_CACHE, else ~/.cache/covid-xray/neighbours."""
    return Path(cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR).expanduser()


def audit_twins(audit_path: str | os.PathLike | None = None) -> dict[str, frozenset[str]]:
    """{test relpath: the train relpaths that are exact or near copies of it}, from the audit.

    `audit_path` when given ({} when it does not exist); else the audit of the dataset
    (`covid_xray.audit.audit_for`: the committed reports/audit.json, else one computed and cached).
    {} when the audit cannot be read or computed (logged): leaked images then go unmarked.
    """
    from covid_xray.audit import AuditReport, audit_for, twins

    try:
        if audit_path and not Path(audit_path).exists():
            logger.warning("No leakage audit at %s: leaked test images will not be marked.", audit_path)
            return {}
        report = AuditReport.from_json(audit_path) if audit_path else audit_for(data.list_samples())
    except (data.DatasetNotFoundError, KeyError, TypeError, ValueError, OSError) as exc:
        logger.warning("No usable leakage audit (%s): leaked test images will not be marked.", exc)
        return {}
    return twins(report)


def model_fingerprint(model) -> str:
    """sha256 of a model's weights: the cache key when no checkpoint hash is given (tests)."""
    digest = hashlib.sha256(model.name.encode())
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Result.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Neighbour:
    """One similar training film.

    Attributes:
        rank: 1 for the nearest.
        file: dataset-relative path, e.g. "train/Covid/069.jpg".
        label: its folder label (a `CLASS_NAMES` entry).
        source: the collection it comes from (see `provenance`).
        age: "child", "adult (most)" or "unknown".
        distance: cosine distance of standardised features (0 = same, 1 = unrelated, <= 2).
        twin: the leakage audit lists this training file as an exact or near copy of the query.
        path: the file on disk (for a thumbnail), or None when the index was loaded without paths.
    """

    rank: int
    file: str
    label: str
    source: str
    age: str
    distance: float
    twin: bool = False
    path: Path | None = None

    @property
    def label_display(self) -> str:
        return CLASS_DISPLAY_NAMES.get(self.label, self.label)

    def caption(self) -> str:
        """One line for a thumbnail: "#1 COVID-19, adult (most), distance 0.12 (copy of this image)"."""
        text = f"#{self.rank} {self.label_display}, {self.age}, distance {self.distance:.2f}"
        return text + (" (copy of this image)" if self.twin else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "file": self.file,
            "label": self.label,
            "source": self.source,
            "age": self.age,
            "distance": round(float(self.distance), 6),
            "twin": bool(self.twin),
        }


def leaked_twin_first(neighbours: Sequence[Neighbour]) -> bool:
    """True when the nearest neighbour is the query's own copy in train (a leaked test image)."""
    return bool(neighbours) and neighbours[0].twin


# ---------------------------------------------------------------------------
# Index.
# ---------------------------------------------------------------------------
@dataclass(eq=False)
class NeighbourIndex:
    """Standardised, unit-length training features and the files they came from.

    Build with :meth:`build` (cached); query with features the request already computed
    (:meth:`query`) or with a model input (:meth:`query_image`, one forward pass).
    """

    features: np.ndarray  # (N, D) float32 raw features of the training images
    files: tuple[str, ...]
    labels: tuple[str, ...]
    model_name: str = ""
    feature_layer: str = ""
    preprocessing: str = ""
    checkpoint_sha: str = ""
    manifest_hash: str = ""
    paths: tuple[Path, ...] | None = None
    twins: Mapping[str, frozenset[str]] = field(default_factory=dict)
    from_cache: bool = False
    cache_path: Path | None = None
    extractor: Any = None  # ood.FeatureExtractor for query_image / extract, or None

    def __post_init__(self) -> None:
        x = np.asarray(self.features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1:
            raise NeighbourError(f"Expected (N >= 1, D) training features, got shape {x.shape}.")
        if len(self.files) != x.shape[0] or len(self.labels) != x.shape[0]:
            raise NeighbourError(
                f"{x.shape[0]} feature rows but {len(self.files)} files and {len(self.labels)} labels."
            )
        self.features = np.asarray(self.features, dtype=np.float32)
        self.files, self.labels = tuple(self.files), tuple(self.labels)
        self._mean = x.mean(axis=0)
        std = x.std(axis=0)
        self._keep = std > MIN_RELATIVE_STD * max(float(std.max()), 1e-12)
        self._std = np.where(self._keep, std, 1.0)
        self._unit = self._standardise(x)  # (N, D') unit rows
        self._provenance = [provenance(f, lab) for f, lab in zip(self.files, self.labels, strict=True)]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return len(self.files)

    def _standardise(self, f: np.ndarray) -> np.ndarray:
        z = ((np.atleast_2d(f) - self._mean) / self._std)[:, self._keep]
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        return z / np.maximum(norms, 1e-12)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N,) cosine distances of one feature vector (D,) to every training image."""
        f = np.asarray(features, dtype=np.float64).reshape(-1)
        if f.shape[0] != self.dim:
            raise NeighbourError(
                f"Expected {self.dim} features from layer {self.feature_layer!r}, got {f.shape[0]}."
            )
        d = 1.0 - self._unit @ self._standardise(f)[0]
        return np.clip(d, 0.0, 2.0)

    def query(
        self, features: np.ndarray, k: int = DEFAULT_K, *, query_file: str | None = None
    ) -> list[Neighbour]:
        """The k nearest training images of one image's (D,) features, nearest first.

        Args:
            features: the image's `feature_layer` output (pooled if spatial), e.g. the third value
                of `Explainer.analyse` when the explainer's feature layer is this index's.
            k: neighbours returned (at most the index size).
            query_file: the query's dataset relpath when it is a dataset image (gallery, example):
                marks its audit copies in train (`Neighbour.twin`). None for uploads.

        Raises:
            NeighbourError: features of the wrong size, or k < 1.
        """
        if k < 1:
            raise NeighbourError(f"k must be >= 1, got {k}.")
        d = self.distances(features)
        k = min(int(k), len(d))
        top = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
        # Ties (duplicate training films) are broken by file name: a stable, reproducible order.
        top = sorted(top.tolist(), key=lambda i: (round(float(d[i]), 9), self.files[i]))
        twins = self.twins.get(query_file or "", frozenset())
        return [
            Neighbour(
                rank=rank,
                file=self.files[i],
                label=self.labels[i],
                source=self._provenance[i][0],
                age=self._provenance[i][1],
                distance=float(d[i]),
                twin=self.files[i] in twins,
                path=self.paths[i] if self.paths else None,
            )
            for rank, i in enumerate(top, start=1)
        ]

    def extract(self, images: np.ndarray, batch_size: int = FEATURE_BATCH_SIZE) -> np.ndarray:
        """(N, D) features of uint8 (N, 224, 224, 3) model inputs (one batched forward pass).

        Raises:
            NeighbourError: the index has no model attached (built from arrays alone).
        """
        if self.extractor is None:
            raise NeighbourError("This neighbour index has no model attached: pass features to query().")
        return self.extractor(images, batch_size=batch_size, mode=self.preprocessing)

    def query_image(
        self, model_input: np.ndarray, k: int = DEFAULT_K, *, query_file: str | None = None
    ) -> list[Neighbour]:
        """`query` for a uint8 224x224x3 model input: runs the feature function (one pass).
        Prefer `query` with the explainer's features when the request already has them."""
        return self.query(self.extract(model_input)[0], k, query_file=query_file)

    # ------------------------------------------------------------------ building and caching
    @classmethod
    def build(
        cls,
        model,
        feature_layer: str | None,
        samples: Sequence[data.Sample],
        mode: str,
        cache_dir: str | os.PathLike | None = None,
        checkpoint_sha: str | None = None,
        *,
        model_name: str | None = None,
        twins: Mapping[str, frozenset[str]] | None = None,
        batch_size: int = FEATURE_BATCH_SIZE,
    ) -> NeighbourIndex:
        """Features of the training `samples` in `model`'s `feature_layer`, read from the cache
        when a file for this checkpoint, data, layer and mode exists, otherwise computed (one
        batched pass over the images) and written there.

        Args:
            model: the loaded Keras classifier.
            feature_layer: layer name; None takes `ood.feature_layer_name(model, model_name)`.
            samples: the training images (`data.list_samples(data_dir, "train")`).
            mode: the checkpoint's preprocessing mode ("unit" or "imagenet").
            cache_dir: cache folder (`resolve_cache_dir` default).
            checkpoint_sha: the checkpoint's sha256 (sidecar "sha256"); None hashes the weights.
            model_name: registered name (default `model.name`).
            twins: leaked test files' copies in train (default `audit_twins()`).

        Raises:
            NeighbourError: no samples, or an unknown preprocessing mode.
        """
        from covid_xray import ood

        samples = list(samples)
        if not samples:
            raise NeighbourError("No training images to index.")
        if mode not in preprocessing.PREPROCESSING_MODES:
            raise NeighbourError(f"Unknown preprocessing mode {mode!r}.")
        model_name = model_name or model.name
        layer = feature_layer or ood.feature_layer_name(model, model_name)
        sha = checkpoint_sha or model_fingerprint(model)
        manifest = data.dataset_manifest_hash(samples)
        files = tuple(s.relpath for s in samples)
        labels = tuple(s.label for s in samples)
        extractor = ood.FeatureExtractor(model, layer)
        path = cache_file(resolve_cache_dir(cache_dir), model_name, sha, manifest, layer, mode)
        features = _read_cache(path, sha, manifest, layer, mode, files, extractor.dim)
        from_cache = features is not None
        if features is None:
            images, _ = data.load_arrays(samples)
            features = extractor(images, batch_size=batch_size, mode=mode)
            _write_cache(path, features, files, labels, model_name, sha, manifest, layer, mode)
        return cls(
            features=features,
            files=files,
            labels=labels,
            model_name=model_name,
            feature_layer=layer,
            preprocessing=mode,
            checkpoint_sha=sha,
            manifest_hash=manifest,
            paths=tuple(s.path for s in samples),
            twins=audit_twins() if twins is None else dict(twins),
            from_cache=from_cache,
            cache_path=path,
            extractor=extractor,
        )


def cache_file(cache_dir: Path, model_name: str, sha: str, manifest: str, layer: str, mode: str) -> Path:
    """`<cache>/<model>-<sha[:16]>-<manifest[:16]>-<layer>-<mode>.npz`."""
    safe_layer = "".join(c if c.isalnum() or c in "-_" else "_" for c in layer)
    return Path(cache_dir) / f"{model_name}-{sha[:16]}-{manifest[:16]}-{safe_layer}-{mode}.npz"


def _read_cache(path: Path, sha, manifest, layer, mode, files, dim) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            features = np.asarray(npz["features"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("Ignoring unreadable neighbour cache %s (%s); recomputing.", path, exc)
        return None
    expected = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "checkpoint_sha256": sha,
        "manifest": manifest,
        "feature_layer": layer,
        "preprocessing": mode,
    }
    if (
        any(meta.get(key) != value for key, value in expected.items())
        or tuple(meta.get("files", ())) != files
    ):
        logger.warning("Neighbour cache %s does not match this checkpoint/data; recomputing.", path)
        return None
    if features.shape != (len(files), dim) or not np.isfinite(features).all():
        logger.warning("Neighbour cache %s holds features of shape %s; recomputing.", path, features.shape)
        return None
    logger.info("Neighbour features read from %s", path)
    return features


def _write_cache(path: Path, features, files, labels, model_name, sha, manifest, layer, mode) -> None:
    meta = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "model": model_name,
        "checkpoint_sha256": sha,
        "manifest": manifest,
        "feature_layer": layer,
        "preprocessing": mode,
        "files": list(files),
        "labels": list(labels),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, features=np.asarray(features, np.float32), meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        logger.info("Neighbour features cached in %s", path)
    except OSError as exc:  # a read-only home must not cost the feature
        logger.warning("Could not write the neighbour cache %s: %s", path, exc)


def index_for(
    loaded,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    twins: Mapping[str, frozenset[str]] | None = None,
) -> NeighbourIndex:
    """The index of a served model (`inference.LoadedModel`), in the explainer's feature layer
    when it has one (so `query` takes the request's features), else `ModelSpec.feature_layer`.

    Raises:
        data.DatasetNotFoundError: the training images are not on disk.
    """
    model = loaded.explainer.model
    layer = loaded.explainer.feature_layer
    return NeighbourIndex.build(
        model,
        layer,
        data.list_samples(data_dir, "train"),
        loaded.preprocessing,
        cache_dir,
        loaded.metadata.get("sha256"),
        model_name=loaded.name,
        twins=twins,
    )


# ---------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------
