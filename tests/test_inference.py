"""The serving path: `Predictor` loads checkpoints once and predicts + explains one image.

Models have random weights (tests/app_fixtures.py): these tests check shapes, probabilities,
determinism, the pipeline's agreement with evaluation, and the "not installed" messages.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from covid_xray import config
from covid_xray.config import CLASS_NAMES, IMAGE_SIZE
from covid_xray.explain import colorbar_width
from covid_xray.imaging import ImageDecodeError
from covid_xray.inference import (
    DISPLAY_MAX_SIDE,
    METHOD_DISPLAY_NAMES,
    Predictor,
    decode_source,
    detail_markdown,
    display_image,
)
from covid_xray.synthetic import dicom_bytes, xray_like

COVID_IMAGE = "test/Covid/0100.jpeg"


def _assert_probabilities(probabilities: dict[str, float]) -> None:
    assert list(probabilities) == list(CLASS_NAMES)
    values = np.array(list(probabilities.values()))
    assert np.all(values >= 0) and np.all(values <= 1)
    assert values.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_predict_both_models_on_a_real_image(predictor_both, data_dir):
    result = predictor_both.predict(data_dir / COVID_IMAGE, method="gradcam", alpha=0.4)
    # The dataset's images are 640x640: shown at the display cap, square.
    assert result.image.shape == (DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE, 3)
    assert result.image.dtype == np.uint8
    assert set(result.models) == set(config.MODELS)
    for name, prediction in result.models.items():
        assert prediction.available, name
        _assert_probabilities(prediction.probabilities)
        assert prediction.predicted == max(prediction.probabilities, key=prediction.probabilities.get)
        assert prediction.confidence == prediction.probabilities[prediction.predicted]
        assert prediction.heatmap.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert 0.0 <= prediction.heatmap.min() and prediction.heatmap.max() <= 1.0
        # The overlay is drawn on the displayed image, at its exact size, with the colour scale
        # in a strip beside it.
        height, width = result.image.shape[:2]
        assert prediction.overlay.shape == (height, width + colorbar_width(height, width), 3)
        np.testing.assert_array_equal(prediction.overlay[:, :width].shape, result.image.shape)
        assert prediction.overlay.dtype == np.uint8
        label = prediction.label_value()
        assert set(label) == set(config.CLASS_DISPLAY_NAMES.values())


@pytest.mark.slow
def test_api_json_of_both_models(predictor_both, data_dir):
    result = predictor_both.predict(data_dir / COVID_IMAGE, method=None)
    payload = result.to_api_json()
    assert set(payload) == {"davidnet", "chexnet", "input_check"}
    for entry in (payload[name] for name in ("davidnet", "chexnet")):
        assert entry["available"] is True
        assert entry["prediction"] in CLASS_NAMES
        _assert_probabilities(entry["probabilities"])
    # Probabilities only: no heatmap was computed.
    assert all(p.heatmap is None and p.overlay is None for p in result.models.values())


@pytest.mark.slow
def test_models_get_the_preprocessing_recorded_in_their_checkpoint(predictor_both):
    assert predictor_both.loaded["davidnet"].preprocessing == "unit"
    assert predictor_both.loaded["chexnet"].preprocessing == "imagenet"


@pytest.mark.slow
def test_probabilities_match_the_evaluation_pipeline(predictor_both, checkpoint_dir_both, data_dir):
    """The app must feed the models exactly what evaluation fed them: decode, resize, normalise."""
    from covid_xray import data, preprocessing
    from covid_xray.checkpoints import load_checkpoint

    sample = next(s for s in data.list_samples(data_dir, split="test") if s.relpath == COVID_IMAGE)
    images, _ = data.load_arrays([sample])
    result = predictor_both.predict(sample.path, method=None)
    for name in ("davidnet", "chexnet"):
        model, metadata = load_checkpoint(config.MODELS[name].checkpoint_path(checkpoint_dir_both))
        expected = np.asarray(
            model(preprocessing.normalize(images, metadata["preprocessing"]), training=False)
        )[0]
        got = np.array([result.models[name].probabilities[c] for c in CLASS_NAMES])
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "smoothgrad"])
def test_same_input_same_output(predictor_davidnet, method):
    image = np.stack([xray_like(300, 260, seed=3)] * 3, axis=-1)
    first = predictor_davidnet.predict(image, method=method, alpha=0.5)
    predictor_davidnet._cache.clear()  # recompute, do not just return the cached explanation
    second = predictor_davidnet.predict(image.copy(), method=method, alpha=0.5)
    a, b = first.models["davidnet"], second.models["davidnet"]
    assert a.probabilities == b.probabilities
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    np.testing.assert_array_equal(a.overlay, b.overlay)
    assert a.method == method


def test_every_served_method_is_offered_by_name():
    from covid_xray.explain import SERVED_METHODS

    # The app's method Radio is built from METHOD_DISPLAY_NAMES.
    assert list(METHOD_DISPLAY_NAMES) == list(SERVED_METHODS)
    assert METHOD_DISPLAY_NAMES["smoothgrad"] == "SmoothGrad"


def test_smoothgrad_is_served_with_an_overlay(predictor_davidnet):
    image = np.stack([xray_like(260, 300, seed=4)] * 3, axis=-1)
    explainer = predictor_davidnet.loaded["davidnet"].explainer
    assert explainer.smoothgrad_samples == config.MODELS["davidnet"].smoothgrad_samples
    result = predictor_davidnet.predict(image, method="smoothgrad", alpha=0.5)
    davidnet = result.models["davidnet"]
    assert result.method == davidnet.method == "smoothgrad"
    _assert_probabilities(davidnet.probabilities)
    heatmap = davidnet.heatmap
    assert heatmap.shape == (IMAGE_SIZE, IMAGE_SIZE) and heatmap.dtype == np.float32
    assert np.all(np.isfinite(heatmap)) and heatmap.min() == 0.0 and heatmap.max() == pytest.approx(1.0)
    height, width = result.image.shape[:2]
    assert davidnet.overlay.shape == (height, width + colorbar_width(height, width), 3)
    assert not np.array_equal(davidnet.overlay[:, :width], result.image)  # something was drawn
    assert "SmoothGrad: where DavidNet looked for" in davidnet.summary_markdown()
    # Probabilities are the same whichever map is asked for; the map is not Grad-CAM's.
    gradcam = predictor_davidnet.predict(image, method="gradcam").models["davidnet"]
    assert gradcam.probabilities == pytest.approx(davidnet.probabilities, abs=1e-6)
    assert np.abs(gradcam.heatmap - heatmap).mean() > 0.05
    # The API's JSON is the same as for any method (no heatmap in it).
    assert result.to_api_json()["davidnet"]["prediction"] == davidnet.predicted


def test_opacity_change_reuses_the_explanation(predictor_davidnet):
    image = np.stack([xray_like(200, 200, seed=5)] * 3, axis=-1)
    faint = predictor_davidnet.predict(image, method="gradcam", alpha=0.1).models["davidnet"]
    strong = predictor_davidnet.predict(image, method="gradcam", alpha=0.9).models["davidnet"]
    assert faint.heatmap is strong.heatmap  # served from the cache, not recomputed
    assert not np.array_equal(faint.overlay, strong.overlay)
    plain = predictor_davidnet.predict(image, method="gradcam", alpha=0.0).models["davidnet"]
    np.testing.assert_array_equal(plain.overlay, image)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((300, 700), (219, 512)),  # wide: longer side capped at 512, aspect ratio kept
        ((1024, 512), (512, 256)),  # tall
        ((100, 120), (100, 120)),  # small images are never enlarged
    ],
)
def test_overlay_has_the_display_size(predictor_davidnet, shape, expected):
    image = np.stack([xray_like(*shape, seed=1)] * 3, axis=-1)
    result = predictor_davidnet.predict(image, method="gradcam++", alpha=0.4)
    assert result.image.shape == (*expected, 3)
    height, width = expected
    assert result.models["davidnet"].overlay.shape == (height, width + colorbar_width(height, width), 3)


def test_grayscale_array_input(predictor_davidnet):
    result = predictor_davidnet.predict(xray_like(128, 128), method="gradcam")
    assert result.image.shape == (128, 128, 3)
    _assert_probabilities(result.models["davidnet"].probabilities)


def test_dicom_upload_is_decoded_and_shown(predictor_davidnet, tmp_path):
    pixels = xray_like(256, 200, seed=2).astype(np.uint16) * 16  # 12-bit detector values
    path = tmp_path / "chest.dcm"
    path.write_bytes(dicom_bytes(pixels, bits_stored=12))
    result = predictor_davidnet.predict(str(path), method="gradcam")
    assert result.image.shape == (256, 200, 3)
    assert result.image.max() > result.image.min()  # a real picture, not a blank preview
    _assert_probabilities(result.models["davidnet"].probabilities)


def test_chexnet_missing_is_reported_not_raised(predictor_davidnet, missing_weights):
    result = predictor_davidnet.predict(np.stack([xray_like(64, 64)] * 3, axis=-1), method="gradcam")
    chexnet = result.models["chexnet"]
    assert chexnet.available is False
    assert chexnet.overlay is None and chexnet.label_value() is None
    # One line for visitors; the operator's detail has the commands: base weights first, then training.
    assert chexnet.message == "CheXNet is not installed on this server."
    detail = chexnet.detail
    assert detail.index(config.WEIGHTS_COMMAND) < detail.index("python train.py --model chexnet")
    assert not re.search(r"(^|\s)/\w", detail), detail  # no server paths
    assert str(missing_weights.parent) not in detail
    assert result.to_api_json()["chexnet"] == {
        "available": False,
        "message": chexnet.message,
        "detail": detail,
    }
    assert result.models["davidnet"].available
    panel = detail_markdown(detail)
    assert f"```bash\npip install kagglehub\n{config.WEIGHTS_COMMAND} fetch-kaggle\n```" in panel


def test_chexnet_message_when_only_the_training_is_missing(tmp_path):
    weights = tmp_path / "chexnet_base.h5"
    weights.write_bytes(b"present")
    predictor = Predictor.from_checkpoints(tmp_path / "empty", weights, warm_up=False)
    detail = predictor.status_detail("chexnet")
    assert "python train.py --model chexnet" in detail and config.WEIGHTS_COMMAND not in detail
    assert "python train.py --model davidnet" in predictor.status_detail("davidnet")


def test_no_model_installed_still_decodes_and_answers(tmp_path):
    predictor = Predictor.from_checkpoints(tmp_path / "none", tmp_path / "none.h5", warm_up=False)
    assert predictor.available_models == []
    result = predictor.predict(np.zeros((64, 80, 3), np.uint8), method="gradcam")
    assert result.image.shape == (64, 80, 3)
    assert {name: result.to_api_json()[name]["available"] for name in ("davidnet", "chexnet")} == {
        "davidnet": False,
        "chexnet": False,
    }


def test_corrupted_checkpoint_is_unavailable_with_the_reason(checkpoint_dir_davidnet, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint_dir_davidnet, broken)
    target = broken / "davidnet.keras"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    predictor = Predictor.from_checkpoints(broken, tmp_path / "none.h5", warm_up=False)
    assert not predictor.is_available("davidnet")
    assert "failed a check" in predictor.status_message("davidnet")
    assert "sha256" in predictor.status_detail("davidnet")


def test_bad_input_raises_the_decoder_error(predictor_davidnet):
    with pytest.raises(ImageDecodeError) as info:
        predictor_davidnet.predict(b"this is not an image", method="gradcam")
    assert "image" in str(info.value).lower()
    with pytest.raises(ImageDecodeError):
        decode_source(np.zeros((10, 10, 3), np.float32))


@pytest.mark.parametrize(
    "method, alpha",
    [("lime", 0.4), ("SmoothGrad", 0.4), ("gradcam", 1.5), ("gradcam", -0.1), ("smoothgrad", 1.5)],
)
def test_invalid_settings_are_refused(predictor_davidnet, method, alpha):
    with pytest.raises(ValueError):
        predictor_davidnet.predict(np.zeros((64, 64, 3), np.uint8), method=method, alpha=alpha)


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "gradcam"])
def test_predict_many_gives_the_results_of_predict_in_order(predictor_both, data_dir, tmp_path, method):
    """Images in flight side by side get exactly `predict`'s answers (probabilities, heatmaps,
    overlays, input check); unusable inputs come back as their errors, in place."""
    images = sorted((data_dir / "test" / "Normal").iterdir())[:5]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    sources = [images[0], bad, *images[1:3], missing, *images[3:]]
    predictor_both._cache.clear()  # every answer computed, not taken from the cache
    expected = {source: predictor_both.predict(source, method=method) for source in images}
    predictor_both._cache.clear()
    answers = list(predictor_both.predict_many(sources, method=method))
    assert [source for source, _, _ in answers] == sources
    for source, result, error in answers:
        if source in (bad, missing):
            assert result is None
            assert isinstance(error, ImageDecodeError if source == bad else FileNotFoundError)
            continue
        assert error is None
        want = expected[source]
        assert result.to_api_json() == want.to_api_json()
        np.testing.assert_array_equal(result.image, want.image)
        for name, prediction in want.models.items():
            assert result.models[name].raw_probabilities == prediction.raw_probabilities
            if method is None:
                assert result.models[name].heatmap is None and prediction.heatmap is None
            else:
                np.testing.assert_array_equal(result.models[name].heatmap, prediction.heatmap)
                np.testing.assert_array_equal(result.models[name].overlay, prediction.overlay)


def test_predict_many_runs_images_side_by_side_and_holds_the_models_lock(predictor_davidnet, monkeypatch):
    import threading

    explainer = predictor_davidnet.loaded["davidnet"].explainer
    analyse = explainer.analyse
    # The first two model runs wait for each other: with one image at a time the first would wait
    # alone until the timeout, and the barrier would break.
    both_in = threading.Barrier(2, timeout=30)
    calls = []

    def spy(x, method):
        calls.append(threading.get_ident())
        if len(calls) <= 2:
            both_in.wait()
        return analyse(x, method)

    monkeypatch.setattr(explainer, "analyse", spy)
    predictor_davidnet._cache.clear()
    images = [np.stack([xray_like(96, 96, seed=i)] * 3, axis=-1) for i in range(6)]
    answers = predictor_davidnet.predict_many(images, workers=2)
    first = next(answers)
    assert first[1] is not None and first[2] is None
    assert predictor_davidnet.lock.locked()  # other callers wait, as for one long request
    assert len(list(answers)) == len(images) - 1
    assert not both_in.broken and len(set(calls[:2])) == 2  # two threads, at the same time
    assert not predictor_davidnet.lock.locked()
    with pytest.raises(ValueError):
        next(predictor_davidnet.predict_many(images, workers=0))
    with pytest.raises(ValueError):
        next(predictor_davidnet.predict_many(images, method="lime"))


def test_a_model_serves_after_its_forward_pass_then_traces_grad_cam(checkpoint_dir_davidnet, monkeypatch):
    """The API's probabilities need only the forward pass: the model joins the predictor once it is
    traced, and Grad-CAM's function is traced after that (CheXNet answers ~2.5 s sooner)."""
    from covid_xray import explain
    from covid_xray.inference import WARM_UP_METHODS

    predictor = Predictor({})
    calls = []
    warm_up = explain.Explainer.warm_up

    def spy(self, methods=explain.METHODS):
        calls.append((tuple(methods), predictor.is_available("davidnet")))
        return warm_up(self, methods)

    monkeypatch.setattr(explain.Explainer, "warm_up", spy)
    assert predictor.load("davidnet", checkpoint_dir_davidnet)
    assert calls == [((), False), (tuple(WARM_UP_METHODS), True)]


