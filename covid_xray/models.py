"""Model builders: DavidNet (the paper's small CNN) and CheXNet (DenseNet121 + small head).

Both are Keras 3 *functional* models (tf-keras-vis needs functional graphs), and CheXNet is
one flat graph so that Grad-CAM can reach DenseNet's last convolutional block by name.
"""

from __future__ import annotations

import os

import keras
from keras import layers

from covid_xray.config import INPUT_SHAPE, NUM_CLASSES

DAVIDNET_PARAMS = 5_575_011
CHEXNET_TRAINABLE_PARAMS = 65_795
CHEXNET_BASE_PARAMS = 7_037_504
# Name of the head's first layer in CheXNet; layers from here on are the trained head.
CHEXNET_HEAD_START = "head_pool"


def build_davidnet(input_shape: tuple[int, int, int] = INPUT_SHAPE) -> keras.Model:
    """The paper's DavidNet: 3 conv/pool stages, then Dense 128 > 64 > 3 (5,575,011 parameters).

    After the third pooling the feature map is 26x26x64 (the paper's "(26, 26, 24)" is a typo:
    only 64 channels give the stated parameter count).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(2, name="pool3")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense1")(x)
    x = layers.Dense(64, activation="relu", name="dense2")(x)
    # float32 output keeps softmax stable under a mixed-precision policy on GPU.
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="davidnet")


def build_chexnet_head(features, name_prefix: str = "head"):
    """The paper's head: GlobalAveragePooling2D > Flatten > Dense(64, relu) > Dense(3, softmax)."""
    x = layers.GlobalAveragePooling2D(name=f"{name_prefix}_pool")(features)
    x = layers.Flatten(name=f"{name_prefix}_flatten")(x)
    x = layers.Dense(64, activation="relu", name=f"{name_prefix}_dense")(x)
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="predictions")(x)


def build_densenet_base(input_tensor) -> keras.Model:
    """DenseNet121 without its top, built on `input_tensor` so its layers join the outer graph."""
    return keras.applications.DenseNet121(include_top=False, weights=None, input_tensor=input_tensor)


def build_chexnet(
    weights: str | os.PathLike | None = None,
    trainable_base: bool = False,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
) -> keras.Model:
    """CheXNet: DenseNet121 (CheXNet chest X-ray weights) + the paper's small head.

    Args:
        weights: path to CheXNet base weights (Keras-2 HDF5 as published, or a Keras 3
            ``.weights.h5``/``.keras`` of the same base). ``None`` leaves the base randomly
            initialised: only for tests and for loading a full trained checkpoint on top.
        trainable_base: unfreeze DenseNet121 (full fine-tune) instead of training the head only.

    With the base frozen the model has 65,795 trainable and 7,037,504 non-trainable parameters.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    base = build_densenet_base(inputs)
    if weights is not None:
        from covid_xray.weights import load_chexnet_base_weights

        load_chexnet_base_weights(base, weights)
    base.trainable = trainable_base
    outputs = build_chexnet_head(base.output)
    # keras.Model(inputs, outputs) over the base's tensors gives one flat graph: every DenseNet
    # layer is a direct layer of this model (no nested sub-model), as Grad-CAM needs.
    model = keras.Model(inputs, outputs, name="chexnet")
    return model


def build_model(name: str, **kwargs) -> keras.Model:
    """Build a registered model by name."""
    if name == "davidnet":
        return build_davidnet(**kwargs)
    if name == "chexnet":
        return build_chexnet(**kwargs)
    raise ValueError(f"Unknown model {name!r}; expected 'davidnet' or 'chexnet'.")
