"""OOD guard: cheap image checks, the Mahalanobis feature guard, its JSON file, load_guard's
fallbacks, the synthesised non-X-ray set and (slow) fit/check/measure on the real dataset."""

from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pytest

from covid_xray import config, imaging, ood, synthetic
from covid_xray.config import INPUT_SHAPE
from covid_xray.synthetic import colour_photo, xray_like


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, np.uint8)[..., None], 3, axis=2)


def _white_page_with_text() -> np.ndarray:
    import cv2

    page = np.full((600, 480, 3), 255, np.uint8)
    for row in range(60, 560, 40):
        cv2.putText(page, "follow-up in two weeks", (20, row), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1)
    return page


def _mostly_black() -> np.ndarray:
    grey = np.zeros((400, 400), np.uint8)
    grey[150:250, 150:250] = xray_like(100, 100)
    return _rgb(grey)


# ---------------------------------------------------------------------------
# Cheap checks.
# ---------------------------------------------------------------------------
def test_saturated_colour_image_gets_the_colour_warning():
    result = ood.check_image(colour_photo(300, 400))
    assert not result.is_xray_likely
    assert "colour" in result.flags
    assert any("colour" in w and "greyscale" in w for w in result.warnings)
    assert result.scores["colourful_fraction"] > ood.COLOURFUL_FRACTION_MAX


def test_synthetic_chest_like_image_passes_cheap_checks():
    result = ood.check_image(_rgb(xray_like(480, 400)))
    assert result.is_xray_likely, result.warnings
    assert result.flags == [] and result.warnings == []
    assert not result.learned_check


def test_real_dataset_xrays_pass_cheap_checks(data_dir):
    from covid_xray import data

    flagged = {}
    for sample in data.list_samples(data_dir, "test"):
        result = ood.check_image(imaging.load_image(sample.path, draft_size=448))
        if result.flags:
            flagged[sample.relpath] = result.flags
    assert flagged == {}


@pytest.mark.parametrize(
    ("height", "width", "text"),
    [
        (100, 500, "5.0 times wider than tall"),  # 5:1 panorama
        (500, 100, "5.0 times taller than wide"),  # 1:5 phone-screenshot shape
    ],
)
def test_elongated_image_gets_the_aspect_warning(height, width, text):
    result = ood.check_image(_rgb(xray_like(height, width)))
    assert "aspect" in result.flags
    assert any(text in w for w in result.warnings)
    assert result.scores["aspect_ratio"] == pytest.approx(width / height)


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: np.full((300, 300, 3), 128, np.uint8), "uniform"),  # flat mid-grey
        (_mostly_black, "dark"),  # a small picture on a black canvas
        (_white_page_with_text, "bright"),  # a document
        (  # checkerboard: two grey levels only
            lambda: _rgb(np.where((np.indices((256, 256)).sum(0) // 32) % 2 == 0, 220, 30)),
            "few_levels",
        ),
        (lambda: _rgb(np.random.default_rng(0).integers(0, 256, (300, 300))), "noise"),  # static
        (lambda: _rgb(np.broadcast_to(np.linspace(0, 255, 400), (300, 400))), "gradient"),  # a ramp
    ],
    ids=["uniform", "dark", "bright", "few_levels", "noise", "gradient"],
)
def test_intensity_checks(make, flag):
    result = ood.check_image(make())
    assert flag in result.flags, (result.flags, result.scores)
    assert len(result.warnings) == len(result.flags)
    assert all(isinstance(w, str) and w.endswith(".") for w in result.warnings)


def test_uniform_image_is_not_also_called_few_levels():
    assert ood.check_image(np.full((200, 200, 3), 40, np.uint8)).flags == ["uniform"]


def test_large_image_is_subsampled_but_keeps_its_true_aspect_ratio():
    big = np.tile(_rgb(xray_like(300, 400)), (10, 10, 1))  # 3000 x 4000
    stats = ood.image_statistics(big)
    assert stats["aspect_ratio"] == pytest.approx(4000 / 3000)
    assert stats["grey_levels"] >= ood.GREY_LEVELS_MIN


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8)],
    ids=["2d", "float", "rgba"],
)
def test_cheap_checks_reject_non_rgb_arrays(bad):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        ood.check_image(bad)


