"""What-if probe: mask geometry and fill, one batched pass, flip sentences, and a planted
shortcut (a model that only reads a corner patch) caught by the border mask."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from covid_xray import data, probe
from covid_xray.config import CLASS_NAMES, IMAGE_SIZE, INPUT_SHAPE

PATCH = 16


def _patch_reader(top: int, left: int, name: str = "planted") -> keras.Model:
    """A functional model that sees only a PATCH x PATCH square at (top, left): bright patch
    (mean > 0.7 of full scale) -> Covid, else Normal. Viral Pneumonia never wins."""
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = keras.layers.Cropping2D(
        ((top, IMAGE_SIZE - top - PATCH), (left, IMAGE_SIZE - left - PATCH)), name="patch"
    )(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="patch_mean")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=name)
    kernel = np.zeros((3, 3), np.float32)
    kernel[:, 0] = 40.0 / 3.0  # Covid logit: 40 * (mean - 0.7)
    model.get_layer("predictions").set_weights([kernel, np.array([-28.0, 0.0, -10.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def film(data_dir):
    """A real training film at model size (decoded from the dataset, never written anywhere)."""
    sample = next(s for s in data.list_samples(data_dir, "train") if s.label == "Normal")
    image = data.load_arrays([sample])[0][0].copy()
    assert np.median(image) < 0.6 * 255  # the fill (its median) reads as "not bright"
    return image


def _stamp(image: np.ndarray, top: int, left: int) -> np.ndarray:
    out = image.copy()
    out[top : top + PATCH, left : left + PATCH] = 255  # a burned-in white marker
    return out


def test_corner_shortcut_is_caught_by_the_border_mask_not_by_the_chest_mask(film):
    corner = 4
    model = _patch_reader(corner, corner)
    p = probe.Probe(model, "unit", name="planted", display_name="Planted")
    result = p.run(_stamp(film, corner, corner))
    assert result.predicted == "Covid"  # the planted marker decides
    flipped = {o.mask for o in result.flips}
    assert "border" in flipped and "outside_chest" in flipped
    assert "chest" not in flipped and "below_lungs" not in flipped
    assert result.outcome("border").predicted == "Normal"
    assert result.outcome("border").delta["Covid"] < -0.9
    assert abs(result.outcome("chest").delta["Covid"]) < 1e-6
    assert "Masking the image border changes Planted's answer from COVID-19 to Normal." in result.sentences()


def test_a_model_reading_the_chest_is_flipped_by_the_chest_mask_only(film):
    centre = IMAGE_SIZE // 2 - PATCH // 2
    model = _patch_reader(centre, centre)
    result = probe.Probe(model, "unit", display_name="Centre").run(_stamp(film, centre, centre))
    assert result.predicted == "Covid"
    assert {o.mask for o in result.flips} == {"chest"}
    assert probe.flip_sentences(result) == [
        "Masking the chest (leaving only the border) changes Centre's answer from COVID-19 to Normal."
    ]


def test_all_masks_and_the_image_go_through_one_batched_pass(film):
    model = _patch_reader(4, 4)
    p = probe.Probe(model, "unit")
    calls = []
    inner = p._fn

    def counting(x):
        calls.append(int(x.shape[0]))
        return inner(x)

    p._fn = counting
    result = p.run(film)
    assert calls == [1 + len(probe.MASKS)]
    calls.clear()
    raw = inner(np.asarray(film[None], np.float32) / 255.0).numpy()[0]
    again = p.run(film, baseline={c: float(v) for c, v in zip(CLASS_NAMES, raw, strict=True)})
    assert calls == [len(probe.MASKS)]  # the request's probabilities: masked copies only
    assert [o.flipped for o in again.outcomes] == [o.flipped for o in result.outcomes]
    np.testing.assert_allclose(
        [again.probabilities[c] for c in CLASS_NAMES],
        [result.probabilities[c] for c in CLASS_NAMES],
        atol=1e-6,
    )


def test_masks_fill_with_the_median_grey_and_keep_the_rest(film):
    masked = probe.masked_images(film)
    assert masked.shape == (len(probe.MASKS), *film.shape) and masked.dtype == np.uint8
    fill = np.rint(probe.fill_values(film)).astype(np.uint8)
    by_name = dict(zip(probe.MASK_NAMES, masked, strict=True))
    # Fully masked pixels hold the median grey, not black; pixels far from a mask are untouched.
    np.testing.assert_array_equal(by_name["border"][0, 0], fill)
    np.testing.assert_array_equal(by_name["border"][112, 112], film[112, 112])
    np.testing.assert_array_equal(by_name["below_lungs"][-1, 112], fill)
    np.testing.assert_array_equal(by_name["below_lungs"][60, 112], film[60, 112])
    np.testing.assert_array_equal(by_name["chest"][112, 112], fill)
    np.testing.assert_array_equal(by_name["chest"][2, 2], film[2, 2])
    np.testing.assert_array_equal(by_name["outside_chest"][2, 2], fill)
    np.testing.assert_array_equal(by_name["outside_chest"][112, 112], film[112, 112])
    # "chest" and "outside_chest" are complements: their weights add up to 1 away from the edge.
    total = probe.mask_weights("chest") + probe.mask_weights("outside_chest")
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_mask_edges_are_feathered_not_sharp():
    w = probe.mask_weights("chest")
    row = w[IMAGE_SIZE // 2]
    assert row.min() == 0.0 and row.max() == 1.0
    assert ((row > 0.05) & (row < 0.95)).sum() >= 4  # a ramp on each side, not a step


def test_bad_inputs_are_refused():
    model = _patch_reader(4, 4)
    p = probe.Probe(model, "unit")
    with pytest.raises(ValueError, match="224x224x3"):
        p.run(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="Unknown mask"):
        p.run(np.zeros(INPUT_SHAPE, np.uint8), masks=("elbow",))
    with pytest.raises(ValueError, match="square uint8"):
        probe.masked_images(np.zeros((10, 12, 3), np.uint8))


def test_temperature_changes_probabilities_not_answers(film):
    model = _patch_reader(4, 4)
    image = _stamp(film, 4, 4)
    raw = probe.Probe(model, "unit").run(image)
    warm = probe.Probe(model, "unit", temperature=3.0).run(image)
    assert [o.flipped for o in warm.outcomes] == [o.flipped for o in raw.outcomes]
    assert warm.probabilities["Covid"] < raw.probabilities["Covid"]


def test_region_share_is_the_mass_inside_a_probe_region():
    uniform = np.ones((224, 224))
    for name in probe.MASK_NAMES:
        assert probe.region_share(uniform, name) == pytest.approx(probe._binary_mask(name, 224).mean())
    low = np.zeros((224, 224))
    low[200:, 100:120] = 1.0
    assert probe.region_share(low, "below_lungs") == pytest.approx(1.0)
    assert np.isnan(probe.region_share(np.zeros((50, 50)), "chest"))
    with pytest.raises(ValueError):
        probe.region_share(np.zeros((10, 20)), "chest")
