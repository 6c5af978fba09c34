"""Tests for covid_xray.explain: compiled Grad-CAM / Grad-CAM++, Score-CAM, SmoothGrad, overlay.

tf-keras-vis is the reference implementation: our compiled maps must equal its maps on the same
logits twin, the same class and the same layer; SmoothGrad is tf-keras-vis's own, fed in batches,
and must equal its plain single-image call. Tiny synthetic models (32x32x3) keep this fast.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.scores import CategoricalScore

from covid_xray.config import IMAGE_SIZE, INPUT_SHAPE, MODELS, NUM_CLASSES
from covid_xray.explain import (
    BELOW_LUNGS_NOTE,
    BORDER_MAP_NOTE,
    BORDER_NOTE_MIN,
    FLAT_MAP_NOTE,
    METHODS,
    OUTSIDE_CHEST_NOTE,
    SALIENCY_METHODS,
    SERVED_METHODS,
    SMOOTHGRAD_SEED,
    Explainer,
    ExplainerError,
    colorbar_width,
    heatmap_notes,
    render_overlay,
)
from covid_xray.faithfulness import border_mass, border_weights
from covid_xray.models import build_chexnet, build_davidnet

TINY_SHAPE = (32, 32, 3)
# Tolerances of the comparison with tf-keras-vis, on maps min-max normalised to [0, 1]. Measured
# over 3 model seeds x 2 inputs: Grad-CAM <= 1.1e-6 on both models; Grad-CAM++ <= 2e-7 on the tiny
# CNN but up to 9.6e-4 on a random DavidNet, where near-singular alphas amplify the rounding
# differences of TF's graph optimiser (see explain._gradcam_plus_plus_weights).
REFERENCE_ATOL = {"gradcam": 1e-5, "gradcam++": 1e-5}
DAVIDNET_GRADCAM_PLUS_PLUS_ATOL = 2e-3


# ---------------------------------------------------------------------------
# Models and inputs.
# ---------------------------------------------------------------------------
def _build_tiny_cnn() -> keras.Model:
    """A small functional CNN with a skip connection; "last_conv" is its Grad-CAM layer (15x15)."""
    inputs = keras.Input(TINY_SHAPE, name="image")
    c1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    c2 = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(c1)
    x = layers.Add(name="skip")([c1, c2])
    x = layers.Conv2D(16, 3, strides=2, activation="relu", name="last_conv")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(16, activation="relu", name="dense")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny")


def _build_quadrant_model() -> keras.Model:
    """A hand-set CNN whose answer is known.

    "detector" (2x2 conv, stride 2, 16x16 grid): channel 0 fires on red pixels (R - G > 0),
    channel 1 on green ones. Class 0 reads the red detector in the TOP-LEFT quadrant only,
    class 1 the green detector in the TOP-RIGHT quadrant only, class 2 reads nothing.
    """
    inputs = keras.Input(TINY_SHAPE, name="image")
    detector = layers.Conv2D(2, 2, strides=2, activation="relu", name="detector")
    x = detector(inputs)
    x = layers.Flatten(name="flatten")(x)
    head = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")
    outputs = head(x)
    model = keras.Model(inputs, outputs, name="quadrant")

    kernel = np.zeros((2, 2, 3, 2), np.float32)
    kernel[:, :, 0, 0], kernel[:, :, 1, 0] = 0.25, -0.25  # red minus green, averaged over 2x2
    kernel[:, :, 1, 1], kernel[:, :, 0, 1] = 0.25, -0.25  # green minus red
    detector.set_weights([kernel, np.zeros(2, np.float32)])
    dense = np.zeros((16, 16, 2, NUM_CLASSES), np.float32)  # (row, col, channel) as Flatten orders them
    dense[:8, :8, 0, 0] = 0.5  # class 0: red evidence in the top-left quadrant
    dense[:8, 8:, 1, 1] = 0.5  # class 1: green evidence in the top-right quadrant
    head.set_weights([dense.reshape(-1, NUM_CLASSES), np.zeros(NUM_CLASSES, np.float32)])
    return model


def _quadrant_image() -> np.ndarray:
    """Grey background, a red patch in the top-left quadrant, a smaller green one in the top-right."""
    image = np.full(TINY_SHAPE, 0.5, np.float32)
    image[4:12, 4:12] = (1.0, 0.0, 0.0)  # 4x4 detector cells: class 0 logit 8
    image[4:10, 20:26] = (0.0, 1.0, 0.0)  # 3x3 detector cells: class 1 logit 4.5
    return image


def _random_image(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _quadrant_mass(heatmap: np.ndarray) -> dict[str, float]:
    """Share of the heatmap's total mass in each quadrant."""
    h, w = heatmap.shape
    total = float(heatmap.sum())
    return {
        "top_left": float(heatmap[: h // 2, : w // 2].sum()) / total,
        "top_right": float(heatmap[: h // 2, w // 2 :].sum()) / total,
        "bottom_left": float(heatmap[h // 2 :, : w // 2].sum()) / total,
        "bottom_right": float(heatmap[h // 2 :, w // 2 :].sum()) / total,
    }


def _minmax(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam, np.float64)
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)


@pytest.fixture(scope="module")
def davidnet() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_davidnet()


@pytest.fixture(scope="module")
def davidnet_explainer(davidnet) -> Explainer:
    explainer = Explainer(davidnet, MODELS["davidnet"].gradcam_layer)
    explainer.warm_up()
    return explainer


@pytest.fixture(scope="module")
def tiny_explainer() -> Explainer:
    keras.utils.set_random_seed(1)
    return Explainer(_build_tiny_cnn(), "last_conv", scorecam_max_n=8)


@pytest.fixture(scope="module")
def quadrant_explainer() -> Explainer:
    return Explainer(_build_quadrant_model(), "detector")


@pytest.fixture(params=["davidnet", "tiny"])
def explainer_and_input(request, davidnet_explainer, tiny_explainer):
    if request.param == "davidnet":
        return davidnet_explainer, _random_image(INPUT_SHAPE, seed=1)
    return tiny_explainer, _random_image(TINY_SHAPE)


# ---------------------------------------------------------------------------
# Shapes, ranges, probabilities.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_explain_shapes_and_ranges(explainer_and_input, method):
    explainer, x = explainer_and_input
    probs, heatmap = explainer.explain(x, method)
    assert probs.shape == (NUM_CLASSES,) and probs.dtype == np.float32
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    # The heatmap is at the input resolution.
    assert heatmap.shape == x.shape[:2] and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert heatmap.max() == pytest.approx(1.0)  # random weights give some positive evidence
    # At the target layer's resolution on request.
    _, layer_map = explainer.explain(x, method, upsample=False)
    assert layer_map.shape == tuple(explainer.model.get_layer(explainer.layer_name).output.shape[1:3])


def test_probabilities_match_model_output(explainer_and_input):
    # The compiled path computes logits = penultimate @ kernel + bias and softmax(logits): it must
    # give the model's own probabilities.
    explainer, x = explainer_and_input
    expected = explainer.model(x[None], training=False).numpy()[0]
    probs = explainer.predict(x)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    for method in METHODS:
        np.testing.assert_allclose(explainer.explain(x, method)[0], probs, rtol=0, atol=1e-6)


def test_logits_twin_matches_model(explainer_and_input):
    explainer, x = explainer_and_input
    logits = explainer.logits_model(x[None], training=False).numpy()
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(probs, explainer.model(x[None], training=False).numpy(), atol=1e-6)


def test_class_index_none_explains_predicted_class(davidnet_explainer):
    x = _random_image(INPUT_SHAPE, seed=3)
    probs = davidnet_explainer.predict(x)
    for method in METHODS:
        _, default = davidnet_explainer.explain(x, method)
        _, explicit = davidnet_explainer.explain(x, method, class_index=int(np.argmax(probs)))
        np.testing.assert_array_equal(default, explicit)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(davidnet_explainer, method):
    x = _random_image(INPUT_SHAPE, seed=4)
    probs_1, heatmap_1 = davidnet_explainer.explain(x, method)
    probs_2, heatmap_2 = davidnet_explainer.explain(x.copy(), method)
    np.testing.assert_array_equal(probs_1, probs_2)
    np.testing.assert_array_equal(heatmap_1, heatmap_2)


def test_accepts_a_batch_of_one(tiny_explainer):
    x = _random_image(TINY_SHAPE)
    np.testing.assert_array_equal(tiny_explainer.predict(x[None]), tiny_explainer.predict(x))


# ---------------------------------------------------------------------------
# Equivalence with the reference implementation (tf-keras-vis).
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, reference",
    [
        ("gradcam", Gradcam),  # spatial mean of the logit's gradients
        ("gradcam++", GradcamPlusPlus),  # closed form with the exponential score
    ],
)
def test_matches_tf_keras_vis(explainer_and_input, method, reference):
    # Compared at the target layer's resolution: tf-keras-vis upsamples with scipy's zoom, we with
    # tf.image.resize (half-pixel centres), which differ by design; before upsampling both are the
    # same map. The reference scores the same logit on our logits twin.
    explainer, x = explainer_and_input
    atol = REFERENCE_ATOL[method]
    if explainer.model.name == "davidnet" and method == "gradcam++":
        atol = DAVIDNET_GRADCAM_PLUS_PLUS_ATOL
    visualizer = reference(explainer.logits_model, clone=False)
    nontrivial = 0
    for class_index in range(NUM_CLASSES):
        _, ours = explainer.explain(x, method, class_index, upsample=False)
        expected = visualizer(
            CategoricalScore(class_index),
            x[None],
            penultimate_layer=explainer.layer_name,
            seek_penultimate_conv_layer=False,
            expand_cam=False,
            normalize_cam=False,
        )[0]
        np.testing.assert_allclose(ours, _minmax(expected), rtol=0, atol=atol)
        nontrivial += int(ours.max() > 0)
    assert nontrivial >= 1, "all maps empty: the comparison proved nothing"


# The plain library passes the masked images to Model.predict as a one-element list.
@pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")
def test_scorecam_matches_plain_tf_keras_vis(explainer_and_input):
    # Our Score-CAM runs tf-keras-vis on a two-stage compiled copy of the logits twin with a
    # compiled predict; the plain library on the plain logits twin must give the same map.
    explainer, x = explainer_and_input
    _, ours = explainer.explain(x, "scorecam", class_index=0, upsample=False)
    expected = Scorecam(explainer.logits_model, clone=False)(
        CategoricalScore(0),
        x[None],
        penultimate_layer=explainer.layer_name,
        seek_penultimate_conv_layer=False,
        max_N=explainer.scorecam_max_n,
        expand_cam=False,
        normalize_cam=False,
    )[0]
    np.testing.assert_allclose(ours, _minmax(expected), rtol=0, atol=1e-5)


def test_scorecam_with_skip_connection_around_target_layer():
    # "conv2" feeds an Add that also reads "conv1": the model cannot be split at "conv2", so
    # Score-CAM falls back to the plain logits twin; it must still work.
    keras.utils.set_random_seed(2)
    explainer = Explainer(_build_tiny_cnn(), "conv2", scorecam_max_n=4)
    probs, heatmap = explainer.explain(_random_image(TINY_SHAPE), "scorecam")
    assert probs.shape == (NUM_CLASSES,) and heatmap.shape == TINY_SHAPE[:2]
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0


# ---------------------------------------------------------------------------
# The explanation points at the right place on a model whose answer is known.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "class_index, quadrant",
    [
        (0, "top_left"),  # red evidence, read only in the top-left quadrant
        (1, "top_right"),  # green evidence, top-right: a transposed map would land bottom-left
    ],
)
def test_highlights_the_evidence(quadrant_explainer, method, class_index, quadrant):
    # CAM weights are per channel, so each class's evidence is a different feature channel;
    # the other patch is a distractor the class ignores.
    probs, heatmap = quadrant_explainer.explain(_quadrant_image(), method, class_index)
    assert int(np.argmax(probs)) == 0  # logits 8 vs 4.5 vs 0
    assert _quadrant_mass(heatmap)[quadrant] > 0.9


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_no_evidence_gives_an_empty_map(quadrant_explainer, method):
    # Class 2 reads nothing: zero gradients, so the map must stay all zeros (not noise scaled up).
    _, heatmap = quadrant_explainer.explain(_quadrant_image(), method, class_index=2)
    assert heatmap.shape == TINY_SHAPE[:2]
    assert not heatmap.any()


def test_confident_prediction_still_gives_a_map(quadrant_explainer):
    # Scaled-up evidence makes p(class 0) ~ 1; softmax gradients would vanish, logit ones do not.
    image = _quadrant_image()
    image[4:12, 4:12, 0] = 20.0
    probs, heatmap = quadrant_explainer.explain(image, "gradcam")
    assert probs[0] == pytest.approx(1.0)
    assert _quadrant_mass(heatmap)["top_left"] > 0.9


# ---------------------------------------------------------------------------
# SmoothGrad (tf-keras-vis's Saliency with smooth_samples).
# ---------------------------------------------------------------------------
def _build_blob_model() -> keras.Model:
    """A hand-set CNN whose class-0 logit is the brightest 3x3 neighbourhood of the image.

    "bright" averages each 3x3x3 window; a global max picks the brightest one; class 0 scores it
    positively, class 2 negatively, class 1 ignores it. The input gradient of the class-0 logit
    is therefore non-zero only on the window the max picks: on a bright blob, wherever it is.
    """
    inputs = keras.Input(TINY_SHAPE, name="image")
    conv = layers.Conv2D(1, 3, padding="same", activation="relu", name="bright")
    x = layers.GlobalMaxPooling2D(name="max")(conv(inputs))
    head = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")
    model = keras.Model(inputs, head(x), name="blob")
    conv.set_weights([np.full((3, 3, 3, 1), 1.0 / 27.0, np.float32), np.zeros(1, np.float32)])
    head.set_weights([np.array([[2.0, 0.0, -2.0]], np.float32), np.zeros(NUM_CLASSES, np.float32)])
    return model


def _blob_image(row: int, col: int, size: int = 6) -> np.ndarray:
    image = np.zeros(TINY_SHAPE, np.float32)
    image[row : row + size, col : col + size] = 1.0
    return image


def test_served_methods_are_the_cams_then_smoothgrad():
    assert METHODS == ("gradcam", "gradcam++", "scorecam")  # the faithfulness study iterates over these
    assert SALIENCY_METHODS == ("smoothgrad",)
    assert SERVED_METHODS == (*METHODS, *SALIENCY_METHODS)


def test_smoothgrad_map_shape_range_and_determinism(explainer_and_input):
    explainer, x = explainer_and_input
    probs, heatmap = explainer.explain(x, "smoothgrad")
    np.testing.assert_allclose(probs, explainer.predict(x), rtol=0, atol=1e-6)
    # A pixel map at the input resolution (224x224 on DavidNet), scaled to [0, 1] like the CAMs.
    assert heatmap.shape == x.shape[:2] and heatmap.dtype == np.float32
    assert np.all(np.isfinite(heatmap))
    assert heatmap.min() == 0.0 and heatmap.max() == pytest.approx(1.0)
    assert heatmap.std() > 0.05  # not a flat wash
    # Seeded noise: a second request gives the identical map.
    _, again = explainer.explain(x.copy(), "smoothgrad")
    np.testing.assert_array_equal(heatmap, again)
    # There is no target layer: `upsample` does not apply.
    np.testing.assert_array_equal(explainer.explain(x, "smoothgrad", upsample=False)[1], heatmap)
    # Not a Grad-CAM map under another name.
    _, gradcam = explainer.explain(x, "gradcam")
    assert np.abs(heatmap - gradcam).mean() > 0.05


def test_smoothgrad_explains_the_requested_class(davidnet_explainer):
    x = _random_image(INPUT_SHAPE, seed=3)
    predicted = int(np.argmax(davidnet_explainer.predict(x)))
    _, default = davidnet_explainer.explain(x, "smoothgrad")
    _, explicit = davidnet_explainer.explain(x, "smoothgrad", class_index=predicted)
    np.testing.assert_array_equal(default, explicit)
    _, other = davidnet_explainer.explain(x, "smoothgrad", class_index=(predicted + 1) % NUM_CLASSES)
    assert not np.allclose(other, default, atol=1e-3)


@pytest.mark.parametrize("samples", [12, 5])  # 6 copies x 2 passes; 5 copies in one pass
@pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")
def test_smoothgrad_equals_plain_tf_keras_vis(tiny_explainer, samples):
    # Batched copies must give tf-keras-vis's single-image SmoothGrad with the same noise draws.
    explainer = Explainer(tiny_explainer.model, "last_conv", smoothgrad_samples=samples)
    x = _random_image(TINY_SHAPE, seed=2)
    _, ours = explainer.explain(x, "smoothgrad", class_index=1)
    np.random.seed(SMOOTHGRAD_SEED)
    expected = Saliency(explainer.logits_model, clone=False)(
        CategoricalScore(1), x[None], smooth_samples=samples, smooth_noise=0.20, normalize_map=False
    )[0]
    np.testing.assert_allclose(ours, _minmax(expected), rtol=0, atol=1e-5)


def test_smoothgrad_without_noise_is_the_plain_input_gradient(tiny_explainer):
    # smoothgrad_noise=0: every copy is the image itself, so the map is max over channels of
    # |d logit / d pixel|, computed here independently of the explainer (penultimate @ kernel + bias).
    model = tiny_explainer.model
    explainer = Explainer(model, "last_conv", smoothgrad_samples=3, smoothgrad_noise=0.0)
    penultimate = keras.Model(model.inputs[0], model.layers[-1].input)
    kernel, bias = model.layers[-1].get_weights()
    x = tf.constant(_random_image(TINY_SHAPE, seed=6)[None])
    for class_index in range(NUM_CLASSES):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logit = tf.matmul(penultimate(x, training=False), kernel)[0, class_index] + bias[class_index]
        expected = _minmax(np.abs(tape.gradient(logit, x).numpy()[0]).max(axis=-1))
        _, ours = explainer.explain(x.numpy()[0], "smoothgrad", class_index=class_index)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("row, col", [(3, 4), (22, 20)])
def test_smoothgrad_follows_a_bright_blob(row, col):
    # The class-0 score reads the brightest spot: the map's mass must lie on the blob, wherever
    # it is put (a constant map, or one that ignored the image, would fail for one position).
    explainer = Explainer(_build_blob_model(), "bright", smoothgrad_samples=8)
    image = _blob_image(row, col)
    probs, heatmap = explainer.explain(image, "smoothgrad", class_index=0)
    assert int(np.argmax(probs)) == 0
    on_blob = heatmap[max(row - 1, 0) : row + 7, max(col - 1, 0) : col + 7].sum() / heatmap.sum()
    assert on_blob > 0.9
    peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert row <= peak[0] < row + 6 and col <= peak[1] < col + 6


def test_smoothgrad_of_a_class_without_evidence_is_empty(quadrant_explainer):
    # Class 2 of the quadrant model reads nothing: zero gradients give an all-zero map, not noise.
    _, heatmap = quadrant_explainer.explain(_quadrant_image(), "smoothgrad", class_index=2)
    assert heatmap.shape == TINY_SHAPE[:2] and not heatmap.any()


def test_smoothgrad_leaves_numpys_global_generator_alone(tiny_explainer):
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    tiny_explainer.explain(_random_image(TINY_SHAPE), "smoothgrad")
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_analyse_smoothgrad_returns_the_forward_features(davidnet):
    fused = Explainer(
        davidnet, MODELS["davidnet"].gradcam_layer, feature_layer="dense2", smoothgrad_samples=4
    )
    fused.warm_up(("smoothgrad",))
    x = _random_image(INPUT_SHAPE, seed=4)
    probs, heatmap, features = fused.analyse(x, "smoothgrad")
    expected_features = fused.analyse(x, None)[2]
    np.testing.assert_array_equal(features, expected_features)
    expected_probs, expected_map = fused.explain(x, "smoothgrad")
    np.testing.assert_array_equal(probs, expected_probs)
    np.testing.assert_array_equal(heatmap, expected_map)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"smoothgrad_samples": 0}, "smoothgrad_samples must be at least 1"),
        ({"smoothgrad_noise": -0.1}, "smoothgrad_noise must be finite and >= 0"),
        ({"smoothgrad_noise": float("nan")}, "smoothgrad_noise must be finite and >= 0"),
    ],
)
def test_rejects_bad_smoothgrad_settings(tiny_explainer, kwargs, message):
    with pytest.raises(ExplainerError, match=message):
        Explainer(tiny_explainer.model, "last_conv", **kwargs)


# ---------------------------------------------------------------------------
# Save / reload.
# ---------------------------------------------------------------------------
def test_works_after_keras_save_and_reload(tmp_path, davidnet, davidnet_explainer):
    path = tmp_path / "davidnet.keras"
    davidnet.save(path)
    reloaded = Explainer(keras.models.load_model(path), MODELS["davidnet"].gradcam_layer)
    x = _random_image(INPUT_SHAPE, seed=5)
    for method in METHODS:
        probs, heatmap = reloaded.explain(x, method)
        expected_probs, expected_heatmap = davidnet_explainer.explain(x, method)
        np.testing.assert_allclose(probs, expected_probs, atol=1e-6)
        np.testing.assert_allclose(heatmap, expected_heatmap, atol=1e-5)


# ---------------------------------------------------------------------------
# Errors people can act on.
# ---------------------------------------------------------------------------
def test_rejects_unknown_layer(davidnet):
    with pytest.raises(ExplainerError, match="'conv9' is not in model"):
        Explainer(davidnet, "conv9")


def test_rejects_non_spatial_layer(davidnet):
    with pytest.raises(ExplainerError, match="must output \\(batch, height, width, channels\\)"):
        Explainer(davidnet, "dense1")


def test_rejects_model_without_softmax_head():
    inputs = keras.Input(TINY_SHAPE)
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = layers.Dense(NUM_CLASSES, name="logits")(layers.Flatten()(x))
    with pytest.raises(ExplainerError, match="Dense\\(n, activation='softmax'\\)"):
        Explainer(keras.Model(inputs, outputs), "conv")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "lime"}, "Unknown explanation method"),
        ({"class_index": NUM_CLASSES}, "class_index must be in"),
        ({"class_index": -1}, "class_index must be in"),
    ],
)
def test_rejects_bad_requests(tiny_explainer, kwargs, message):
    with pytest.raises(ExplainerError, match=message):
        tiny_explainer.explain(_random_image(TINY_SHAPE), **kwargs)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((16, 16, 3), np.float32),  # wrong size
        np.zeros((32, 32), np.float32),  # no channels
        np.full(TINY_SHAPE, np.nan, np.float32),  # not finite
    ],
)
def test_rejects_bad_images(tiny_explainer, image):
    with pytest.raises(ExplainerError):
        tiny_explainer.predict(image)


