"""Heatmap faithfulness (`covid_xray.faithfulness`): the deletion test on a model whose answer is
known, border mass and its one reading (`border_band`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covid_xray import faithfulness as ee

# The toy model: class 0's score depends only on the mean brightness of this square.
SIZE = 30
ROWS, COLS = slice(3, 12), slice(3, 12)  # 9 x 9 = 81 pixels = 9% of 30 x 30
ELSEWHERE = (slice(18, 27), slice(18, 27))  # a square of the same size that the model ignores
K = 81 / SIZE**2


@pytest.fixture(scope="module")
def region_model():
    """Keras functional model: p(class 0) = sigmoid(20 * (mean brightness of the square - 0.6))."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Cropping2D(((ROWS.start, SIZE - ROWS.stop), (COLS.start, SIZE - COLS.stop)))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, head(x))
    head.set_weights([np.array([[20 / 3, 0.0]] * 3, np.float32), np.array([-12.0, 0.0], np.float32)])
    return model


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    """Dim random backgrounds (0..0.5) with the model's square fully bright (1.0)."""
    images = np.random.default_rng(seed).uniform(0.0, 0.5, (n, SIZE, SIZE, 3)).astype(np.float32)
    images[:, ROWS, COLS] = 1.0
    return images


def _square_map(rows: slice, cols: slice) -> np.ndarray:
    heatmap = np.zeros((SIZE, SIZE), np.float32)
    heatmap[rows, cols] = 1.0
    return heatmap


def _predict(model):
    return lambda batch: np.asarray(model(batch, training=False))


# ---------------------------------------------------------------------------
# Pure core.
# ---------------------------------------------------------------------------
def test_topk_mask_selects_the_highest_fraction():
    heatmap = np.random.default_rng(1).random((20, 30))
    mask = ee.topk_mask(heatmap, 0.1)
    assert mask.shape == heatmap.shape and mask.sum() == 60
    assert heatmap[mask].min() > heatmap[~mask].max()


def test_topk_mask_breaks_ties_at_random_but_reproducibly():
    flat = np.zeros((20, 20))
    flat[:2, :2] = 1.0  # 4 positive pixels, the 36 others of the top 10% are ties
    first = ee.topk_mask(flat, 0.1, np.random.default_rng(5))
    assert first.sum() == 40 and first[:2, :2].all()
    assert np.array_equal(first, ee.topk_mask(flat, 0.1, np.random.default_rng(5)))
    assert not np.array_equal(first, ee.topk_mask(flat, 0.1, np.random.default_rng(6)))
    # Ties are not taken in raster order (which would favour the top border).
    assert first[2:, :].sum() < 36


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_fraction_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="fraction"):
        ee.topk_mask(np.ones((4, 4)), bad)


def test_random_mask_is_blobs_of_the_right_area_and_reproducible():
    import cv2

    mask = ee.random_mask((224, 224), 0.1, np.random.default_rng(3))
    assert mask.sum() == round(0.1 * 224 * 224)
    assert np.array_equal(mask, ee.random_mask((224, 224), 0.1, np.random.default_rng(3)))
    assert not np.array_equal(mask, ee.random_mask((224, 224), 0.1, np.random.default_rng(4)))
    blobs, _ = cv2.connectedComponents(mask.astype(np.uint8))
    assert blobs - 1 <= 20  # a few compact blobs, not thousands of scattered pixels


def test_delete_fills_only_the_mask():
    image = np.random.default_rng(0).uniform(0, 255, (16, 16, 3)).astype(np.float32)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    out = ee.delete(image, mask, "mean")
    assert np.array_equal(out[~mask], image[~mask])
    np.testing.assert_allclose(out[mask], np.broadcast_to(image.mean(axis=(0, 1)), (16, 3)), rtol=1e-6)
    blurred = ee.delete(image, mask, "blur")
    assert np.array_equal(blurred[~mask], image[~mask])
    np.testing.assert_allclose(blurred[mask], ee.fill_image(image, "blur")[mask])
    assert blurred[mask].std() < image[mask].std() / 3  # a heavy blur flattens the patch
    with pytest.raises(ValueError, match="Unknown fill"):
        ee.delete(image, mask, "zeros")


def test_border_mass_references():
    assert ee.border_mass(np.ones((50, 50))) == pytest.approx(0.36)
    # The reference holds at the model's size too, where 10% of a side is not whole pixels.
    assert ee.border_mass(np.ones((224, 224))) == pytest.approx(0.36)
    assert ee.uniform_border_mass() == pytest.approx(0.36)
    centre = np.zeros((50, 50))
    centre[5:45, 5:45] = np.random.default_rng(0).random((40, 40))
    assert ee.border_mass(centre) == pytest.approx(0.0)
    border_only = np.ones((50, 50))
    border_only[5:45, 5:45] = 0.0
    assert ee.border_mass(border_only) == pytest.approx(1.0)
    assert math.isnan(ee.border_mass(np.zeros((50, 50))))


