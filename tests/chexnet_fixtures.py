"""Test helpers: synthetic CheXNet weight files in the published Keras-2 HDF5 layout.

The real file (brucechou1983_CheXNet_Keras_0.3.0_weights.h5) is not in the repository, so the
tests write a file with the same structure and random values: Keras-2 DenseNet121 + a 14-unit
``predictions`` head, "/" in the stem's layer names, ``weight_names`` with ":0" suffixes.
"""

from __future__ import annotations

import os

import h5py
import keras
import numpy as np

from covid_xray.config import INPUT_SHAPE

# ChestX-ray14 has 14 findings: the published head's width.
CHEXNET_HEAD_UNITS = 14
KERAS2_VERSION = b"2.1.6"
# Keras 3 names of the stem layers that Keras 2's DenseNet wrote with "/".
_KERAS2_STEM_NAMES = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "conv1_relu": "conv1/relu"}


def build_base() -> keras.Model:
    """A bare DenseNet121 base (no weights downloaded), as `covid_xray.models` builds it."""
    from covid_xray.models import build_densenet_base

    return build_densenet_base(keras.Input(shape=INPUT_SHAPE, name="image"))


def random_arrays(model: keras.Model, seed: int) -> dict[str, list[np.ndarray]]:
    """Random float32 arrays for every layer with weights, keyed by layer name (layer.weights order)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer in model.layers:
        values = []
        for variable in layer.weights:
            shape = tuple(variable.shape)
            if variable.name in ("gamma", "moving_variance"):
                # Scales and variances are positive in any trained BatchNorm.
                values.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            else:
                values.append((0.05 * rng.standard_normal(shape)).astype(np.float32))
        if values:
            arrays[layer.name] = values
    return arrays


def set_arrays(model: keras.Model, arrays: dict[str, list[np.ndarray]]) -> None:
    """Assign `random_arrays`-style values to the model's layers."""
    for name, values in arrays.items():
        model.get_layer(name).set_weights(values)


def _keras2_names(base: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """Keras-2 layer names in model order: input_1, zero_padding2d_1/2, conv1/conv, ..."""
    names, paddings = [], 0
    for layer in base.layers:
        if isinstance(layer, keras.layers.InputLayer):
            name = "input_1"
        elif isinstance(layer, keras.layers.ZeroPadding2D):
            paddings += 1
            name = f"zero_padding2d_{paddings}"
        else:
            name = _KERAS2_STEM_NAMES.get(layer.name, layer.name)
        names.append((name, layer))
    return names


def write_keras2_chexnet_weights(
    path: str | os.PathLike,
    seed: int = 0,
    base: keras.Model | None = None,
    full_model: bool = False,
) -> dict[str, list[np.ndarray]]:
    """Write a Keras-2 ``save_weights`` HDF5 file of DenseNet121 + the 14-finding head.

    Args:
        path: output file.
        seed: seed of the random values.
        base: a DenseNet121 base to take layer order and shapes from (built if omitted).
        full_model: nest the layout under ``model_weights`` like Keras 2's ``model.save``.

    Returns:
        The base arrays written, keyed by Keras 3 layer name, in ``layer.get_weights()`` order.
    """
    base = base if base is not None else build_base()
    arrays = random_arrays(base, seed)
    rng = np.random.default_rng(seed + 1)
    features = base.output.shape[-1]
    head = [
        (
            "predictions/kernel:0",
            (0.05 * rng.standard_normal((features, CHEXNET_HEAD_UNITS))).astype(np.float32),
        ),
        ("predictions/bias:0", np.zeros(CHEXNET_HEAD_UNITS, np.float32)),
    ]
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        layer_names = []
        for name, layer in _keras2_names(base):
            layer_names.append(name)
            # "conv1/conv" becomes nested groups, exactly as h5py did for Keras 2.
            group = root.create_group(name)
            weight_names = [f"{name}/{variable.name}:0" for variable in layer.weights]
            # Keras 2 wrote an empty name list as an empty float array.
            group.attrs["weight_names"] = (
                np.array([n.encode() for n in weight_names]) if weight_names else np.asarray([])
            )
            for weight_name, value in zip(weight_names, arrays.get(layer.name, []), strict=True):
                group.create_dataset(weight_name, data=value)
        # pooling="avg" then the 14-unit sigmoid head.
        for name, weights in (("avg_pool", []), ("predictions", head)):
            layer_names.append(name)
            group = root.create_group(name)
            group.attrs["weight_names"] = (
                np.array([n.encode() for n, _ in weights]) if weights else np.asarray([])
            )
            for weight_name, value in weights:
                group.create_dataset(weight_name, data=value)
        root.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = KERAS2_VERSION
    return arrays
