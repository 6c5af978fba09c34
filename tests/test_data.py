"""Tests of covid_xray.data: discovery, manifest hash, duplicate-aware splits, cached arrays,
tf.data pipelines and augmentation.

Unit tests run on a tiny synthetic dataset of generated images (tmp_path); integration tests
run on the real dataset (conftest's `data_dir`) and check the defects documented in its README.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from covid_xray import audit, config, data, preprocessing
from covid_xray.config import CLASS_NAMES, IMAGE_SIZE, NUM_CLASSES
from tests.conftest import random_xray, write_image

# The real dataset's file counts (data README) and content fingerprint (this copy's bytes).
REAL_COUNTS = {
    "train": {"Covid": 111, "Normal": 70, "Viral Pneumonia": 70},
    "test": {"Covid": 26, "Normal": 20, "Viral Pneumonia": 20},
}
REAL_MANIFEST_HASH = "42af9cbfab53a5b0f892216f28c355f86250ca7de9aa0852085bf077fde4cd0b"


# ---------------------------------------------------------------------------
# Synthetic dataset.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Discovery.
# ---------------------------------------------------------------------------
def test_list_samples_finds_images_only_in_deterministic_order(synth):
    samples = data.list_samples(synth)
    # 6 + 3 per class, plus c0_copy and n0_jpeg in train, leak and near in test.
    assert len(samples) == 3 * 9 + 4
    names = {s.relpath for s in samples}
    assert "train/Covid/notes.txt" not in names and "train/Covid/.hidden.png" not in names
    assert samples == sorted(samples, key=lambda s: (s.split != "train", s.label_index, s.path.name))
    assert samples == data.list_samples(synth)


def test_sample_relpath_and_label_index(synth):
    sample = next(s for s in data.list_samples(synth, "test") if s.path.name == "near.jpg")
    assert sample.relpath == "test/Normal/near.jpg"
    assert sample.label_index == CLASS_NAMES.index("Normal") == 1
    with pytest.raises(ValueError, match="Unknown label"):
        data.Sample(sample.path, "test", "Bacterial")


def test_list_samples_split_filter_and_bad_split(synth):
    test = data.list_samples(synth, "test")
    assert {s.split for s in test} == {"test"} and len(test) == 3 * 3 + 2
    with pytest.raises(ValueError, match="Unknown split"):
        data.list_samples(synth, "validation")


def test_root_one_level_above_is_accepted(synth):
    # kagglehub returns the folder that contains Covid19-dataset/.
    assert data.find_dataset_root(synth.parent) == synth
    assert data.find_dataset_root(synth) == synth
    assert len(data.list_samples(synth.parent)) == len(data.list_samples(synth))


def test_data_dir_comes_from_env_var(synth, monkeypatch):
    monkeypatch.setenv(config.DATA_ENV_VAR, str(synth))
    assert len(data.list_samples()) == 31


def test_missing_dataset_error_tells_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.list_samples(tmp_path / "nowhere")
    message = str(info.value)
    assert config.DOWNLOAD_COMMAND in message
    assert config.DATA_ENV_VAR in message
    assert isinstance(info.value, FileNotFoundError)
    # An existing folder without the layout is just as unusable.
    with pytest.raises(data.DatasetNotFoundError):
        data.find_dataset_root(tmp_path)


def test_missing_class_folder_is_an_error(synth):
    shutil.rmtree(synth / "test" / "Viral Pneumonia")
    with pytest.raises(data.DatasetNotFoundError, match="Viral Pneumonia"):
        data.list_samples(synth)


# ---------------------------------------------------------------------------
# Manifest hash.
# ---------------------------------------------------------------------------
def test_manifest_hash_is_order_independent_and_content_sensitive(synth):
    samples = data.list_samples(synth)
    digest = data.dataset_manifest_hash(samples)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert data.dataset_manifest_hash(list(reversed(samples))) == digest
    assert data.dataset_manifest_hash(samples[1:]) != digest
    # Changing one file's bytes (new mtime and size) changes the hash.
    target = synth / "test" / "Covid" / "c0.png"
    target.write_bytes(target.read_bytes() + b"\0")
    assert data.dataset_manifest_hash(samples) != digest


# ---------------------------------------------------------------------------
# Splits.
# ---------------------------------------------------------------------------
def test_duplicate_groups_merge_exact_and_near_copies(synth_module):
    groups = data.duplicate_groups(data.list_samples(synth_module, "train"))
    multi = sorted(sorted(s.relpath for s in g) for g in groups if len(g) > 1)
    assert multi == [
        ["train/Covid/c0.png", "train/Covid/c0_copy.png"],
        ["train/Normal/n0.png", "train/Normal/n0_jpeg.jpg"],
    ]


def test_split_is_stratified_deterministic_and_keeps_duplicates_together(synth_module):
    train_all = data.list_samples(synth_module, "train")
    seen_val = set()
    for seed in range(8):
        train, val = data.split_train_validation(train_all, val_fraction=0.34, seed=seed)
        assert sorted(train + val, key=lambda s: s.relpath) == sorted(train_all, key=lambda s: s.relpath)
        assert not set(train) & set(val)
        # Stratified over groups: 7 of the 18 groups go to val, 2 or 3 per class.
        val_groups = Counter(s.label for s in val if s.path.name not in {"c0_copy.png", "n0_jpeg.jpg"})
        assert set(val_groups.values()) <= {2, 3} and len(val_groups) == NUM_CLASSES
        for a, b in (("c0.png", "c0_copy.png"), ("n0.png", "n0_jpeg.jpg")):
            side = {s.path.name: "val" for s in val} | {s.path.name: "train" for s in train}
            assert side[a] == side[b], f"duplicates {a} and {b} split apart with seed {seed}"
        assert data.split_train_validation(train_all, val_fraction=0.34, seed=seed) == (train, val)
        seen_val.add(tuple(s.relpath for s in val))
    assert len(seen_val) > 1  # the seed matters


def test_cross_validation_folds_partition_train_stratified_and_keep_duplicates_together(synth_module):
    train_all = data.list_samples(synth_module, "train")
    folds = data.cross_validation_folds(train_all, folds=3, seed=5)
    assert len(folds) == 3
    vals = [val for _, val in folds]
    # Every image is validated exactly once (out-of-fold predictions cover the train folder).
    assert sorted(s.relpath for v in vals for s in v) == sorted(s.relpath for s in train_all)
    for train, val in folds:
        assert sorted(train + val, key=lambda s: s.relpath) == sorted(train_all, key=lambda s: s.relpath)
        assert not set(train) & set(val)
        names = {s.path.name for s in val}
        assert ("c0.png" in names) == ("c0_copy.png" in names)
        assert ("n0.png" in names) == ("n0_jpeg.jpg" in names)
        # Stratified: 6 groups per class over 3 folds, 2 each.
        groups = Counter(s.label for s in val if s.path.name not in {"c0_copy.png", "n0_jpeg.jpg"})
        assert groups == {c: 2 for c in CLASS_NAMES}
    assert data.cross_validation_folds(train_all, folds=3, seed=5) == folds
    assert data.cross_validation_folds(train_all, folds=3, seed=6) != folds


def test_cross_validation_folds_reject_bad_k(synth_module):
    train_all = data.list_samples(synth_module, "train")
    with pytest.raises(ValueError, match="folds must be"):
        data.cross_validation_folds(train_all, folds=1)
    with pytest.raises(ValueError, match="fewer than 7"):
        data.cross_validation_folds(train_all, folds=7)


def test_make_splits_cv_fold_is_that_fold(synth_module):
    folds = data.cross_validation_folds(data.list_samples(synth_module, "train"), folds=3, seed=2)
    for i, (train, val) in enumerate(folds):
        splits = data.make_splits(synth_module, "default", seed=2, cv_folds=3, cv_fold=i)
        assert splits["train"] == train and splits["val"] == val
        assert splits["test"] == data.list_samples(synth_module, "test")
    with pytest.raises(ValueError, match="cv_fold"):
        data.make_splits(synth_module, "default", cv_folds=3, cv_fold=3)


def test_array_batches_match_the_tf_pipeline_contract():
    """The any-backend input pipeline: every image once per epoch, reshuffled, normalised, augmented
    in range."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(10)  # an id in one pixel
    labels = np.arange(10) % NUM_CLASSES
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    plain = data.array_batches_class()(
        images, one_hot, mode="unit", batch_size=4, shuffle=True, augmenter=None, seed=1
    )
    assert len(plain) == 3

    def epoch_ids():
        ids = []
        for i in range(len(plain)):
            x, y = plain[i]
            assert x.dtype == np.float32 and x.max() <= 1.0 and x.min() >= 0.0
            batch_ids = np.rint(x[:, 0, 0, 0] * 255).astype(int)
            np.testing.assert_array_equal(y, one_hot[batch_ids])
            ids += batch_ids.tolist()
        plain.on_epoch_end()
        return ids

    first, second = epoch_ids(), epoch_ids()
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    ordered = data.array_batches_class()(
        images, one_hot, mode="unit", batch_size=4, shuffle=False, augmenter=None, seed=1
    )
    np.testing.assert_allclose(ordered[0][0], images[:4] / 255.0, atol=1e-6)
    augmenter = data.build_augmenter(zoom=0.3, rotation_degrees=30, seed=0)
    augmented = data.array_batches_class()(
        images, one_hot, mode="unit", batch_size=10, shuffle=False, augmenter=augmenter, seed=1
    )
    x, _ = augmented[0]
    assert x.shape == (10, 32, 32, 3) and 0.0 <= x.min() and x.max() <= 1.0
    assert not np.allclose(x, images / 255.0, atol=1e-3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(synth_module, fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        data.split_train_validation(data.list_samples(synth_module, "train"), val_fraction=fraction)


def test_split_too_small_to_stratify_explains(synth_module):
    # One Normal image cannot be on both sides of a stratified split.
    names = {"c0.png", "c1.png", "n0.png"}
    few = [s for s in data.list_samples(synth_module, "test") if s.path.name in names]
    with pytest.raises(ValueError, match="stratified"):
        data.split_train_validation(few, val_fraction=0.2)


def test_make_splits_protocols(synth_module):
    default = data.make_splits(synth_module, "default", val_fraction=0.34, seed=1)
    assert set(default) == {"train", "val", "test"}
    assert not {s.relpath for s in default["train"]} & {s.relpath for s in default["val"]}
    assert {s.split for s in default["train"] + default["val"]} == {"train"}
    paper = data.make_splits(synth_module, "paper")
    # The paper's protocol: all of train for training, the test split used as validation.
    assert paper["val"] == paper["test"] == data.list_samples(synth_module, "test")
    assert paper["train"] == data.list_samples(synth_module, "train")
    with pytest.raises(ValueError, match="protocol"):
        data.make_splits(synth_module, "kfold")


# ---------------------------------------------------------------------------
# Arrays and cache.
# ---------------------------------------------------------------------------
def test_load_arrays_shapes_and_labels(synth_module):
    samples = data.list_samples(synth_module, "test")
    images, labels = data.load_arrays(samples)
    assert images.shape == (len(samples), IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    assert labels.tolist() == [s.label_index for s in samples]
    empty_images, empty_labels = data.load_arrays([])
    assert empty_images.shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3) and empty_labels.shape == (0,)


def test_load_arrays_decodes_each_file_once(synth, monkeypatch):
    data.clear_cache()
    calls = Counter()
    real_load = data.imaging.load_image

    def counting_load(path, **kwargs):
        calls[Path(path).name] += 1
        return real_load(path, **kwargs)

    monkeypatch.setattr(data.imaging, "load_image", counting_load)
    samples = data.list_samples(synth, "test")
    first, _ = data.load_arrays(samples)
    second, _ = data.load_arrays(samples)
    audit.audit(samples)  # the audit's perceptual hashes come from the same decode
    assert np.array_equal(first, second)
    assert len(calls) == len(samples) and set(calls.values()) == {1}
    # An edited file (new mtime/size) is decoded again.
    target = synth / "test" / "Covid" / "c0.png"
    rgb = np.full((80, 80, 3), 200, np.uint8)
    write_image(target, rgb)
    third, _ = data.load_arrays(samples)
    assert calls["c0.png"] == 2
    assert (third[samples.index(next(s for s in samples if s.path == target))] == 200).all()


def test_class_weights_balanced():
    weights = data.class_weights([0, 0, 0, 1, 2, 2])
    # n / (n_classes * count): 6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2).
    assert weights == pytest.approx({0: 2 / 3, 1: 2.0, 2: 1.0})
    assert set(map(type, weights)) == {int}
    with pytest.raises(ValueError):
        data.class_weights([])


# ---------------------------------------------------------------------------
# tf.data and augmentation.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_arrays():
    rng = np.random.default_rng(3)
    images = np.stack([random_xray(rng, IMAGE_SIZE) for _ in range(10)])
    labels = np.arange(10) % NUM_CLASSES
    return images, labels


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("mode", ["unit", "imagenet"])
def test_make_dataset_shapes_dtypes_and_values(small_arrays, mode):
    images, labels = small_arrays
    ds = data.make_dataset(images, labels, mode=mode, batch_size=4)
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [4, 4, 2]
    x, y = _collect(ds)
    assert x.dtype == np.float32 and x.shape == (10, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert y.dtype == np.float32 and y.shape == (10, NUM_CLASSES)
    assert y.argmax(1).tolist() == labels.tolist() and (y.sum(1) == 1).all()
    # Without shuffle or augmentation the pipeline is exactly preprocessing.normalize.
    np.testing.assert_allclose(x, preprocessing.normalize(images, mode), atol=1e-6)
    if mode == "unit":
        assert x.min() >= 0.0 and x.max() <= 1.0


def test_make_dataset_shuffle_is_seeded_and_complete(small_arrays):
    images, labels = small_arrays
    ds = data.make_dataset(images, labels, mode="unit", batch_size=3, shuffle=True, seed=7)
    epoch1, _ = _collect(ds)
    epoch2, _ = _collect(ds)
    again, _ = _collect(data.make_dataset(images, labels, mode="unit", batch_size=3, shuffle=True, seed=7))
    key = lambda batch: sorted(float(img.sum()) for img in batch)  # noqa: E731
    assert key(epoch1) == pytest.approx(key(images / 255.0))  # every image, once
    assert not np.array_equal(epoch1, images / 255.0)  # order changed
    assert not np.array_equal(epoch1, epoch2)  # reshuffled each epoch
    assert np.array_equal(epoch1, again)  # same seed, same order


def test_augmentation_changes_images_but_keeps_shape_and_range(small_arrays):
    images, labels = small_arrays
    plain, y_plain = _collect(data.make_dataset(images, labels, mode="unit", batch_size=5))
    augmented, y_aug = _collect(data.make_dataset(images, labels, mode="unit", batch_size=5, augment=True))
    assert augmented.shape == plain.shape and augmented.dtype == np.float32
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0
    assert np.array_equal(y_aug, y_plain)  # geometry changes, labels do not
    per_image = np.abs(augmented - plain).mean(axis=(1, 2, 3))
    assert (per_image > 1e-3).all()


def test_augmentation_differs_between_epochs(small_arrays):
    images, labels = small_arrays
    ds = data.make_dataset(images, labels, mode="unit", batch_size=10, augment=True, seed=1)
    first, _ = _collect(ds)
    second, _ = _collect(ds)
    assert np.abs(first - second).mean() > 1e-3


def test_build_augmenter_parameters():
    names = [layer.name for layer in data.build_augmenter(seed=0).layers]
    assert names == ["flip", "rotation", "zoom", "shear"]
    reduced = data.build_augmenter(flip=False, shear=0, seed=0)
    assert [layer.name for layer in reduced.layers] == ["rotation", "zoom"]
    with pytest.raises(ValueError, match="zoom"):
        data.build_augmenter(zoom=-0.1)
    # A custom augmenter is used as given (here: identity, so values are unchanged).
    images = np.full((2, 8, 8, 3), 51, np.uint8)
    x, _ = _collect(data.make_dataset(images, np.array([0, 1]), mode="unit", augment=lambda t, training: t))
    np.testing.assert_allclose(x, 0.2, atol=1e-6)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((2, 8, 8, 3), np.float32), np.array([0, 1]), "uint8"),  # float images
        (np.zeros((2, 8, 8), np.uint8), np.array([0, 1]), "uint8"),  # no channel axis
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0]), "labels"),  # count mismatch
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 3]), "class indices"),  # label out of range
    ],
)
def test_make_dataset_rejects_bad_input(images, labels, message):
    with pytest.raises(ValueError, match=message):
        data.make_dataset(images, labels, mode="unit")


