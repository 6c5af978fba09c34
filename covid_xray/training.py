"""Training: the paper's recipe (Adam, class weights, ReduceLROnPlateau, EarlyStopping, best
validation loss kept), two phases (plain, then augmented), tf.distribute strategies, and a
checkpoint with a JSON sidecar that records everything needed to reproduce it.

CheXNet with a frozen base trains its head on cached DenseNet121 features (one pass of the
base per image and per augmented view), so the head trains in seconds on a CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import platform
import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covid_xray import config

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multiworker")

# progress(stage, done, total): stage "features" counts images through the CheXNet base (done of
# total), stage "epoch" counts epochs run over both phases (done of the maximum, epochs + augment_epochs).
ProgressFn = Callable[[str, int, int], None]


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults are the paper's recipe unless noted."""

    model: str = "davidnet"
    data_dir: str | None = None
    protocol: str = "default"  # "paper" = select on the test split, as the paper did
    epochs: int = 25
    augment_epochs: int = 50  # second, augmented phase; 0 skips it
    batch_size: int = 64
    learning_rate: float = 0.01
    lr_factor: float = 0.7  # "decreases by 30%"
    lr_patience: int = 2
    min_lr: float = 1e-6
    early_stopping_patience: int = 3
    class_weights: bool = True
    label_smoothing: float = 0.0  # not in the paper; 0 = plain cross-entropy
    weight_decay: float = 0.0  # not in the paper; decoupled (AdamW-style) decay, 0 = plain Adam
    swa_epochs: int = 0  # not in the paper; > 0: mean of the last N epochs' weights (weight_averaging.py)
    val_fraction: float = 0.2
    cv_folds: int = 0  # > 1: validate on fold `cv_fold` of a k-fold split of train (model selection studies)
    cv_fold: int = 0
    # Not in the paper: a fixed schedule, nothing chosen on validation. Each phase runs exactly its
    # epochs (no early stopping, no best epoch kept; the LR plateau watches the training loss); without
    # cv_folds the model trains on all of train (no validation split), with it the held-out fold is only
    # predicted (out-of-fold) and logged. The refit study (studies/refit.py) sets the epochs.
    refit: bool = False
    seed: int = 42
    deterministic: bool = False
    # Augmentation strengths (paper: "some zooming, horizontal flipping, rotation, and shearing").
    zoom: float = 0.1
    rotation_degrees: float = 10.0
    shear: float = 0.1
    flip: bool = True
    # CheXNet only.
    fine_tune: bool = False
    chexnet_weights: str | None = None
    feature_views: int = 4  # augmented views per training image cached for the head
    feature_cache_dir: str | None = None  # cached features (default $COVID_XRAY_CACHE or ~/.cache/covid-xray)
    # Infrastructure.
    strategy: str = "auto"
    mixed_precision: str = "auto"  # auto = on when a GPU is used
    logical_cpus: int = 0  # split the CPU into N logical devices (tests the multi-device path)
    max_per_class: int = 0  # 0 = all images; small numbers give quick smoke runs
    checkpoint_dir: str | None = None  # save <model>.keras + .json + history here; default: the run folder
    run_dir: str | None = None  # logs (CSV, TensorBoard), val predictions; default runs/<model>-<time>
    verbose: int = 1

    def __post_init__(self) -> None:
        config.get_model_spec(self.model)
        if self.protocol not in config.PROTOCOLS:
            raise ValueError(f"Unknown protocol {self.protocol!r}; expected one of {config.PROTOCOLS}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}; expected one of {STRATEGIES}.")
        if self.epochs < 0 or self.augment_epochs < 0 or self.epochs + self.augment_epochs < 1:
            raise ValueError(
                f"epochs and augment_epochs must be >= 0 with at least one epoch in all, "
                f"got {self.epochs} and {self.augment_epochs}."
            )
        if self.cv_folds > 1 and not 0 <= self.cv_fold < self.cv_folds:
            raise ValueError(f"cv_fold must be in 0..{self.cv_folds - 1}, got {self.cv_fold}.")
        if self.refit and self.protocol == "paper":
            raise ValueError(
                "refit trains on a fixed schedule; the paper protocol selects on the test split."
            )
        if self.refit and self.swa_epochs:
            raise ValueError(
                "refit and swa_epochs cannot be combined (the averaged weights are judged on validation)."
            )

    @property
    def preprocessing(self) -> str:
        return config.get_model_spec(self.model).preprocessing_for(self.protocol)


