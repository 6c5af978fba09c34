"""Model builders: the paper's parameter counts, functional graphs, names Grad-CAM needs."""

import keras
import numpy as np
import pytest

from covid_xray import config
from covid_xray.models import (
    CHEXNET_BASE_PARAMS,
    CHEXNET_TRAINABLE_PARAMS,
    DAVIDNET_PARAMS,
    build_chexnet,
    build_davidnet,
    build_model,
)


def _count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def test_davidnet_has_the_papers_parameter_count():
    model = build_davidnet()
    assert model.count_params() == DAVIDNET_PARAMS == 5_575_011
    assert _count(model.trainable_weights) == DAVIDNET_PARAMS


def test_davidnet_layers_match_the_paper():
    model = build_davidnet()
    # Third pooling gives 26x26x64 (the paper's "(26, 26, 24)" is a typo).
    assert tuple(model.get_layer("pool3").output.shape[1:]) == (26, 26, 64)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [128, 64, 3]
    assert model.output.shape[-1] == config.NUM_CLASSES


def test_davidnet_is_functional_and_outputs_probabilities():
    model = build_davidnet()
    assert not isinstance(model, keras.Sequential)
    assert model.get_layer(config.MODELS["davidnet"].gradcam_layer) is not None
    probs = model(np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_chexnet_frozen_counts_and_flat_graph():
    model = build_chexnet(weights=None)
    assert _count(model.trainable_weights) == CHEXNET_TRAINABLE_PARAMS == 65_795
    assert _count(model.non_trainable_weights) == CHEXNET_BASE_PARAMS == 7_037_504
    # One flat graph: DenseNet's layers are direct layers, so Grad-CAM can address them.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert tuple(model.get_layer(config.MODELS["chexnet"].gradcam_layer).output.shape[1:]) == (7, 7, 1024)


@pytest.mark.slow
def test_chexnet_fine_tune_unfreezes_the_base():
    model = build_chexnet(weights=None, trainable_base=True)
    # BatchNorm moving statistics stay non-trainable; everything else trains.
    assert _count(model.trainable_weights) > 6_900_000


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("resnet")
