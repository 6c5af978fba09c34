"""The fast paths of the speed issue give the same numbers as the paths they replace.

- `Explainer.analyse(x, None)` / `Explainer.predict` (forward-only compiled function) against the
  gradient path that served them before (`explain(x, "gradcam")`, `analyse(x, "gradcam")`), and
  against the Keras model itself: same probabilities and OOD-guard features.
- Grad-CAM maps of the committed DavidNet checkpoint on real test images against tf-keras-vis.
- `Predictor.predict(method=None)` (the API) against `method="gradcam"` on real test images.
- `training.extract_features` (one trace per model, free batch size) against a plain per-batch
  call of the base model, at several batch sizes.
- The page's heatmap overlays and decoded preview are sent as JPEG (cheaper to encode than
  Gradio's default WebP): the files Gradio serves are JPEGs of the arrays' size and pixels (JPEG
  round-off only); the arrays themselves are computed as before.

No timings are asserted here: `benchmarks/bench.py` measures them.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covid_xray import config, data, preprocessing, training
from covid_xray.config import INPUT_SHAPE, MODELS
from covid_xray.explain import Explainer
from covid_xray.inference import decode_source

# Real test images used below (one per class; file order of the test split).
IMAGES_PER_CLASS = 1


def _committed_davidnet():
    from covid_xray.checkpoints import load_checkpoint

    path = MODELS["davidnet"].checkpoint_path(config.CHECKPOINT_DIR)
    if not path.exists():
        pytest.skip(f"no committed DavidNet checkpoint at {path}")
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def test_inputs(data_dir):
    """A few real test images: (path, uint8 model input) per class."""
    picked, seen = [], {}
    for sample in data.list_samples(data_dir, split="test"):
        if seen.get(sample.label, 0) < IMAGES_PER_CLASS:
            seen[sample.label] = seen.get(sample.label, 0) + 1
            picked.append((sample.path, preprocessing.resize_for_model(decode_source(sample.path))))
    return picked


@pytest.fixture(scope="module")
def committed():
    model, metadata = _committed_davidnet()
    explainer = Explainer(model, MODELS["davidnet"].gradcam_layer, feature_layer="dense2")
    return model, metadata["preprocessing"], explainer


def test_forward_path_equals_the_gradient_path_on_real_images(committed, test_inputs):
    model, mode, explainer = committed
    features_model = keras.Model(model.input, model.get_layer("dense2").output)
    for _, model_input in test_inputs:
        x = preprocessing.normalize(model_input, mode)
        probs, heatmap, features = explainer.analyse(x, None)
        assert heatmap is None
        old_probs, _, old_features = explainer.analyse(x, "gradcam")  # the path None used to take
        np.testing.assert_allclose(probs, old_probs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(features, old_features, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(explainer.predict(x), old_probs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs, model(x[None], training=False).numpy()[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(features, features_model(x[None]).numpy()[0], rtol=1e-5, atol=1e-5)
        assert int(np.argmax(probs)) == int(np.argmax(old_probs))


def test_committed_gradcam_matches_tf_keras_vis_on_real_images(committed, test_inputs):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    _, mode, explainer = committed
    reference = Gradcam(explainer.logits_model, clone=False)
    for _, model_input in test_inputs:
        x = preprocessing.normalize(model_input, mode)
        probs, cam = explainer.explain(x, "gradcam", upsample=False)
        expected = reference(
            CategoricalScore(int(np.argmax(probs))),
            x[None],
            penultimate_layer=MODELS["davidnet"].gradcam_layer,
            seek_penultimate_conv_layer=False,
            expand_cam=False,
            normalize_cam=False,
        )[0]
        expected = np.asarray(expected, np.float64)
        low, high = expected.min(), expected.max()
        expected = (expected - low) / (high - low) if high > low else np.zeros_like(expected)
        np.testing.assert_allclose(cam, expected, rtol=0, atol=1e-5)
        assert float(cam.max()) == pytest.approx(1.0)  # a real map, not an empty one


@pytest.mark.slow  # builds CheXNet (DenseNet121)
def test_api_path_equals_the_upload_path(checkpoint_dir_both, missing_weights, test_inputs):
    """The API (method None) and the upload (Grad-CAM) give the same probabilities and input check."""
    from covid_xray.inference import Predictor

    fast = Predictor.from_checkpoints(checkpoint_dir_both, missing_weights, warm_up=False)
    slow = Predictor.from_checkpoints(checkpoint_dir_both, missing_weights, warm_up=False)
    for path, _ in test_inputs:
        api = fast.predict(path, method=None)
        upload = slow.predict(path, method="gradcam")
        assert set(api.models) == set(upload.models) == set(MODELS)
        for name, prediction in api.models.items():
            assert prediction.available and prediction.heatmap is None and prediction.overlay is None
            other = upload.models[name]
            assert prediction.predicted == other.predicted
            for c in config.CLASS_NAMES:
                assert prediction.probabilities[c] == pytest.approx(other.probabilities[c], abs=1e-6)
        assert api.input_check.is_xray_likely == upload.input_check.is_xray_likely
        assert api.input_check.warnings == upload.input_check.warnings


def test_extract_features_traces_once_and_matches_the_base_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input(INPUT_SHAPE)
    hidden = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(inputs)
    base = keras.Model(inputs, keras.layers.Conv2D(16, 3, strides=2)(hidden))
    images = np.random.default_rng(0).integers(0, 256, (21, *INPUT_SHAPE), dtype=np.uint8)
    expected = base(preprocessing.normalize(images, "imagenet")).numpy().mean(axis=(1, 2))
    seen = []
    for batch_size in (4, 8, 32):
        features = training.extract_features(
            base, images, "imagenet", batch_size=batch_size, on_batch=seen.append
        )
        assert features.shape == (21, 16) and features.dtype == np.float32
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    assert seen[:6] == [4, 4, 4, 4, 4, 1] and sum(seen) == 3 * 21
    # One trace for every batch size and call (the old code traced twice per call).
    assert training._pooled_function(base).experimental_get_tracing_count() == 1


# Mean absolute difference (0-255 levels) between an array and the JPEG Gradio serves for it: JPEG's
# round-off at its default quality stays well below this; another image is tens of levels away.
MAX_JPEG_MEAN_ERROR = 4.0


def test_overlays_and_preview_are_served_as_jpegs_of_the_same_pixels(
    runtime_davidnet, predictor_davidnet, reports_dir, data_dir
):
    from PIL import Image

    import app

    demo = app.build_demo(runtime_davidnet, reports_dir=reports_dir, data_dir=data_dir)
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    image = data_dir / "test" / "Covid" / "0100.jpeg"
    result = predictor_davidnet.predict(str(image), method="gradcam")
    overlay = result.models["davidnet"].overlay
    served = {"preview": result.image}
    for prefix in ("diagnose", "gallery", "quiz"):
        for name in MODELS:
            served[f"{prefix}-{name}-overlay"] = overlay
    for elem_id, array in served.items():
        payload = blocks[elem_id].postprocess(array)  # what Gradio writes to its cache and serves
        with Image.open(payload.path) as sent:
            assert sent.format == "JPEG", elem_id
            assert sent.size == (array.shape[1], array.shape[0]), elem_id
            decoded = np.asarray(sent.convert("RGB"), np.float64)
        error = np.abs(decoded - array).mean()
        assert error < MAX_JPEG_MEAN_ERROR, (elem_id, error)
    # The check tells images apart: the preview's JPEG is far from the overlay.
    with Image.open(blocks["preview"].postprocess(result.image).path) as sent:
        preview_jpeg = np.asarray(sent.convert("RGB"), np.float64)
    assert np.abs(preview_jpeg - overlay[:, : preview_jpeg.shape[1]]).mean() > 5 * MAX_JPEG_MEAN_ERROR
