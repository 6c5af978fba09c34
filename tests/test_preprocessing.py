"""Preprocessing: one resize, two normalisations, NumPy and TensorFlow agree."""

import numpy as np
import pytest
import tensorflow as tf

from covid_xray.config import IMAGENET_MEAN, IMAGENET_STD, MODELS
from covid_xray.preprocessing import normalize, prepare_batch, resize_for_model


def test_resize_any_size_to_224():
    for shape in [(640, 640, 3), (3480, 4250, 3), (100, 300, 3)]:
        out = resize_for_model(np.zeros(shape, np.uint8))
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def test_resize_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        resize_for_model(np.zeros((50, 50), np.uint8))


def test_unit_mode_is_divide_by_255():
    x = np.array([[[0, 51, 255]]], np.uint8)
    np.testing.assert_allclose(normalize(x, "unit"), [[[0.0, 0.2, 1.0]]], rtol=1e-6)


def test_imagenet_mode_uses_mean_and_std():
    x = np.full((1, 1, 3), 255, np.uint8)
    expected = (1.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(normalize(x, "imagenet")[0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["unit", "imagenet"])
def test_numpy_and_tensorflow_paths_agree(mode):
    x = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(normalize(x, mode), normalize(tf.constant(x), mode).numpy(), rtol=1e-6)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="preprocessing mode"):
        normalize(np.zeros((1, 1, 3), np.uint8), "caffe")


def test_model_registry_modes():
    assert MODELS["davidnet"].preprocessing_for("default") == "unit"
    assert MODELS["chexnet"].preprocessing_for("default") == "imagenet"
    assert MODELS["chexnet"].preprocessing_for("paper") == "unit"
    with pytest.raises(ValueError):
        MODELS["chexnet"].preprocessing_for("kaggle")


def test_prepare_batch_shapes():
    batch = prepare_batch([np.zeros((300, 400, 3), np.uint8), np.zeros((640, 640, 3), np.uint8)], "unit")
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32