def test_result_to_json_is_serialisable_and_drops_non_finite_scores():
    result = ood.OODResult(False, ["A warning."], {"a": 1.23456789, "b": float("nan")}, ["colour"], True)
    data = json.loads(json.dumps(result.to_json()))
    assert data == {
        "is_xray_likely": False,
        "warnings": ["A warning."],
        "flags": ["colour"],
        "learned_check": True,
        "scores": {"a": 1.23457},
    }
    assert "may not be a frontal chest X-ray" in result.summary_markdown()
    assert ood.OODResult(True, [], {}).summary_markdown() == ""


# ---------------------------------------------------------------------------
# FeatureGuard maths on toy Gaussians.
# ---------------------------------------------------------------------------
DIM = 5
TOY_MEANS = np.array([[0.0] * DIM, [10.0] + [0.0] * (DIM - 1), [0.0, 10.0] + [0.0] * (DIM - 2)])
# Shared covariance: variance 4 along the first axis, 1 elsewhere.
TOY_STD = np.array([2.0] + [1.0] * (DIM - 1))


def _toy(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.concatenate([m + rng.normal(size=(n_per_class, DIM)) * TOY_STD for m in TOY_MEANS])
    y = np.repeat(np.arange(len(TOY_MEANS)), n_per_class)
    return x, y


@pytest.fixture(scope="module")
def toy_guard():
    x, y = _toy(3000, seed=0)
    val, _ = _toy(1000, seed=1)
    return ood.FeatureGuard.fit(x, y, val, quantile=0.99, model_name="davidnet", model_sha256="abc")


def test_class_means_and_precision_are_recovered(toy_guard):
    np.testing.assert_allclose(toy_guard.means, TOY_MEANS, atol=0.1)
    np.testing.assert_allclose(toy_guard.precision, np.diag(1 / TOY_STD**2), atol=0.05)


def test_class_mean_scores_zero_and_distance_follows_the_covariance(toy_guard):
    np.testing.assert_allclose(toy_guard.score(TOY_MEANS), 0.0, atol=0.1)
    # Two units along the wide axis (std 2) is one standard deviation; along a narrow axis, two.
    probes = TOY_MEANS[0] + np.array([[2.0, 0, 0, 0, 0], [0, 0, 2.0, 0, 0]])
    np.testing.assert_allclose(toy_guard.score(probes), [1.0, 2.0], rtol=0.05)


def test_threshold_is_the_validation_quantile(toy_guard):
    # The distance of a 5-d standard Gaussian is chi-distributed: its 99th percentile is 3.88.
    assert toy_guard.threshold == pytest.approx(math.sqrt(15.086), rel=0.08)
    assert toy_guard.info["threshold_quantile"] == 0.99
    assert toy_guard.info["n_val"] == 3000 and toy_guard.info["n_train"] == 9000


def test_far_point_is_an_outlier_and_class_means_are_not(toy_guard):
    far = TOY_MEANS[0] + np.array([0, 0, 0, 50.0, 0])
    assert toy_guard.score(far)[0] > 10 * toy_guard.threshold
    assert toy_guard.is_outlier(np.vstack([far, TOY_MEANS])).tolist() == [True, False, False, False]


def test_constant_features_do_not_break_the_fit():
    # Dead ReLU units give constant features: the covariance is singular without regularisation.
    x, y = _toy(50, seed=2)
    x[:, -1] = 0.0
    guard = ood.FeatureGuard.fit(x, y, x[:10], quantile=1.0)
    assert np.isfinite(guard.precision).all() and math.isfinite(guard.threshold)
    assert guard.threshold == pytest.approx(guard.score(x[:10]).max())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_labels": np.zeros(3)}, "training labels"),
        ({"val_features": np.zeros((4, DIM + 1))}, "validation features"),
        ({"val_features": np.zeros((0, DIM))}, "validation features"),
        ({"quantile": 0.0}, "quantile"),
        ({"quantile": 1.5}, "quantile"),
    ],
)
def test_fit_validates_its_inputs(kwargs, message):
    x, y = _toy(10, seed=3)
    args = {"train_features": x, "train_labels": y, "val_features": x[:5], **kwargs}
    with pytest.raises(ValueError, match=message):
        ood.FeatureGuard.fit(**args)