@dataclass
class TrainResult:
    """What a run produced: the checkpoint, its metadata, the per-epoch history and the run folder."""

    checkpoint: Path
    metadata: dict
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None  # the run's logs and validation predictions


# ---------------------------------------------------------------------------
# Reproducibility and devices.
# ---------------------------------------------------------------------------
def _tensorflow():
    """TensorFlow when it is Keras' backend, else None (e.g. KERAS_BACKEND=jax on a GPU box).

    The tf.distribute, logical-device and TensorBoard features need it; the training recipe
    itself (model, data, callbacks, checkpoint) runs on any Keras backend.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf


def _gpu_available() -> bool:
    tf = _tensorflow()
    if tf is not None:
        return bool(tf.config.list_physical_devices("GPU"))
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and the Keras backend; optionally force deterministic TF ops."""
    import keras

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf = _tensorflow()
        if tf is None:
            raise RuntimeError("--deterministic needs the TensorFlow backend.")
        tf.config.experimental.enable_op_determinism()


def configure_devices(logical_cpus: int = 0) -> None:
    """Split the CPU into logical devices (must run before TensorFlow initialises its devices)."""
    if logical_cpus <= 1:
        return
    tf = _tensorflow()
    if tf is None:
        raise RuntimeError("--logical-cpus needs the TensorFlow backend.")

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_cpus)]
    )


def make_strategy(name: str, logical_cpus: int = 0):
    """Pick a tf.distribute strategy.

    - default: one device (GPU if present, else CPU).
    - mirrored: synchronous data parallelism over all local GPUs (or the logical CPUs).
    - multiworker: MultiWorkerMirroredStrategy across hosts, configured by TF_CONFIG.
    - auto: mirrored when more than one GPU is visible, else default.

    Under another Keras backend only one device is used (auto/default).
    """
    tf = _tensorflow()
    if tf is None:
        if name not in ("auto", "default"):
            raise RuntimeError(f"--strategy {name} needs the TensorFlow backend (tf.distribute).")
        return _SingleDevice()

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus[: max(logical_cpus, 1)] or None)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")


class _SingleDevice:
    """Stand-in for tf.distribute's default strategy under a non-TensorFlow backend."""

    num_replicas_in_sync = 1

    def scope(self):
        import contextlib

        return contextlib.nullcontext()


def configure_mixed_precision(setting: str) -> str:
    """Turn on mixed_float16 on GPU (or when forced); return the policy name used."""
    import keras

    use = setting == "on" or (setting == "auto" and _gpu_available())
    policy = "mixed_float16" if use else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


# ---------------------------------------------------------------------------
# Callbacks.
# ---------------------------------------------------------------------------
def _best_weights_callback():
    import keras

    class KeepBestWeights(keras.callbacks.Callback):
        """Remember the weights of the lowest validation loss and restore them at the end."""

        def __init__(self, best: float = np.inf):
            super().__init__()
            self.best = best
            self.best_epoch = None
            self.best_weights = None

        def on_epoch_end(self, epoch, logs=None):
            val_loss = (logs or {}).get("val_loss")
            if val_loss is not None and val_loss < self.best:
                self.best = float(val_loss)
                self.best_epoch = epoch + 1
                self.best_weights = self.model.get_weights()

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return KeepBestWeights


def _epoch_progress_callback(progress: ProgressFn, done_before: int, total: int):
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            progress("epoch", done_before + epoch + 1, total)

    return EpochProgress()


def _callbacks(cfg: TrainConfig, run_dir: Path, phase: str, best_so_far: float):
    """The phase's callbacks and its best-weights keeper (None with `cfg.refit`: nothing is chosen)."""
    import keras

    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss" if cfg.refit else "val_loss",
        factor=cfg.lr_factor,
        patience=cfg.lr_patience,
        min_lr=cfg.min_lr,
        verbose=0,
    )
    log = keras.callbacks.CSVLogger(str(run_dir / f"log_{phase}.csv"))
    if cfg.refit:  # a fixed schedule: no best epoch, no early stop
        keep_best, callbacks = None, [plateau, log]
    else:
        keep_best = _best_weights_callback()(best=best_so_far)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.early_stopping_patience)
        callbacks = [keep_best, plateau, stop, log]
    if _tensorflow() is not None:  # TensorBoard's writer is TensorFlow's
        tensorboard_dir = str(run_dir / "tensorboard" / phase)
        callbacks.append(keras.callbacks.TensorBoard(log_dir=tensorboard_dir, write_graph=False))
    return callbacks, keep_best


