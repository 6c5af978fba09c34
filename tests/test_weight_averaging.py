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
def _fold_runs(root, files, labels, probs, folds=2, seed=1):
    import csv
    import json

    from covid_xray.config import CLASS_NAMES

    runs = []
    for k in range(folds):
        run = root / f"fold{k}"
        (run / "ckpt").mkdir(parents=True)
        with open(run / "val_predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "true", "predicted", *(f"p_{c}" for c in CLASS_NAMES)])
            for i in range(k, len(files), folds):
                p = probs[i]
                writer.writerow(
                    [
                        files[i],
                        CLASS_NAMES[labels[i]],
                        CLASS_NAMES[int(np.argmax(p))],
                        *(f"{v:.6f}" for v in p),
                    ]
                )
        meta = {"config": {"seed": seed, "cv_fold": k}, "kept": {"phase": "plain", "epoch": 3}}
        (run / "ckpt" / "davidnet.json").write_text(json.dumps(meta))
        runs.append(run)
    return runs


def _synthetic(n=120, true_mass=0.7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = np.full((n, 3), (1 - true_mass) / 2)
    probs[np.arange(n), labels] = true_mass
    probs += rng.uniform(0, 0.05, size=(n, 3))
    probs /= probs.sum(axis=1, keepdims=True)
    files = [f"train/x/{i:03d}.png" for i in range(n)]
    return files, labels, probs


def test_compare_ships_only_a_recipe_better_beyond_two_standard_errors(tmp_path):
    import json

    from covid_xray.weight_averaging import RULE, compare

    files, labels, probs = _synthetic()
    sharper = probs.copy()
    sharper[np.arange(len(labels)), labels] += 0.3  # every image's true class gains: clearly better
    sharper /= sharper.sum(axis=1, keepdims=True)
    reference = _fold_runs(tmp_path / "ref", files, labels, probs)
    better = _fold_runs(tmp_path / "better", files, labels, sharper)
    reports = tmp_path / "reports"
    report = compare(reference, better, candidate="sharper", expected_files=files, reports_dir=reports)
    diff = report["paired_difference"]
    assert diff["better"] is True and diff["log_loss"] < -2 * diff["log_loss_se"] < 0
    assert report["decision"].startswith("ship sharper") and report["rule"] == RULE
    assert report["candidate"]["log_loss"] < report["reference"]["log_loss"]
    assert json.loads((reports / "davidnet" / "cv_weight_averaging.json").read_text()) == report
    # One image much better, the rest slightly worse: the mean may drop, but not beyond noise.
    noisy = probs.copy()
    noisy[0, labels[0]] = 0.999
    noisy[1:, :] = noisy[1:, :] + np.where(np.arange(3) == labels[1:, None], -0.005, 0.0025)
    noisy = _fold_runs(tmp_path / "noisy", files, labels, noisy)
    report = compare(reference, noisy, candidate="noisy", expected_files=files, reports_dir=reports)
    assert report["paired_difference"]["better"] is False and report["decision"].startswith(
        "keep the shipped"
    )
    # The same runs against themselves: difference exactly zero, not better.
    same = compare(reference, reference, expected_files=files, reports_dir=reports)["paired_difference"]
    assert same["log_loss"] == 0 and same["better"] is False


def test_compare_refuses_runs_of_different_seeds(tmp_path):
    from covid_xray.weight_averaging import compare

    files, labels, probs = _synthetic(n=20)
    one = _fold_runs(tmp_path / "a", files, labels, probs, seed=1)
    two = _fold_runs(tmp_path / "b", files, labels, probs, seed=2)
    with pytest.raises(ValueError, match="share one seed"):
        compare(one, two, expected_files=files, reports_dir=tmp_path)
