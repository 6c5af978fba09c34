"""Model input preparation, defined once: resize to 224x224, then normalise per model.

Training, evaluation, the app and the benchmarks all call these two functions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import cv2
import numpy as np

from covid_xray.config import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, get_model_spec

logger = logging.getLogger(__name__)

PREPROCESSING_MODES = ("unit", "imagenet")


def checkpoint_mode(name: str, metadata: Mapping | None, protocol: str = "default") -> str:
    """The normalisation a checkpoint was trained with (its sidecar's `preprocessing`), else the
    model's mode for `protocol` (logged: every consumer must feed the model what it was trained on)."""
    mode = (metadata or {}).get("preprocessing")
    if mode in PREPROCESSING_MODES:
        return mode
    fallback = get_model_spec(name).preprocessing_for(protocol)
    logger.warning("Checkpoint of %s records no preprocessing mode; assuming %r.", name, fallback)
    return fallback


def resize_for_model(rgb: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize an 8-bit RGB image to size x size (aspect ratio stretched, as the paper did).

    INTER_AREA is used when shrinking (it averages, so no aliasing on big scans) and
    INTER_LINEAR when enlarging.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"Expected an HxWx3 RGB image, got shape {rgb.shape}.")
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interpolation = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interpolation)


def normalize(images, mode: str):
    """Map 0..255 pixel values to the model's input range.

    Works on NumPy arrays and TensorFlow tensors of shape (..., 3).
    - "unit": divide by 255 (the paper's preprocessing, used by DavidNet).
    - "imagenet": divide by 255, then subtract ImageNet mean and divide by std per channel
      (what DenseNet121/CheXNet was trained with).
    """
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"Unknown preprocessing mode {mode!r}; expected one of {PREPROCESSING_MODES}.")
    if isinstance(images, np.ndarray):
        x = images.astype(np.float32) / 255.0
        if mode == "imagenet":
            x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return x
    import tensorflow as tf  # tensors only reach here from tf.data pipelines

    x = tf.cast(images, tf.float32) / 255.0
    if mode == "imagenet":
        x = (x - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)
    return x


def prepare_batch(rgb_images: list[np.ndarray], mode: str) -> np.ndarray:
    """Resize a list of 8-bit RGB images and normalise them into one float32 batch."""
    resized = np.stack([resize_for_model(img) for img in rgb_images])
    return normalize(resized, mode)