def _history_rows(history, phase: str, lr_key: str = "learning_rate") -> list[dict]:
    rows = []
    hist = history.history
    for i in range(len(hist.get("loss", []))):
        rows.append(
            {
                "phase": phase,
                "epoch": i + 1,
                "loss": float(hist["loss"][i]),
                "accuracy": float(hist["accuracy"][i]),
                "val_loss": float(hist.get("val_loss", [np.nan] * (i + 1))[i]),
                "val_accuracy": float(hist.get("val_accuracy", [np.nan] * (i + 1))[i]),
                "lr": float(hist.get(lr_key, [np.nan] * (i + 1))[i]),
            }
        )
    return rows


# ---------------------------------------------------------------------------
# Training loops.
# ---------------------------------------------------------------------------
def _fit_phases(
    cfg, model_fn, train_plain, train_aug, val_ds, class_weight, run_dir, strategy, progress=None
):
    """Run the plain phase then (optionally) the augmented phase; keep the best val-loss weights.

    `model_fn` builds and compiles the model inside the strategy scope; `progress` (a ProgressFn)
    hears of every epoch. With `cfg.refit` every phase runs its full epochs and the last weights are
    kept; `val_ds` (None when there is no validation) is then only logged.
    Returns (model, history rows, kept dict(phase, epoch, val_loss)).
    """
    with strategy.scope():
        model = model_fn()
    rows: list[dict] = []
    best = np.inf
    best_weights = None
    kept = {"phase": None, "epoch": None, "val_loss": None}
    phases = [("plain", cfg.epochs, train_plain), ("augmented", cfg.augment_epochs, train_aug)]
    phases = [phase for phase in phases if phase[1] > 0]
    for phase, epochs, train_ds in phases:
        callbacks, keep_best = _callbacks(cfg, run_dir, phase, best)
        if cfg.swa_epochs:  # first, so selection, LR schedule and early stopping judge the averaged weights
            from covid_xray.weight_averaging import window_averaging_callback

            callbacks.insert(0, window_averaging_callback(cfg.swa_epochs, val_ds))
        if progress is not None:
            callbacks.append(_epoch_progress_callback(progress, len(rows), cfg.epochs + cfg.augment_epochs))
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=cfg.verbose,
        )
        rows += _history_rows(history, phase)
        if keep_best is None:
            kept = {"phase": phase, "epoch": len(history.history.get("loss", [])), "val_loss": None}
        elif keep_best.best_epoch is not None:
            best = keep_best.best
            best_weights = keep_best.best_weights
            kept = {"phase": phase, "epoch": keep_best.best_epoch, "val_loss": best}
    # A phase that never beat the earlier best leaves its own last weights in the model:
    # restore the best ones over all phases, so the weights saved are the epoch `kept` names.
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, rows, kept


def _compile(model, learning_rate: float, label_smoothing: float = 0.0, weight_decay: float = 0.0):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=weight_decay or None),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    return model


def _to_dataset(images, labels, cfg: TrainConfig, *, shuffle: bool, augment: bool):
    from covid_xray import data

    ds = data.make_dataset(
        images,
        labels,
        mode=cfg.preprocessing,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        augment=_augmenter(cfg) if augment else False,
        seed=cfg.seed,
    )
    # Keras 3 `fit` distributes a plain tf.data.Dataset across the strategy's replicas itself.
    return ds


def _augmenter(cfg: TrainConfig):
    from covid_xray import data

    return data.build_augmenter(
        zoom=cfg.zoom, rotation_degrees=cfg.rotation_degrees, shear=cfg.shear, flip=cfg.flip, seed=cfg.seed
    )


def _train_end_to_end(cfg, splits, arrays, class_weight, run_dir, strategy, progress=None):
    """DavidNet, or CheXNet with an unfrozen base: the full model sees every batch."""
    from covid_xray import models

    (x_tr, y_tr), (x_va, y_va) = arrays["train"], arrays["val"]
    train_plain = _to_dataset(x_tr, y_tr, cfg, shuffle=True, augment=False)
    train_aug = _to_dataset(x_tr, y_tr, cfg, shuffle=True, augment=True)
    val_ds = _to_dataset(x_va, y_va, cfg, shuffle=False, augment=False) if len(x_va) else None

    def model_fn():
        if cfg.model == "davidnet":
            model = models.build_davidnet()
        else:
            model = models.build_chexnet(weights=_chexnet_weights_path(cfg), trainable_base=True)
        return _compile(model, cfg.learning_rate, cfg.label_smoothing, cfg.weight_decay)

    return _fit_phases(
        cfg, model_fn, train_plain, train_aug, val_ds, class_weight, run_dir, strategy, progress
    )