@pytest.mark.parametrize(
    ("mass", "band"), [(0.412, "above"), (0.405, "about"), (0.36, "about"), (0.315, "about"), (0.30, "below")]
)
def test_border_band_reads_a_mass_against_the_uniform_map(mass, band):
    # Uniform 0.36, margin 0.05: 0.412 is above (the texts once disagreed on it).
    assert ee.border_band(mass) == band


def test_summaries_count_wins_ties_and_empty_maps():
    heat = np.array([[0.5], [0.2], [0.1], [0.0]])
    rand = np.array([[0.1], [0.2], [0.3], [0.0]])
    row = ee.summarize_deletion(heat, rand, [0.1])["0.1"]
    assert row["heatmap_drop"] == pytest.approx(0.2) and row["random_drop"] == pytest.approx(0.15)
    assert row["difference"] == pytest.approx(0.05)
    assert row["beats_random"] == 0.25 and row["loses_to_random"] == 0.25
    border = ee.summarize_border([0.2, 0.4, float("nan"), 0.9])
    assert border == {"mean": 0.5, "median": 0.4, "n": 3, "n_empty": 1}


# ---------------------------------------------------------------------------
# Deletion test on a model whose answer is known.
# ---------------------------------------------------------------------------
def test_deletion_rewards_the_heatmap_of_the_region_the_model_uses(region_model):
    images = _images()
    predict = _predict(region_model)
    classes = np.zeros(len(images), int)
    right = [_square_map(ROWS, COLS)] * len(images)
    wrong = [_square_map(*ELSEWHERE)] * len(images)

    good = ee.deletion_scores(predict, images, right, classes, ks=[K], rng=np.random.default_rng(0))
    bad = ee.deletion_scores(predict, images, wrong, classes, ks=[K], rng=np.random.default_rng(0))

    assert np.all(good["base"] > 0.95)  # the bright square makes class 0 confident
    # Removing exactly the square (filled with the dimmer image mean) collapses class 0 ...
    assert np.all(good["heatmap"][:, 0] > 0.8)
    # ... random blobs of the same area barely touch it, and the wrong square not at all.
    assert np.all(good["heatmap"][:, 0] > good["random"][:, 0] + 0.3)
    np.testing.assert_allclose(bad["heatmap"], 0.0, atol=1e-6)
    assert np.all(good["heatmap"] > bad["heatmap"] + 0.8)
    assert np.array_equal(good["random"], bad["random"])  # same seed, same random masks

    assert ee.summarize_deletion(good["heatmap"], good["random"], [K])[f"{K:g}"]["beats_random"] == 1.0
    assert ee.summarize_deletion(bad["heatmap"], bad["random"], [K])[f"{K:g}"]["beats_random"] == 0.0


def test_deletion_with_blur_fill_also_ranks_the_right_region_first(region_model):
    images = _images(3, seed=2)
    predict = _predict(region_model)
    classes = np.zeros(len(images), int)
    right = ee.heatmap_deletion_drops(predict, images, [_square_map(ROWS, COLS)] * 3, classes, [K], "blur")
    wrong = ee.heatmap_deletion_drops(predict, images, [_square_map(*ELSEWHERE)] * 3, classes, [K], "blur")
    # The blur keeps some of the square's brightness, so the drop is smaller than with the mean.
    assert np.all(right > 0.15)
    np.testing.assert_allclose(wrong, 0.0, atol=1e-6)


def test_deletion_scores_are_deterministic_given_the_seed(region_model):
    images = _images(4, seed=1)
    predict = _predict(region_model)
    maps = [np.random.default_rng(i).random((SIZE, SIZE)) for i in range(4)]
    classes = np.zeros(4, int)
    ks = [0.05, 0.2]
    one = ee.deletion_scores(predict, images, maps, classes, ks, rng=np.random.default_rng(7))
    two = ee.deletion_scores(predict, images, maps, classes, ks, rng=np.random.default_rng(7))
    other = ee.deletion_scores(predict, images, maps, classes, ks, rng=np.random.default_rng(8))
    for key in ("base", "heatmap", "random"):
        assert np.array_equal(one[key], two[key])
    assert one["random"].shape == (4, 2)
    assert not np.array_equal(one["random"], other["random"])


def test_deletion_scores_reject_mismatched_inputs(region_model):
    with pytest.raises(ValueError, match="must match"):
        ee.deletion_scores(_predict(region_model), _images(2), [np.ones((SIZE, SIZE))], [0, 0])


# ---------------------------------------------------------------------------
# Reader.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------