def test_make_dataset_rejects_unknown_mode(small_arrays):
    with pytest.raises(ValueError, match="preprocessing mode"):
        data.make_dataset(*small_arrays, mode="zscore")


# ---------------------------------------------------------------------------
# Audit (synthetic).
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# CLI: download (fake kagglehub, no network) and info.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Integration: the real dataset.
# ---------------------------------------------------------------------------


def test_real_counts(real_samples):
    counts = Counter((s.split, s.label) for s in real_samples)
    assert {split: {c: counts[(split, c)] for c in CLASS_NAMES} for split in ("train", "test")} == REAL_COUNTS
    assert len(real_samples) == 317 and len({s.relpath for s in real_samples}) == 317


def test_real_manifest_hash_is_stable(real_samples):
    assert data.dataset_manifest_hash(real_samples) == REAL_MANIFEST_HASH
    assert data.dataset_manifest_hash(sorted(real_samples, key=lambda s: s.path.name)) == REAL_MANIFEST_HASH


def test_real_default_split(data_dir, real_audit):
    splits = data.make_splits(data_dir, "default", val_fraction=0.2, seed=42)
    assert splits == data.make_splits(data_dir, "default", val_fraction=0.2, seed=42)
    train, val = splits["train"], splits["val"]
    assert len(train) + len(val) == 251 and 45 <= len(val) <= 55
    assert len(splits["test"]) == 66
    # Stratified: each class's share of val matches its share of train within one image.
    val_counts = Counter(s.label for s in val)
    for label, total in REAL_COUNTS["train"].items():
        assert abs(val_counts[label] - total * len(val) / 251) <= 1.5, (label, val_counts)
    # No duplicate pair (exact or phash <= 6) straddles train and val.
    side = {s.relpath: "train" for s in train} | {s.relpath: "val" for s in val}
    within_train = [p for p in real_audit.near_pairs if p.scope == "train"]
    assert len(within_train) == 12
    assert all(side[p.a] == side[p.b] for p in within_train)