def test_out_of_fold_threshold_is_the_quantile_of_held_out_distances():
    x, y = _toy(1500, seed=4)
    folds = np.array_split(np.random.default_rng(0).permutation(len(y)), 5)
    guard = ood.FeatureGuard.fit_out_of_fold(x, y, folds, quantile=0.99, model_name="davidnet")
    oof = ood.out_of_fold_scores(x, y, folds)
    assert guard.threshold == pytest.approx(np.quantile(oof, 0.99))
    # Held-out rows lie further out than the rows a fit has seen, never nearer on average.
    assert np.mean(oof) >= np.mean(guard.score(x))
    # A 5-d Gaussian: the 99th percentile of its distance is 3.88, whichever rows are held out.
    assert guard.threshold == pytest.approx(math.sqrt(15.086), rel=0.08)
    info = guard.info
    assert info["threshold_source"] == "out-of-fold" and info["folds"] == 5 and info["n_train"] == len(y)
    assert info["out_of_fold_flagged"] == int(np.sum(oof > guard.threshold))
    # Means and covariance come from every row.
    np.testing.assert_allclose(guard.means, [x[y == c].mean(axis=0) for c in range(3)])


@pytest.mark.parametrize(
    "folds",
    [[np.arange(10)], [np.arange(5), np.arange(4)], [np.arange(6), np.arange(4, 10)]],
    ids=["one fold", "a row missing", "a row twice"],
)
def test_out_of_fold_needs_a_partition(folds):
    x, y = _toy(10, seed=5)
    with pytest.raises(ValueError, match="exactly once"):
        ood.out_of_fold_scores(x[:10], y[:10], folds)


def test_score_rejects_the_wrong_feature_dimension(toy_guard):
    with pytest.raises(ValueError, match="dimension 5"):
        toy_guard.score(np.zeros((2, 4)))


# ---------------------------------------------------------------------------
# JSON file.
# ---------------------------------------------------------------------------
def test_json_round_trip_keeps_scores_and_metadata(toy_guard, tmp_path):
    path = toy_guard.save(tmp_path / "ood_davidnet.json")
    loaded = ood.FeatureGuard.load(path)
    probes, _ = _toy(20, seed=4)
    np.testing.assert_allclose(loaded.score(probes), toy_guard.score(probes), rtol=1e-6)
    assert loaded.threshold == toy_guard.threshold
    assert (loaded.model_name, loaded.model_sha256) == ("davidnet", "abc")
    assert loaded.info["n_train"] == 9000
    raw = json.loads(path.read_text())
    assert raw["format"] == ood.GUARD_FORMAT and len(raw["precision"]) == DIM


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "Could not read"),
        ('{"format": "something-else"}', "Not an OOD guard"),
        (json.dumps({"format": ood.GUARD_FORMAT, "version": 1, "means": [[0, 0]]}), "incomplete"),
        (
            json.dumps({"format": ood.GUARD_FORMAT, "means": [[0, 0]], "precision": [[1]], "threshold": 1}),
            "precision matrix",
        ),
        (json.dumps({"format": ood.GUARD_FORMAT, "version": 99}), "newer"),
    ],
    ids=["not-json", "wrong-format", "missing-fields", "shape-mismatch", "newer-version"],
)
def test_malformed_guard_files_raise_guard_error(tmp_path, content, message):
    path = tmp_path / "ood.json"
    path.write_text(content)
    with pytest.raises(ood.GuardError, match=message):
        ood.FeatureGuard.load(path)


