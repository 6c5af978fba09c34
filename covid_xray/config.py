"""Single source of truth: class names, image size, preprocessing modes, paths, model registry.

Nothing else in the project hard-codes these values; import them from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------
# Classes, exactly as the dataset's folder names (and in this fixed order).
# ---------------------------------------------------------------------------
CLASS_NAMES: tuple[str, ...] = ("Covid", "Normal", "Viral Pneumonia")
NUM_CLASSES = len(CLASS_NAMES)
# Human-friendly names for the UI; keys are CLASS_NAMES.
CLASS_DISPLAY_NAMES = {"Covid": "COVID-19", "Normal": "Normal", "Viral Pneumonia": "Viral Pneumonia"}

SPLITS: tuple[str, ...] = ("train", "test")
# The test subsets every report uses (evaluate's metrics.json keys), with their titles: all test
# images, and those without an exact or near duplicate in train.
TEST_SUBSET_TITLES: dict[str, str] = {"official": "Official test", "leakage_free": "Leakage-free test"}

# Both models see 224x224 RGB, as in the paper.
IMAGE_SIZE = 224
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
# JPEG draft decoding keeps both sides >= this (twice the model input): training, evaluation and
# serving all decode with it, so the models see exactly the same pixels everywhere.
DECODE_DRAFT_SIZE = IMAGE_SIZE * 2

# ImageNet statistics (CheXNet was trained on ImageNet-normalised input).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Experimental protocols. "default": model selected on a validation split of train;
# "paper": the paper's protocol, which used the test split as validation (optimistic).
PROTOCOLS = ("default", "paper")

# ---------------------------------------------------------------------------
# Input limits (settings with sensible defaults; env vars override).
# ---------------------------------------------------------------------------
MAX_UPLOAD_BYTES = int(os.environ.get("COVID_XRAY_MAX_UPLOAD_BYTES", 50 * 1024 * 1024))
MAX_IMAGE_PIXELS = int(os.environ.get("COVID_XRAY_MAX_PIXELS", 50_000_000))
MIN_IMAGE_SIDE = 32

# ---------------------------------------------------------------------------
# Paths.
# ---------------------------------------------------------------------------
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_DIR = PROJECT_ROOT / "checkpoints"
REPORTS_DIR = PROJECT_ROOT / "reports"
CHECKPOINT_DIR_ENV_VAR = "COVID_XRAY_CHECKPOINT_DIR"
REPORTS_DIR_ENV_VAR = "COVID_XRAY_REPORTS_DIR"
EXAMPLES_FILE = PROJECT_ROOT / "examples" / "examples.csv"
DATA_ENV_VAR = "COVID_XRAY_DATA"
# Where `python -m covid_xray.studies.data download` puts the dataset.
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "Covid19-dataset"
KAGGLE_DATASET = "pranavraikokte/covid19-image-dataset"

# The expected per-class counts of the Kaggle split (a download is checked against them).
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "train": {"Covid": 111, "Normal": 70, "Viral Pneumonia": 70},
    "test": {"Covid": 26, "Normal": 20, "Viral Pneumonia": 20},
}
DATASET_FOLDER = "Covid19-dataset"

# One cache folder for everything the app brings itself on first start (covid_xray.provision):
# the dataset, the CheXNet base weights, the trained CheXNet head and its evaluation.
HOME_ENV_VAR = "COVID_XRAY_HOME"
# Hugging Face Spaces mount persistent storage at /data (when the Space has it).
SPACES_PERSISTENT_DIR = Path("/data")

# First-start provisioning's settings (covid_xray.provision.Settings reads them): where the
# dataset and the CheXNet weights come from, the weights' expected sha256, "1" = never download,
# and changes to the head's training recipe as KEY=VALUE `TrainConfig` fields (e.g. a tiny budget
# in tests; empty = the shipped recipe).
DATASET_SOURCE_ENV_VAR = "COVID_XRAY_DATASET_SOURCE"
CHEXNET_SOURCE_ENV_VAR = "COVID_XRAY_CHEXNET_SOURCE"
CHEXNET_SHA256_ENV_VAR = "COVID_XRAY_CHEXNET_SHA256"
OFFLINE_ENV_VAR = "COVID_XRAY_OFFLINE"
HEAD_TRAIN_ARGS_ENV_VAR = "COVID_XRAY_HEAD_TRAIN_ARGS"

CHEXNET_WEIGHTS_ENV_VAR = "COVID_XRAY_CHEXNET_WEIGHTS"
DEFAULT_CHEXNET_WEIGHTS = CHECKPOINT_DIR / "chexnet_base.h5"
# The public Keras port of CheXNet (brucechou1983/CheXNet-Keras, release 0.3.0).
CHEXNET_WEIGHTS_FILENAME = "brucechou1983_CheXNet_Keras_0.3.0_weights.h5"
# A Kaggle dataset that mirrors that file (the default source of first-start provisioning).
CHEXNET_KAGGLE_DATASET = "sinamhd9/chexnet-weights"


def resolve_home() -> Path:
    """The cache folder: $COVID_XRAY_HOME, else /data/covid-xray when /data is writable (a Space's
    persistent storage), else ~/.cache/covid-xray."""
    env = os.environ.get(HOME_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    if SPACES_PERSISTENT_DIR.is_dir() and os.access(SPACES_PERSISTENT_DIR, os.W_OK):
        return SPACES_PERSISTENT_DIR / "covid-xray"
    return Path.home() / ".cache" / "covid-xray"


def home_data_dir() -> Path:
    """Where first-start provisioning puts the dataset."""
    return resolve_home() / DATASET_FOLDER


def home_checkpoint_dir() -> Path:
    """Where first-start provisioning puts checkpoints it trains (the CheXNet head)."""
    return resolve_home() / "checkpoints"


def home_reports_dir() -> Path:
    """Where first-start provisioning puts the evaluation of what it trained."""
    return resolve_home() / "reports"


def home_chexnet_weights() -> Path:
    """Where first-start provisioning puts the CheXNet base weights."""
    return resolve_home() / "chexnet_base.h5"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the dataset root: explicit argument, else $COVID_XRAY_DATA, else data/Covid19-dataset
    when it exists, else the cache's copy (`home_data_dir`)."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    if DEFAULT_DATA_DIR.exists():
        return DEFAULT_DATA_DIR
    return home_data_dir()


def resolve_checkpoint_dir(path: str | os.PathLike | None = None) -> Path:
    """Checkpoint folder: argument, else $COVID_XRAY_CHECKPOINT_DIR, else the committed checkpoints/."""
    return Path(path or os.environ.get(CHECKPOINT_DIR_ENV_VAR) or CHECKPOINT_DIR).expanduser().resolve()


def resolve_reports_dir(path: str | os.PathLike | None = None) -> Path:
    """Evaluation outputs folder: argument, else $COVID_XRAY_REPORTS_DIR, else the committed reports/."""
    return Path(path or os.environ.get(REPORTS_DIR_ENV_VAR) or REPORTS_DIR).expanduser().resolve()


def resolve_chexnet_weights(path: str | os.PathLike | None = None) -> Path:
    """Return the CheXNet base weights path: argument, else $COVID_XRAY_CHEXNET_WEIGHTS, else
    checkpoints/chexnet_base.h5, else the cache's copy when only that exists."""
    if path:
        return Path(path).expanduser().resolve()
    env = os.environ.get(CHEXNET_WEIGHTS_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    if DEFAULT_CHEXNET_WEIGHTS.exists() or not home_chexnet_weights().exists():
        return DEFAULT_CHEXNET_WEIGHTS
    return home_chexnet_weights()


# ---------------------------------------------------------------------------
# Model registry: one entry per model carries everything model-specific.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the code needs to know about one model."""

    name: str
    display_name: str
    # Preprocessing mode per protocol: "unit" (/255) or "imagenet" (/255, then mean/std).
    preprocessing: dict
    # Last convolutional block, the Grad-CAM target layer.
    gradcam_layer: str
    # The features the input guard (ood.py) and the similar-films index (neighbours.py) read.
    feature_layer: str
    # Paper's reported official-test accuracy (initial training, selected on test).
    paper_accuracy: float
    # Faster-Score-CAM keeps this many feature maps: one forward pass of as many masked images
    # per request, so it sets Score-CAM's latency (benchmarks/bench.py measures it).
    scorecam_max_n: int = 16
    # SmoothGrad averages this many noisy copies per request, one forward and backward pass each.
    # Measured per request on 2 shared vCPUs (load average 1.3-2.3): DavidNet 16 copies 0.46-0.85 s;
    # CheXNet (DenseNet121) 8 copies 2.8-3.4 s (16: ~5.2 s), its first request 5.7-6.4 s.
    smoothgrad_samples: int = 16

    def checkpoint_path(self, checkpoint_dir: str | os.PathLike | None = None) -> Path:
        """The model's `.keras` file (its JSON sidecar has the same stem).

        In the checkpoint folder (`resolve_checkpoint_dir`); when the file is not there but the
        cache holds one that first-start provisioning trained, that one.
        """
        path = resolve_checkpoint_dir(checkpoint_dir) / f"{self.name}.keras"
        cached = home_checkpoint_dir() / path.name
        return cached if not path.exists() and cached.exists() else path

    def report_dir(self, reports_dir: str | os.PathLike | None = None) -> Path:
        """Folder of the model's evaluation outputs (metrics.json, predictions.csv, plots).

        In the reports folder (`resolve_reports_dir`); when that has no evaluation of the model but
        the cache has one (written by first-start provisioning), the cache's.
        """
        path = resolve_reports_dir(reports_dir) / self.name
        cached = home_reports_dir() / self.name
        if not (path / "metrics.json").exists() and (cached / "metrics.json").exists():
            return cached
        return path

    def preprocessing_for(self, protocol: str = "default") -> str:
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
        return self.preprocessing[protocol]


MODELS: dict[str, ModelSpec] = {
    "davidnet": ModelSpec(
        name="davidnet",
        display_name="DavidNet",
        preprocessing={"default": "unit", "paper": "unit"},
        gradcam_layer="conv3",
        # Spatially averaged: the guard's false alarms on adult films are lowest there (README).
        feature_layer="conv3",
        paper_accuracy=0.95,
    ),
    "chexnet": ModelSpec(
        name="chexnet",
        display_name="CheXNet",
        preprocessing={"default": "imagenet", "paper": "unit"},
        # DenseNet121's last activation before pooling (end of dense block 4).
        gradcam_layer="relu",
        # The pooled DenseNet121 features the head reads.
        feature_layer="head_flatten",
        paper_accuracy=0.78,
        # 8 masked DenseNet121 passes keep Score-CAM under 1 s on 2 vCPUs (16 take about 1.6 s).
        scorecam_max_n=8,
        smoothgrad_samples=8,
    ),
}


# ---------------------------------------------------------------------------
# Report files: the studies (`covid_xray.studies`) write them, `covid_xray.report` reads them.
# Per model in `ModelSpec.report_dir()`, except AUDIT_FILE and OOD_REPORT_FILE (reports/ itself).
# ---------------------------------------------------------------------------
AUDIT_FILE = "audit.json"
OOD_REPORT_FILE = "ood.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
# predictions.csv columns; a labelled folder's has `group` in place of the Kaggle-only `leaked`.
PREDICTION_COLUMNS = ("file", "true", "predicted", "confidence", *(f"p_{c}" for c in CLASS_NAMES), "leaked")
FOLDER_PREDICTION_COLUMNS = (*PREDICTION_COLUMNS[:-1], "group")
HISTORY_FILE = "history.csv"
HISTORY_PLOT_FILE = "training_curves.png"  # drawn from HISTORY_FILE by evaluation
CONFUSION_FILE = "confusion_{subset}.png"  # subset: a TEST_SUBSET_TITLES key, or "all"
CALIBRATION_FILE = "calibration.json"
RELIABILITY_FILE = "reliability.png"
OOF_CALIBRATION_FILE = "calibration_oof.json"
OOF_RELIABILITY_FILE = "calibration_oof.png"
FAITHFULNESS_FILE = "faithfulness.json"
FAITHFULNESS_PLOT_FILE = "faithfulness.png"
SHORTCUTS_FILE = "shortcuts.json"
CV_SWEEP_FILE = "cv_sweep.json"
CV_WEIGHT_AVERAGING_FILE = "cv_weight_averaging.json"
CV_REFIT_FILE = "cv_refit.json"

# ---------------------------------------------------------------------------
# Commands quoted in messages and reports (one home each; `{name}` is a model name).
# ---------------------------------------------------------------------------
STUDIES = "python -m covid_xray.studies"
EVALUATE_COMMAND = f"{STUDIES}.evaluate --model {{name}}"
CALIBRATION_FIT_COMMAND = f"{STUDIES}.calibrate fit --model {{name}}"
OOF_CALIBRATION_COMMAND = f"{STUDIES}.oof_calibrate --model {{name}} --runs <the fold runs>"
OOF_APPLY_COMMAND = f"{STUDIES}.oof_calibrate apply --model {{name}}"
FAITHFULNESS_COMMAND = f"{STUDIES}.faithfulness --model {{name}}"
SHORTCUTS_COMMAND = f"{STUDIES}.shortcuts --model {{name}}"
OOD_COMMAND = f"{STUDIES}.ood"
NEIGHBOURS_COMMAND = f"{STUDIES}.neighbours"
WEIGHT_AVERAGING_COMMAND = f"{STUDIES}.weight_averaging"
REFIT_COMMAND = f"{STUDIES}.refit"
DATA_COMMAND = f"{STUDIES}.data"
DOWNLOAD_COMMAND = f"{DATA_COMMAND} download"
WEIGHTS_COMMAND = f"{STUDIES}.weights"
WEIGHTS_FETCH_COMMAND = f"pip install kagglehub && {WEIGHTS_COMMAND} fetch-kaggle"
TRAIN_INSTALL_COMMAND = "python train.py --model {name} --install"


def get_model_spec(name: str) -> ModelSpec:
    """Look a model up by name, with a helpful error."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.") from None