def _chexnet_weights_path(cfg: TrainConfig) -> Path:
    """The CheXNet base weights file; `WeightsNotFoundError` (with the fix) when it is missing."""
    from covid_xray.weights import require_chexnet_weights

    return require_chexnet_weights(cfg.chexnet_weights)


# Images per forward pass of the frozen DenseNet121 base: measured fastest on 2 vCPUs
# (`benchmarks/bench.py` times 16, 32 and 64; per-image CPU cost is nearly flat above 16).
FEATURE_BATCH_SIZE = 32


def _pooled_function(base_model):
    """The compiled `base -> global average pool` function of `base_model`, built once per model.

    Its input signature leaves the batch size free, so every batch (the last, shorter one too)
    and every later call (train, val, augmented views) reuse ONE trace of DenseNet121, which
    costs seconds of CPU.
    """
    import tensorflow as tf

    pooled = _POOLED_FUNCTIONS.get(base_model)
    if pooled is None:
        spec = tf.TensorSpec((None, *base_model.input.shape[1:]), tf.float32)
        model_ref = weakref.ref(base_model)  # the cache must not keep the model alive

        def pool(x):
            return tf.reduce_mean(model_ref()(x, training=False), axis=(1, 2))

        pooled = tf.function(pool, input_signature=[spec])
        _POOLED_FUNCTIONS[base_model] = pooled
    return pooled


