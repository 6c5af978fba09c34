"""Weight averaging callback (covid_xray/weight_averaging.py) on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from covid_xray.weight_averaging import mean_weights, window_averaging_callback  # noqa: E402


def _tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,))
    x = keras.layers.Dense(5, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy", metrics=["accuracy"]
    )
    return model


class _Recorder(keras.callbacks.Callback):
    def __init__(self, when: str):
        super().__init__()
        self.when, self.snapshots = when, []

    def on_epoch_begin(self, epoch, logs=None):
        if self.when == "begin":
            self.snapshots.append(self.model.get_weights())

    def on_epoch_end(self, epoch, logs=None):
        if self.when == "end":
            self.snapshots.append(self.model.get_weights())


def _data(n=48):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, size=n), 3)
    return x, y


def test_mean_weights_is_the_elementwise_mean():
    a = [np.array([1.0, 2.0], np.float32), np.array([[3.0]], np.float32)]
    b = [np.array([3.0, 6.0], np.float32), np.array([[5.0]], np.float32)]
    out = mean_weights([a, b])
    np.testing.assert_array_equal(out[0], [2.0, 4.0])
    np.testing.assert_array_equal(out[1], [[4.0]])
    assert out[0].dtype == np.float32
    with pytest.raises(ValueError):
        mean_weights([])


def test_averaged_weights_are_the_mean_of_the_last_epochs_and_training_goes_on_from_the_raw_ones():
    x, y = _data()
    model = _tiny_model()
    raw_end = _Recorder("end")  # before the averaging callback: sees each epoch's raw weights
    begin = _Recorder("begin")  # after it: sees the weights each epoch starts from
    averaging = window_averaging_callback(3, (x[:16], y[:16]), batch_size=16)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=5,
        verbose=0,
        validation_data=(x[:16], y[:16]),
        callbacks=[raw_end, averaging, begin],
    )
    assert len(raw_end.snapshots) == 5
    # Epochs really moved the weights (else the mean would trivially equal them).
    assert not np.allclose(raw_end.snapshots[-1][0], raw_end.snapshots[-2][0])
    expected = mean_weights(raw_end.snapshots[-3:])
    for got, want in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert averaging.averaged_over == [3, 4, 5]
    # Each epoch after the first starts from the previous epoch's raw weights, not the average.
    for epoch in range(1, 5):
        for got, want in zip(begin.snapshots[epoch], raw_end.snapshots[epoch - 1], strict=True):
            np.testing.assert_array_equal(got, want)
    # The logged val_loss is the averaged model's, the raw one is kept beside it.
    final = model.evaluate(x[:16], y[:16], batch_size=16, verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-5)
    assert "raw_val_loss" in history.history
    assert history.history["raw_val_loss"][-1] != pytest.approx(history.history["val_loss"][-1], rel=1e-9)


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="at least one epoch"):
        window_averaging_callback(0, None)


def test_train_flag_reaches_the_config():
    import train

    args = train.build_parser().parse_args(["--swa-epochs", "5"])
    assert args.swa_epochs == 5
    assert train.build_parser().parse_args([]).swa_epochs == 0


# ---------------------------------------------------------------------------
# compare: the paired out-of-fold rule.
# ---------------------------------------------------------------------------


