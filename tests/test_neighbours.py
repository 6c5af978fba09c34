"""Similar training films: self at distance 0, the on-disk cache (reused, invalidated), provenance,
leaked twins, and the lookup budget."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from covid_xray import data, neighbours
from covid_xray.config import CLASS_NAMES, INPUT_SHAPE

LEAKED_TEST = "test/Covid/radiopaedia-2019-novel-coronavirus-infected-pneumonia.jpg"
ITS_TWIN = "train/Covid/069.jpg"


def _tiny_model(seed: int = 0, name: str = "tiny") -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(16, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture(scope="module")
def train_few(data_dir):
    """Three training films per class, plus the train twin of a leaked test image and the
    pediatric film filed under Covid."""
    train = data.list_samples(data_dir, "train")
    picked = [s for c in CLASS_NAMES for s in [t for t in train if t.label == c][:3]]
    extra = {ITS_TWIN, "train/Covid/COVID-00020.jpg"}
    return picked + [s for s in train if s.relpath in extra]


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


def _build(model, samples, cache_dir, sha="a" * 64, **kwargs):
    return neighbours.NeighbourIndex.build(
        model,
        None,
        samples,
        "unit",
        cache_dir,
        sha,
        model_name="tiny",
        twins=kwargs.pop("twins", {}),
        **kwargs,
    )


def test_each_training_film_is_its_own_nearest_neighbour_at_distance_zero(model, train_few, tmp_path):
    index = _build(model, train_few, tmp_path)
    assert index.feature_layer == "features"  # unregistered model: the input of "predictions"
    images, _ = data.load_arrays(train_few)
    features = index.extract(images)
    for sample, f in zip(train_few, features, strict=True):
        found = index.query(f, k=3)
        assert [n.rank for n in found] == [1, 2, 3]
        assert found[0].file == sample.relpath
        assert found[0].distance == pytest.approx(0.0, abs=1e-5)
        assert found[1].distance >= found[0].distance
        assert found[0].path == sample.path


def test_cache_is_reused_then_invalidated_by_a_new_checkpoint_hash(model, train_few, tmp_path, monkeypatch):
    first = _build(model, train_few, tmp_path)
    assert not first.from_cache and first.cache_path.exists()

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached features should have been read, not recomputed")

    monkeypatch.setattr(data, "load_arrays", no_decoding)
    second = _build(model, train_few, tmp_path)
    assert second.from_cache and second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.features, first.features)

    monkeypatch.undo()
    retrained = _build(_tiny_model(seed=1), train_few, tmp_path, sha="b" * 64)
    assert not retrained.from_cache and retrained.cache_path != first.cache_path
    assert not np.allclose(retrained.features, first.features)


def test_a_corrupted_or_mismatched_cache_file_is_recomputed(model, train_few, tmp_path, caplog):
    first = _build(model, train_few, tmp_path)
    first.cache_path.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING, logger="covid_xray.neighbours"):
        again = _build(model, train_few, tmp_path)
    assert not again.from_cache and "unreadable" in caplog.text
    np.testing.assert_allclose(again.features, first.features, atol=1e-6)
    assert _build(model, train_few, tmp_path).from_cache  # rewritten


def test_neighbours_carry_label_source_and_age(model, train_few, tmp_path):
    index = _build(model, train_few, tmp_path)
    by_file = {n.file: n for n in index.query(index.features[0], k=len(index))}
    normal = next(n for f, n in by_file.items() if "/Normal/" in f)
    assert (normal.label, normal.age) == ("Normal", "child") and "Kermany" in normal.source
    covid = by_file[ITS_TWIN]
    assert covid.age == "adult (most)" and "covid-chestxray-dataset" in covid.source
    pediatric = by_file["train/Covid/COVID-00020.jpg"]
    assert pediatric.label == "Covid" and pediatric.age == "child" and "Kermany" in pediatric.source
    assert set(covid.to_json()) == {"rank", "file", "label", "source", "age", "distance", "twin"}


def test_a_leaked_test_image_finds_its_twin_first(model, train_few, tmp_path, data_dir):
    twins = neighbours.audit_twins()  # the committed reports/audit.json
    assert twins[LEAKED_TEST] == frozenset({ITS_TWIN})
    index = _build(model, train_few, tmp_path, twins=twins)
    leaked = next(s for s in data.list_samples(data_dir, "test") if s.relpath == LEAKED_TEST)
    found = index.query_image(data.load_arrays([leaked])[0][0], k=3, query_file=LEAKED_TEST)
    assert found[0].file == ITS_TWIN and found[0].twin and found[0].distance < 1e-5
    assert neighbours.leaked_twin_first(found)
    assert "copy of this image" in found[0].caption()
    # The same film uploaded (no dataset name): same neighbour, but nobody claims a leak.
    anonymous = index.query_image(data.load_arrays([leaked])[0][0], k=3)
    assert anonymous[0].file == ITS_TWIN and not neighbours.leaked_twin_first(anonymous)


def test_registered_name_without_its_layer_falls_back_like_the_guard(train_few, tmp_path):
    # A small stand-in named "chexnet": no head_flatten layer, so the predictions' input is used.
    small = _tiny_model(name="chexnet")
    index = neighbours.NeighbourIndex.build(
        small, None, train_few[:4], "imagenet", tmp_path, None, model_name="chexnet", twins={}
    )
    assert index.feature_layer == "features" and index.preprocessing == "imagenet"
    assert index.cache_path.name.startswith(
        "chexnet-"
    ) and index.checkpoint_sha == neighbours.model_fingerprint(small)


def test_wrong_feature_size_and_bad_k_are_refused(model, train_few, tmp_path):
    index = _build(model, train_few, tmp_path)
    with pytest.raises(neighbours.NeighbourError, match="Expected 16 features"):
        index.query(np.zeros(5))
    with pytest.raises(neighbours.NeighbourError, match="k must be"):
        index.query(index.features[0], k=0)
    with pytest.raises(neighbours.NeighbourError, match="No training images"):
        neighbours.NeighbourIndex.build(model, None, [], "unit", tmp_path)


@pytest.mark.slow  # both real architectures
@pytest.mark.parametrize("name", ["davidnet", "chexnet"])
def test_the_index_batch_size_does_not_change_the_features(predictor_both, data_dir, name):
    """The index is built FEATURE_BATCH_SIZE images at a time to keep the app's memory down: the
    features are those of one large batch (the batch of 32 that built the index before)."""
    from covid_xray import ood

    samples = data.list_samples(data_dir, "train")[::14][:18]
    images, _ = data.load_arrays(samples)
    loaded = predictor_both.loaded[name]
    model = loaded.explainer.model
    extractor = ood.FeatureExtractor(model, ood.feature_layer_name(model, name))
    assert neighbours.FEATURE_BATCH_SIZE < len(samples) < 32
    small = extractor(images, batch_size=neighbours.FEATURE_BATCH_SIZE, mode=loaded.preprocessing)
    whole = extractor(images, batch_size=32, mode=loaded.preprocessing)
    np.testing.assert_array_equal(small, whole)