_POOLED_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def extract_features(
    base_model,
    images: np.ndarray,
    mode: str,
    batch_size: int = FEATURE_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Globally pooled DenseNet121 features (N, 1024) of uint8 images, in batches.

    Global average pooling is the head's first operation and has no weights, so pooled
    features are exactly what the head's dense layers see. `on_batch(n)` hears of each batch
    of n images done. The compiled function is traced once per `base_model` (see
    `_pooled_function`).
    """
    from covid_xray.preprocessing import normalize

    pooled = _pooled_function(base_model)
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(normalize(images[start : start + batch_size], mode), np.float32)
        out.append(pooled(batch).numpy())
        if on_batch is not None:
            on_batch(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, 1024), np.float32)


def _augmented_views(images: np.ndarray, cfg: TrainConfig, views: int) -> np.ndarray:
    """`views` seeded augmented copies of each uint8 image (N*views, H, W, 3), for feature caching."""
    augmenter = _augmenter(cfg)
    out = []
    for view in range(views):
        batch = augmenter(images.astype(np.float32), training=True)
        out.append(np.clip(np.asarray(batch), 0, 255).astype(np.uint8))
        del view
    return np.concatenate(out)


def _feature_cache_key(cfg: TrainConfig, weights_sha: str, relpaths: list[str], tag: str) -> str:
    text = json.dumps(
        {
            "weights": weights_sha,
            "files": relpaths,
            "mode": cfg.preprocessing,
            "tag": tag,
            "aug": [cfg.zoom, cfg.rotation_degrees, cfg.shear, cfg.flip, cfg.seed, cfg.feature_views],
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def feature_cache_dir(cfg: TrainConfig) -> Path:
    """CheXNet feature cache: cfg.feature_cache_dir, else $COVID_XRAY_CACHE, else ~/.cache/covid-xray."""
    default = os.environ.get("COVID_XRAY_CACHE") or Path.home() / ".cache" / "covid-xray"
    return Path(cfg.feature_cache_dir or default).expanduser()


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"features_{key}.npy"


def _cached_features(cache_dir: Path, key: str, compute) -> np.ndarray:
    path = _cache_file(cache_dir, key)
    if path.exists():
        return np.load(path)
    feats = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


def _train_chexnet_head(cfg, splits, arrays, class_weight, run_dir, strategy, progress=None):
    """CheXNet with a frozen base: train the head on cached pooled features, then assemble."""
    import keras
    import tensorflow as tf

    from covid_xray import models
    from covid_xray.checkpoints import sha256_file

    weights_path = _chexnet_weights_path(cfg)
    full = models.build_chexnet(weights=weights_path, trainable_base=False)
    base = keras.Model(full.input, full.get_layer(config.get_model_spec("chexnet").gradcam_layer).output)
    weights_sha = sha256_file(weights_path)
    cache_dir = feature_cache_dir(cfg)

    def key_of(split: str, augmented: bool) -> str:
        names = [s.relpath for s in splits[split]]
        return _feature_cache_key(cfg, weights_sha, names, f"{split}-{'aug' if augmented else 'plain'}")

    # Progress counts the images that really go through the base (cached sets cost nothing).
    jobs = [("train", False), ("val", False)] + ([("train", True)] if cfg.augment_epochs > 0 else [])
    total = sum(
        len(arrays[split][0]) * (cfg.feature_views if augmented else 1)
        for split, augmented in jobs
        if not _cache_file(cache_dir, key_of(split, augmented)).exists()
    )
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("features", done, total)

    def feats(split: str, augmented: bool = False):
        images, labels = arrays[split]
        key = key_of(split, augmented)
        if augmented:
            compute = lambda: extract_features(  # noqa: E731
                base, _augmented_views(images, cfg, cfg.feature_views), cfg.preprocessing, on_batch=on_batch
            )
            return _cached_features(cache_dir, key, compute), np.tile(labels, cfg.feature_views)
        compute = lambda: extract_features(base, images, cfg.preprocessing, on_batch=on_batch)  # noqa: E731
        return _cached_features(cache_dir, key, compute), labels

    def head_ds(x, y, shuffle):
        ds = tf.data.Dataset.from_tensor_slices((x, keras.utils.to_categorical(y, config.NUM_CLASSES)))
        if shuffle:
            ds = ds.shuffle(len(x), seed=cfg.seed, reshuffle_each_iteration=True)
        return ds.batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE)

    t0 = time.perf_counter()
    x_tr, y_tr = feats("train")
    x_va, y_va = feats("val")
    train_aug = None
    if cfg.augment_epochs > 0:
        x_aug, y_aug = feats("train", augmented=True)
        train_aug = head_ds(x_aug, y_aug, shuffle=True)
    log.info("CheXNet features ready in %.1f s", time.perf_counter() - t0)

    def head_fn():
        inputs = keras.Input(shape=(x_tr.shape[1],), name="pooled_features")
        x = keras.layers.Dense(64, activation="relu", name="head_dense")(inputs)
        outputs = keras.layers.Dense(
            config.NUM_CLASSES, activation="softmax", dtype="float32", name="predictions"
        )(x)
        head = keras.Model(inputs, outputs, name="chexnet_head")
        return _compile(head, cfg.learning_rate, cfg.label_smoothing, cfg.weight_decay)

    val_ds = head_ds(x_va, y_va, False) if len(x_va) else None
    head, rows, kept = _fit_phases(
        cfg, head_fn, head_ds(x_tr, y_tr, True), train_aug, val_ds, class_weight, run_dir, strategy, progress
    )
    for name in ("head_dense", "predictions"):
        full.get_layer(name).set_weights(head.get_layer(name).get_weights())
    return full, rows, kept


# ---------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------
def library_versions() -> dict:
    import keras
    import sklearn

    tf = _tensorflow()
    return {
        "python": platform.python_version(),
        "keras_backend": keras.backend.backend(),
        "tensorflow": tf.__version__ if tf is not None else None,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def write_val_predictions(samples, probs: np.ndarray, path: Path) -> None:
    """The kept model's validation predictions: file,true,predicted,p_<class>... (one row per image).

    With `--cv-folds`, the folds' files together are out-of-fold predictions for all of train
    (what `scripts/sweep.py --folds` scores).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted", *(f"p_{c}" for c in config.CLASS_NAMES)])
        for sample, p in zip(samples, probs, strict=True):
            predicted = config.CLASS_NAMES[int(np.argmax(p))]
            writer.writerow([sample.relpath, sample.label, predicted, *(f"{float(v):.6f}" for v in p)])


def write_history(rows: list[dict], path: Path) -> None:
    """Per-epoch history as CSV: phase,epoch,loss,accuracy,val_loss,val_accuracy,lr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def train(cfg: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train one model end to end; save `<model>.keras` + JSON sidecar + `<model>_history.csv`.

    They go to `cfg.checkpoint_dir` when it is set, else into the run folder (`cfg.run_dir`, default
    runs/<model>-<time>/), so a run never replaces the shipped checkpoints/ unless asked to.
    `progress(stage, done, total)` (optional) hears of CheXNet feature extraction and each epoch.
    """
    from covid_xray import data
    from covid_xray.checkpoints import save_checkpoint

    if cfg.model == "chexnet":
        _chexnet_weights_path(cfg)  # fail before minutes of data loading, with the fix
    configure_devices(cfg.logical_cpus)
    seed_everything(cfg.seed, cfg.deterministic)
    policy = configure_mixed_precision(cfg.mixed_precision)
    strategy = make_strategy(cfg.strategy, cfg.logical_cpus)
    run_name = f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run_dir or config.PROJECT_ROOT / "runs" / run_name)
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)

    splits = data.make_splits(
        cfg.data_dir, protocol=cfg.protocol, val_fraction=cfg.val_fraction, seed=cfg.seed,
        cv_folds=cfg.cv_folds, cv_fold=cfg.cv_fold,
    )
    if cfg.refit and cfg.cv_folds <= 1:  # nothing to choose, so no validation split: all of train
        splits = {**splits, "train": splits["train"] + splits["val"], "val": []}
    if cfg.max_per_class:
        splits = {k: _limit_per_class(v, cfg.max_per_class) for k, v in splits.items()}
    arrays = {k: data.load_arrays(v) for k, v in splits.items() if k in ("train", "val")}
    class_weight = data.class_weights(arrays["train"][1]) if cfg.class_weights else None
    log.info("train=%d val=%d (protocol %s)", len(splits["train"]), len(splits["val"]), cfg.protocol)

    t0 = time.perf_counter()
    if cfg.model == "chexnet" and not cfg.fine_tune:
        model, rows, kept = _train_chexnet_head(
            cfg, splits, arrays, class_weight, run_dir, strategy, progress
        )
    else:
        model, rows, kept = _train_end_to_end(cfg, splits, arrays, class_weight, run_dir, strategy, progress)
    train_seconds = time.perf_counter() - t0

    # Validation metrics of the kept weights, for the record (never the test split here).
    val_x, val_y = arrays["val"]
    from covid_xray.preprocessing import normalize

    val_acc = None
    if len(val_x):
        val_probs = model.predict(normalize(val_x, cfg.preprocessing), batch_size=32, verbose=0)
        val_acc = float(np.mean(np.argmax(val_probs, axis=1) == val_y))
        write_val_predictions(splits["val"], val_probs, run_dir / "val_predictions.csv")

    all_samples = [s for v in splits.values() for s in v]
    metadata = {
        "model": cfg.model,
        "config": dataclasses.asdict(cfg),
        "protocol": cfg.protocol,
        "selection": _selection(cfg),
        "preprocessing": cfg.preprocessing,
        "class_names": list(config.CLASS_NAMES),
        "versions": library_versions(),
        "dataset_manifest": data.dataset_manifest_hash(all_samples),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "kept": kept,
        "epochs_run": {
            phase: sum(1 for r in rows if r["phase"] == phase) for phase in ("plain", "augmented")
        },
        "val_accuracy": val_acc,
        "train_seconds": round(train_seconds, 1),
        "mixed_precision_policy": policy,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
    }
    if cfg.model == "chexnet":
        from covid_xray.checkpoints import sha256_file

        metadata["chexnet_base_sha256"] = sha256_file(_chexnet_weights_path(cfg))
    checkpoint = config.get_model_spec(cfg.model).checkpoint_path(cfg.checkpoint_dir or run_dir)
    record = save_checkpoint(model, checkpoint, metadata)
    write_history(rows, checkpoint.with_name(f"{cfg.model}_history.csv"))
    write_history(rows, run_dir / "history.csv")
    log.info(
        "saved %s (kept %s epoch %s, val acc %s)", checkpoint, kept["phase"], kept["epoch"],
        "none" if val_acc is None else f"{val_acc:.3f}",
    )
    return TrainResult(checkpoint=checkpoint, metadata=record, history=rows, run_dir=run_dir)


def _selection(cfg: TrainConfig) -> str:
    if cfg.refit:
        held_out = "all of train"
        if cfg.cv_folds > 1:
            held_out = f"fold {cfg.cv_fold} of a {cfg.cv_folds}-fold split held out"
        return f"none: fixed schedule (refit; {held_out})"
    if cfg.protocol == "paper":
        return "test split (paper protocol)"
    if cfg.cv_folds > 1:
        return f"fold {cfg.cv_fold} of a {cfg.cv_folds}-fold split of train"
    return "validation split of train"


def _limit_per_class(samples, n: int):
    out, counts = [], {}
    for s in samples:
        if counts.get(s.label, 0) < n:
            out.append(s)
            counts[s.label] = counts.get(s.label, 0) + 1
    return out