# ---------------------------------------------------------------------------
# Overlay.
# ---------------------------------------------------------------------------
def _display_image(height: int = 300, width: int = 200) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("colorbar", [True, False])
@pytest.mark.parametrize("size", [(300, 200), (IMAGE_SIZE, IMAGE_SIZE), (40, 60)])
def test_overlay_keeps_the_image_and_appends_the_scale(size, colorbar):
    image = _display_image(*size)
    heatmap = np.random.default_rng(0).random((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    out = render_overlay(image, heatmap, colorbar=colorbar)
    extra = colorbar_width(*size) if colorbar else 0
    assert out.shape == (size[0], size[1] + extra, 3) and out.dtype == np.uint8
    assert (extra > 0) == (colorbar and min(size) >= 48)
    # The image part is the plain blend: the scale covers none of it.
    np.testing.assert_array_equal(out[:, : size[1]], render_overlay(image, heatmap, colorbar=False))


@pytest.mark.parametrize("colorbar", [True, False])
def test_overlay_alpha_zero_returns_the_original(colorbar):
    image = _display_image()
    out = render_overlay(image, np.ones((7, 7), np.float32), alpha=0.0, colorbar=colorbar)
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_overlay_alpha_one_shows_jet_colours():
    # jet: 1.0 is dark red (128, 0, 0), 0.0 dark blue (0, 0, 128).
    image = _display_image(64, 64)
    high = render_overlay(image, np.ones((8, 8), np.float32), alpha=1.0, colorbar=False)
    low = render_overlay(image, np.zeros((8, 8), np.float32), alpha=1.0, colorbar=False)
    assert np.all(high == (128, 0, 0)) and np.all(low == (0, 0, 128))


def test_overlay_blends_with_alpha():
    image = np.full((50, 50, 3), 100, np.uint8)
    out = render_overlay(image, np.ones((5, 5), np.float32), alpha=0.5, colorbar=False)
    assert np.all(out == (114, 50, 50))  # 0.5 * 100 + 0.5 * (128, 0, 0), rounded


def test_colorbar_is_drawn_beside_the_image_high_at_the_top():
    image = _display_image(300, 200)
    heatmap = np.zeros((10, 10), np.float32)
    out = render_overlay(image, heatmap, colorbar=True)
    strip = out[:, 200:].astype(int)
    assert 10 <= strip.shape[1] <= 0.25 * 200
    coloured = np.flatnonzero(np.any(strip.max(axis=2) - strip.min(axis=2) > 60, axis=0))
    column = int(np.median(coloured))
    rows = np.flatnonzero(strip[:, column].max(axis=1) - strip[:, column].min(axis=1) > 60)
    top, bottom = strip[rows.min() + 2, column], strip[rows.max() - 2, column]
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red (high) above, blue (low) below
    # "high"/"low" labels: dark text on the white strip above and below the bar.
    above, below = strip[: rows.min() - 1], strip[rows.max() + 2 :]
    assert (above.min(axis=2) < 80).any() and (below.min(axis=2) < 80).any()


def test_heatmap_notes_flat_border_and_lungs():
    size = 224
    yy, xx = np.mgrid[0:size, 0:size]
    lungs = np.exp(-(((yy - 112) / 30.0) ** 2 + ((xx - 112) / 40.0) ** 2)).astype(np.float32)
    assert heatmap_notes(lungs) == []
    assert heatmap_notes(np.zeros((7, 7))) == [FLAT_MAP_NOTE]
    wash = np.full((52, 52), 0.9) + 0.01 * np.random.default_rng(0).random((52, 52))
    assert heatmap_notes(wash) == [FLAT_MAP_NOTE]
    # A side marker in the top-left corner and text along the bottom edge.
    border = np.zeros((size, size), np.float32)
    border[5:20, 5:25] = 1.0
    border[-15:, 40:180] = 1.0
    assert border_mass(border) > BORDER_NOTE_MIN
    assert heatmap_notes(border) == [BORDER_MAP_NOTE]
    # Half on the lungs, half on the border band: not "most", so no note.
    mixed = np.clip(lungs + 0.4 * (border_weights((size, size)) > 0.99) * (xx < 60), 0, 1)
    assert border_mass(mixed) < BORDER_NOTE_MIN and heatmap_notes(mixed) == []
    with pytest.raises(ValueError):
        heatmap_notes(np.zeros((4, 4, 3)))


def test_heatmap_notes_say_when_the_map_sits_below_the_lungs_or_outside_the_chest():
    size = 224
    yy, xx = np.mgrid[0:size, 0:size]
    # The abdomen: a blob centred low in the image, inside the side borders.
    abdomen = np.exp(-(((yy - 195) / 14.0) ** 2 + ((xx - 112) / 45.0) ** 2)).astype(np.float32)
    assert border_mass(abdomen) < BORDER_NOTE_MIN
    assert heatmap_notes(abdomen) == [BELOW_LUNGS_NOTE]
    # Both shoulders: high and wide, outside the chest box but above the lungs' bottom.
    shoulders = np.zeros((size, size), np.float32)
    shoulders[30:80, 23:31] = 1.0
    shoulders[30:80, 193:201] = 1.0
    assert border_mass(shoulders) < BORDER_NOTE_MIN
    assert heatmap_notes(shoulders) == [OUTSIDE_CHEST_NOTE]
    # One note at most: a map on the border band is the border's.
    band = np.zeros((size, size), np.float32)
    band[-20:, :] = 1.0
    assert heatmap_notes(band) == [BORDER_MAP_NOTE]


def test_overlay_accepts_grayscale():
    gray = _display_image(80, 90)[..., 0]
    out = render_overlay(gray, np.ones((4, 4), np.float32))
    assert out.shape == (80, 90 + colorbar_width(80, 90), 3) and out.dtype == np.uint8


@pytest.mark.parametrize(
    "image, heatmap, alpha, error",
    [
        (np.zeros((10, 10, 3), np.float32), np.zeros((4, 4)), 0.4, TypeError),  # not uint8
        (np.zeros((10, 10, 3), np.uint8), np.zeros((4, 4)), 1.5, ValueError),  # alpha out of range
        (np.zeros((10, 10, 3), np.uint8), np.zeros((4, 4, 3)), 0.4, ValueError),  # heatmap not 2-D
        (np.zeros((10, 10, 5), np.uint8), np.zeros((4, 4)), 0.4, ValueError),  # 5 channels
    ],
)
def test_overlay_rejects_bad_inputs(image, heatmap, alpha, error):
    with pytest.raises(error):
        render_overlay(image, heatmap, alpha=alpha)


# ---------------------------------------------------------------------------
# CheXNet (DenseNet121 + head), random weights.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_chexnet_smoke():
    keras.utils.set_random_seed(0)
    model = build_chexnet(weights=None)
    explainer = Explainer(model, MODELS["chexnet"].gradcam_layer)
    explainer.warm_up()
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)  # ImageNet-normalised range
    expected = model(x[None], training=False).numpy()[0]
    np.testing.assert_allclose(explainer.predict(x), expected, rtol=0, atol=1e-6)
    for method in METHODS:
        probs, heatmap = explainer.explain(x, method)
        np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
        assert heatmap.shape == (IMAGE_SIZE, IMAGE_SIZE) and heatmap.dtype == np.float32
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    # DenseNet121's last block is 7x7.
    assert explainer.explain(x, "gradcam", upsample=False)[1].shape == (7, 7)
    # SmoothGrad with the app's number of copies for CheXNet (one batch of 8).

    smooth = Explainer(
        model, MODELS["chexnet"].gradcam_layer, smoothgrad_samples=MODELS["chexnet"].smoothgrad_samples
    )
    probs, heatmap = smooth.explain(x, "smoothgrad")
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert heatmap.shape == (IMAGE_SIZE, IMAGE_SIZE) and heatmap.dtype == np.float32
    assert np.all(np.isfinite(heatmap)) and heatmap.min() == 0.0 and heatmap.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(smooth.explain(x, "smoothgrad")[1], heatmap)


def test_feature_layer_comes_from_the_same_forward_pass(davidnet, davidnet_explainer):
    """`analyse` returns probabilities, the heatmap and the feature layer's output from one call;
    the features equal a separate sub-model's, and nothing else changes."""
    fused = Explainer(davidnet, MODELS["davidnet"].gradcam_layer, feature_layer="dense2")
    x = _random_image(INPUT_SHAPE, seed=4)
    probs, heatmap, features = fused.analyse(x, "gradcam")
    reference = keras.Model(davidnet.input, davidnet.get_layer("dense2").output)(x[None]).numpy()[0]
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-6)
    expected_probs, expected_map = davidnet_explainer.explain(x, "gradcam")
    np.testing.assert_allclose(probs, expected_probs, atol=1e-6)
    np.testing.assert_allclose(heatmap, expected_map, atol=1e-5)
    assert fused.analyse(x, None)[1] is None
    assert davidnet_explainer.analyse(x, "gradcam++")[2] is None  # no feature layer, no features
    with pytest.raises(ExplainerError, match="Feature layer 'nope'"):
        Explainer(davidnet, MODELS["davidnet"].gradcam_layer, feature_layer="nope")