def test_display_image_keeps_small_images():
    image = np.zeros((40, 30, 3), np.uint8)
    assert display_image(image) is image


def test_calibrated_checkpoint_serves_calibrated_probabilities(
    predictor_davidnet, checkpoint_dir_davidnet, missing_weights, tmp_path
):
    """A temperature in the sidecar: calibrated probabilities shown, raw ones in the JSON, same class."""
    from covid_xray.calibration import apply_temperature
    from covid_xray.checkpoints import read_metadata, sidecar_path, write_json

    calibrated_dir = tmp_path / "calibrated"
    shutil.copytree(checkpoint_dir_davidnet, calibrated_dir)
    checkpoint = config.MODELS["davidnet"].checkpoint_path(calibrated_dir)
    metadata = read_metadata(checkpoint)
    metadata["calibration"] = {"temperature": 0.25, "fitted_on": "validation", "n_val": 50}
    write_json(sidecar_path(checkpoint), metadata)  # the recorded sha256 is the .keras file's: still valid
    predictor = Predictor.from_checkpoints(calibrated_dir, missing_weights, warm_up=False)
    assert predictor.loaded["davidnet"].temperature == 0.25

    image = np.stack([xray_like(220, 220, seed=9)] * 3, axis=-1)
    raw = predictor_davidnet.predict(image, method=None).models["davidnet"]
    calibrated = predictor.predict(image, method="gradcam").models["davidnet"]
    raw_values = np.array([raw.probabilities[c] for c in CLASS_NAMES])
    values = np.array([calibrated.probabilities[c] for c in CLASS_NAMES])
    _assert_probabilities(calibrated.probabilities)
    np.testing.assert_allclose(values, apply_temperature(raw_values, 0.25), atol=1e-9)
    assert calibrated.raw_probabilities == pytest.approx(raw.probabilities, abs=1e-7)
    assert calibrated.predicted == raw.predicted
    assert calibrated.confidence == calibrated.probabilities[calibrated.predicted]
    assert calibrated.confidence > raw.confidence  # T < 1 sharpens
    assert calibrated.heatmap is not None  # explanations unchanged by calibration

    payload = calibrated.to_json()
    assert payload["calibrated"] is True and payload["temperature"] == 0.25
    assert payload["raw_probabilities"] == calibrated.raw_probabilities
    assert payload["probabilities"] == calibrated.probabilities
    assert "calibrated)" in calibrated.summary_markdown()

    plain = raw.to_json()
    assert plain["calibrated"] is False and plain["temperature"] is None
    assert plain["raw_probabilities"] == plain["probabilities"]
    assert "calibrated" not in raw.summary_markdown()