def test_missing_guard_file_says_how_to_fit(tmp_path):
    with pytest.raises(ood.GuardError, match=re.escape(f"{config.OOD_COMMAND} fit")):
        ood.FeatureGuard.load(tmp_path / "ood_davidnet.json")


# ---------------------------------------------------------------------------
# load_guard and Guard.check with a tiny model (no dataset, no training).
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(4, 3, strides=8, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(6, activation="tanh", name="dense2")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_classifier")


@pytest.fixture(scope="module")
def tiny_guard_dir(tiny_model, tmp_path_factory):
    """A guard fitted on the tiny model's features of synthetic chest-like images."""
    from covid_xray.preprocessing import normalize, resize_for_model

    directory = tmp_path_factory.mktemp("guard")
    images = np.stack([resize_for_model(_rgb(xray_like(256, 256, seed=s))) for s in range(24)])
    extractor = ood.FeatureExtractor(tiny_model, "dense2")
    feats = extractor(normalize(images, "unit"))
    guard = ood.FeatureGuard.fit(
        feats[:18],
        np.arange(18) % 3,
        feats[18:],
        quantile=1.0,
        model_name="davidnet",
        model_sha256="a" * 64,
        feature_layer="dense2",
        preprocessing="unit",
    )
    guard.save(ood.guard_path("davidnet", directory))
    return directory


def test_feature_layer_names(tiny_model):
    from covid_xray.models import build_davidnet

    assert ood.feature_layer_name(build_davidnet(), "davidnet") == "conv3"
    assert ood.feature_layer_name(tiny_model, "unregistered") == "dense2"  # input of `predictions`


def test_convolutional_feature_maps_are_pooled(tiny_model):
    extractor = ood.FeatureExtractor(tiny_model, "conv")
    x = np.random.default_rng(0).random((3, *INPUT_SHAPE), dtype=np.float32)
    features = extractor(x)
    assert features.shape == (3, 4) and extractor.dim == 4
    import keras

    maps = keras.Model(tiny_model.input, tiny_model.get_layer("conv").output)(x).numpy()
    np.testing.assert_allclose(features, maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_uint8_inputs_are_normalised_batch_by_batch_to_the_same_features(tiny_model):
    """The extractor normalises uint8 model inputs one batch at a time (memory), giving exactly
    the features of the whole set normalised at once."""
    from covid_xray.preprocessing import normalize

    extractor = ood.FeatureExtractor(tiny_model, "dense2")
    images = np.random.default_rng(1).integers(0, 256, (7, *INPUT_SHAPE), dtype=np.uint8)
    for mode in ("unit", "imagenet"):
        np.testing.assert_array_equal(
            extractor(images, batch_size=3, mode=mode), extractor(normalize(images, mode), batch_size=3)
        )
    with pytest.raises(ood.GuardError, match="preprocessing mode"):
        extractor(images)


def test_load_guard_with_matching_sha_runs_the_learned_check(tiny_model, tiny_guard_dir):
    guard = ood.load_guard(
        "davidnet", tiny_guard_dir, model=tiny_model, metadata={"sha256": "a" * 64, "preprocessing": "unit"}
    )
    assert guard is not None and guard.learned_enabled and guard.disabled_reason is None
    rgb = _rgb(xray_like(400, 360, seed=3))
    result = guard.check(rgb)
    assert result.learned_check
    assert math.isfinite(result.scores["mahalanobis"])
    assert result.scores["mahalanobis_threshold"] == pytest.approx(guard.feature_guard.threshold)
    # The uint8 224x224 input and its normalised float version give the same distance.
    from covid_xray.preprocessing import normalize, resize_for_model

    resized = resize_for_model(rgb)
    a = guard.check(rgb, resized).scores["mahalanobis"]
    b = guard.check(rgb, normalize(resized, "unit")).scores["mahalanobis"]
    assert a == pytest.approx(b, rel=1e-5)
    assert json.dumps(result.to_json())


def test_sha_mismatch_disables_the_learned_check_without_crashing(tiny_model, tiny_guard_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="covid_xray.ood"):
        guard = ood.load_guard(
            "davidnet",
            tiny_guard_dir,
            model=tiny_model,
            metadata={"sha256": "b" * 64, "preprocessing": "unit"},
        )
    assert guard is not None and not guard.learned_enabled
    assert "sha256" in guard.disabled_reason and "ood fit --model davidnet" in guard.disabled_reason
    assert any("disabled" in r.getMessage() for r in caplog.records)
    result = guard.check(colour_photo(300, 400))
    assert not result.learned_check and "mahalanobis" not in result.scores
    assert "colour" in result.flags  # the cheap checks still run


def test_missing_or_corrupt_guard_file_disables_the_learned_check(tiny_model, tmp_path):
    metadata = {"sha256": "a" * 64, "preprocessing": "unit"}
    guard = ood.load_guard("davidnet", tmp_path, model=tiny_model, metadata=metadata)
    assert guard is not None and not guard.learned_enabled and "No OOD guard" in guard.disabled_reason
    ood.guard_path("davidnet", tmp_path).write_text("{broken")
    guard = ood.load_guard("davidnet", tmp_path, model=tiny_model, metadata=metadata)
    assert guard is not None and not guard.learned_enabled
    assert guard.check(_rgb(xray_like(300, 300))).is_xray_likely


def test_preprocessing_mismatch_disables_the_learned_check(tiny_model, tiny_guard_dir):
    metadata = {"sha256": "a" * 64, "preprocessing": "imagenet"}
    guard = ood.load_guard("davidnet", tiny_guard_dir, model=tiny_model, metadata=metadata)
    assert guard is not None and not guard.learned_enabled and "'unit'" in guard.disabled_reason


def test_load_guard_without_a_checkpoint_returns_none(tmp_path):
    assert ood.load_guard("davidnet", tmp_path) is None


# ---------------------------------------------------------------------------
# The synthesised non-X-ray set.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Integration: a randomly initialised DavidNet, the real dataset (no training).
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# The shipped guard (checkpoints/ood_davidnet.json) on real chest X-rays.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped_predictor():
    from covid_xray.config import CHECKPOINT_DIR
    from covid_xray.inference import Predictor

    predictor = Predictor.from_checkpoints(CHECKPOINT_DIR, warm_up=False)
    if predictor.input_guard is None or not predictor.input_guard.learned_enabled:
        pytest.fail("The shipped DavidNet checkpoint and checkpoints/ood_davidnet.json do not fit together.")
    return predictor


def test_every_curated_example_passes_the_shipped_guard(shipped_predictor, data_dir):
    """The app's own examples must never be called "may not be a frontal chest X-ray"."""
    import csv

    from covid_xray.config import EXAMPLES_FILE
    from covid_xray.preprocessing import resize_for_model

    with EXAMPLES_FILE.open(newline="", encoding="utf-8") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    assert len(files) == 9
    guard = shipped_predictor.input_guard
    for relpath in files:
        rgb = imaging.load_image(data_dir / relpath)
        # The app's path (explainer features) and the guard's own feature function agree.
        result = shipped_predictor.predict(rgb, method="gradcam").input_check
        direct = guard.check(rgb, resize_for_model(rgb))
        assert result.learned_check and direct.learned_check, relpath
        assert result.is_xray_likely and direct.is_xray_likely, f"{relpath}: {direct.warnings}"
        assert result.scores["mahalanobis"] == pytest.approx(direct.scores["mahalanobis"], rel=1e-3)
        assert result.scores["mahalanobis"] < guard.feature_guard.threshold


def test_shipped_guard_flags_greyscale_non_chest_radiographs(shipped_predictor):
    """The cheap checks pass limb and skull images; the learned check is what catches them."""
    cases = [c for c in synthetic.synthetic_non_xrays(0) if c.category in ("limb", "skull")]
    assert cases
    for case in cases:
        rgb = imaging.load_image(case.content)
        result = shipped_predictor.input_guard.check(rgb)
        assert result.flags == [ood.LEARNED_FLAG], case.name
