"""Weight averaging over the last epochs (SWA-style), as a Keras callback (issue #15, item 3a).

`train.py --swa-epochs N` adds `WindowAveraging(N, val_data)` first in each phase's callbacks:
at the end of every epoch the model's weights become the uniform mean of the weights it had at
the end of the phase's last N epochs (fewer at the phase's start), that averaged model is
scored on the validation data, and `val_loss`/`val_accuracy` in the epoch's logs are replaced
by the averaged model's (the raw ones are kept as `raw_val_loss`/`raw_val_accuracy`). The
recipe's selection (best validation loss kept, ReduceLROnPlateau, EarlyStopping) therefore
judges and keeps averaged weights, by the same rule as before. The next epoch trains on from
the raw (not averaged) weights, as SWA does. Same architecture, same parameter count: only the
values of the weights change. DavidNet has no BatchNormalization, so no statistic needs
recomputing after averaging.

Judged by cross-validation before any test image is read: `python -m covid_xray.studies.weight_averaging`.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def mean_weights(snapshots) -> list[np.ndarray]:
    """Element-wise mean of several `model.get_weights()` lists (float64 sum, cast back)."""
    snapshots = list(snapshots)
    if not snapshots:
        raise ValueError("mean_weights needs at least one snapshot of weights.")
    out = []
    for tensors in zip(*snapshots, strict=True):
        total = np.sum([np.asarray(t, dtype=np.float64) for t in tensors], axis=0)
        out.append((total / len(tensors)).astype(np.asarray(tensors[0]).dtype))
    return out


def window_averaging_callback(epochs: int, val_data, batch_size: int | None = None):
    """A `WindowAveraging` callback (built lazily so importing this module does not import Keras).

    Args:
        epochs: window length N (>= 1): how many of the last epochs' weights are averaged.
        val_data: what `model.evaluate` takes as validation data (a tf.data.Dataset, or an
            (x, y) tuple).
        batch_size: passed to `model.evaluate` with array data.
    """
    import keras

    if epochs < 1:
        raise ValueError(f"The averaging window must be at least one epoch, got {epochs}.")

    class WindowAveraging(keras.callbacks.Callback):
        """Replace the model's weights by the mean of the last N epochs' before validation-based callbacks."""

        def __init__(self):
            super().__init__()
            self.epochs = epochs
            self.window: deque = deque(maxlen=epochs)
            self.raw_weights = None
            self.averaged_over: list[int] = []  # epochs (1-based) averaged at the latest epoch end

        def on_train_begin(self, logs=None):
            self.window.clear()
            self._epoch_ids: deque = deque(maxlen=epochs)

        def on_epoch_begin(self, epoch, logs=None):
            if self.raw_weights is not None:  # train on from the raw trajectory, not the average
                self.model.set_weights(self.raw_weights)
                self.raw_weights = None

        def on_epoch_end(self, epoch, logs=None):
            self.raw_weights = self.model.get_weights()
            self.window.append(self.raw_weights)
            self._epoch_ids.append(epoch + 1)
            self.averaged_over = list(self._epoch_ids)
            self.model.set_weights(mean_weights(self.window))
            if logs is not None and val_data is not None:
                if isinstance(val_data, tuple):
                    scores = self.model.evaluate(
                        *val_data, batch_size=batch_size, verbose=0, return_dict=True
                    )
                else:
                    scores = self.model.evaluate(val_data, verbose=0, return_dict=True)
                for key in ("loss", "accuracy"):
                    if key in scores:
                        if f"val_{key}" in logs:
                            logs[f"raw_val_{key}"] = logs[f"val_{key}"]
                        logs[f"val_{key}"] = float(scores[key])

        def on_train_end(self, logs=None):
            self.raw_weights = None  # the phase ends on averaged weights (KeepBestWeights may replace them)

    return WindowAveraging()


# ---------------------------------------------------------------------------
# Cross-validated comparison of two recipes (issue #15, item 3).
# ---------------------------------------------------------------------------