def test_real_paper_split(data_dir):
    splits = data.make_splits(data_dir, "paper")
    assert len(splits["train"]) == 251 and splits["val"] == splits["test"] and len(splits["val"]) == 66


@pytest.mark.parametrize("mode", ["unit", "imagenet"])
def test_real_tf_data(real_samples, real_audit, mode):
    samples = [s for s in real_samples if s.split == "test"]
    images, labels = data.load_arrays(samples)
    assert images.shape == (66, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    assert labels.tolist() == [s.label_index for s in samples]
    assert images.max() > 200 and images.min() < 30  # real radiographs: dark air, bright bone
    ds = data.make_dataset(images, labels, mode=mode, batch_size=32, shuffle=True, augment=True, seed=0)
    x, y = _collect(ds)
    assert x.shape == (66, IMAGE_SIZE, IMAGE_SIZE, 3) and x.dtype == np.float32
    assert sorted(y.argmax(1).tolist()) == sorted(labels.tolist())
    low, high = preprocessing.normalize(np.array([[[[0, 0, 0]], [[255, 255, 255]]]], np.uint8), mode)[0, :, 0]
    assert (x >= low.min() - 1e-5).all() and (x <= high.max() + 1e-5).all()


def test_real_class_weights(real_samples):
    labels = np.array([s.label_index for s in real_samples if s.split == "train"])
    weights = data.class_weights(labels)
    # 251 / (3 * 111) for Covid, 251 / (3 * 70) for the others.
    assert weights == pytest.approx({0: 251 / 333, 1: 251 / 210, 2: 251 / 210})


