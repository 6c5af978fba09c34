"""Temperature scaling: the maths on synthetic models with a known answer, and the `fit` CLI on a
tiny random-weight checkpoint over a synthetic dataset (validation split only, never test)."""

from __future__ import annotations

import numpy as np
import pytest

from covid_xray import calibration
from covid_xray.calibration import (
    CalibrationError,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from covid_xray.config import NUM_CLASSES


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _generative(n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from softmax(true logits): softmax(z) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, NUM_CLASSES))
    p = _softmax(z)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, labels


# ---------------------------------------------------------------------------
# Pure functions.
# ---------------------------------------------------------------------------
def test_overconfident_model_is_fixed_and_the_temperature_recovered():
    z, labels = _generative()
    overconfident = _softmax(3.0 * z)
    temperature = fit_temperature(overconfident, labels)
    # Clipping at PROB_FLOOR costs a little of the far tail: T is close to, not exactly, 3.
    assert temperature == pytest.approx(3.0, abs=0.2)
    scaled = apply_temperature(overconfident, temperature)
    assert (
        expected_calibration_error(scaled, labels)
        < 0.03
        < 0.15
        < expected_calibration_error(overconfident, labels)
    )
    assert negative_log_likelihood(scaled, labels) < negative_log_likelihood(overconfident, labels) - 0.2
    # As good as the true probabilities, which no temperature can beat (up to sampling noise).
    assert negative_log_likelihood(scaled, labels) == pytest.approx(
        negative_log_likelihood(_softmax(z), labels), abs=0.01
    )


def test_underconfident_model_gets_a_temperature_below_one():
    z, labels = _generative(seed=1)
    temperature = fit_temperature(_softmax(0.5 * z), labels)
    assert temperature == pytest.approx(0.5, abs=0.05)


def test_ece_of_calibrated_and_overconfident_constructions():
    z, labels = _generative(n=20000, seed=2)
    assert expected_calibration_error(_softmax(z), labels) < 0.02
    # Always 99% sure, right about a third of the time: ECE near 0.99 - 1/3.
    always_sure = np.tile([0.99, 0.005, 0.005], (len(labels), 1))
    assert expected_calibration_error(always_sure, labels) == pytest.approx(
        0.99 - np.mean(labels == 0), abs=1e-9
    )


def test_ece_and_bins_on_a_hand_computed_example():
    probs = np.array([[0.95, 0.03, 0.02], [0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])
    labels = np.array([0, 1, 1, 1])
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins.counts.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert bins.confidence[9] == pytest.approx(0.925) and bins.accuracy[9] == pytest.approx(0.5)
    assert np.isnan(bins.confidence[0]) and bins.n == 4
    expected = (2 / 4) * abs(0.5 - 0.925) + (1 / 4) * abs(1 - 0.5) + (1 / 4) * abs(0 - 0.6)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    # A confidence of exactly 1.0 lands in the last bin.
    assert reliability_bins(np.array([[1.0, 0, 0]]), np.array([0])).counts[-1] == 1


def test_nll_on_a_hand_computed_example():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]])
    labels = np.array([0, 1, 0])
    expected = -(np.log(0.5) + np.log(0.8) + np.log(calibration.PROB_FLOOR)) / 3
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected)


def test_apply_temperature_identity_argmax_and_limits():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), size=200)
    probs = np.clip(probs, 1e-3, None)
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, rtol=1e-12)
    for t in (0.3, 2.0, 7.0):
        scaled = apply_temperature(probs, t)
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
        np.testing.assert_array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
    # Softer with T > 1, sharper with T < 1; a huge T tends to uniform.
    assert np.all(apply_temperature(probs, 2.0).max(axis=1) <= probs.max(axis=1) + 1e-12)
    assert np.all(apply_temperature(probs, 0.5).max(axis=1) >= probs.max(axis=1) - 1e-12)
    np.testing.assert_allclose(apply_temperature(probs, 1e6), 1 / NUM_CLASSES, atol=1e-5)
    # One image (a 1-D vector), as the app calls it.
    one = apply_temperature(probs[0], 2.0)
    assert one.shape == (NUM_CLASSES,)
    np.testing.assert_allclose(one, apply_temperature(probs[:1], 2.0)[0])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), None])
def test_invalid_temperature_is_refused(bad):
    with pytest.raises(CalibrationError, match="Temperature"):
        apply_temperature(np.array([0.2, 0.3, 0.5]), bad)
    assert calibration.temperature_from_metadata({"calibration": {"temperature": bad}}) is None


def test_fit_refuses_bad_input():
    with pytest.raises(CalibrationError, match="zero samples"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(CalibrationError, match="labels"):
        fit_temperature(np.full((4, 3), 1 / 3), np.array([0, 1]))
    with pytest.raises(CalibrationError, match="class indices"):
        fit_temperature(np.full((2, 3), 1 / 3), np.array([0, 3]))


def test_temperature_from_metadata():
    assert calibration.temperature_from_metadata({}) is None
    assert calibration.temperature_from_metadata(None) is None
    assert calibration.temperature_from_metadata({"calibration": {"temperature": 1.7}}) == 1.7


# ---------------------------------------------------------------------------
# The `fit` CLI on a tiny checkpoint (random DavidNet) and a synthetic dataset.
# ---------------------------------------------------------------------------


def test_a_validation_split_without_errors_gives_no_temperature():
    """All validation images right: NLL keeps falling as T -> 0, so the fit is refused (raw served)."""
    from covid_xray.calibration import decide_temperature

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probs = np.full((60, 3), 0.15)
    probs[np.arange(60), labels] = 0.7  # every argmax right, confidence 0.7
    fitted, applied, reason = decide_temperature(probs, labels)
    assert applied is None and fitted == pytest.approx(0.05) and "0 misclassified" in reason
    # One error makes T identifiable again: it is applied.
    probs[0] = np.roll(probs[0], 1)
    fitted, applied, reason = decide_temperature(probs, labels)
    assert applied == fitted and 0.05 < fitted < 20 and reason == ""


