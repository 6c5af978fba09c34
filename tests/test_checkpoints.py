"""Checkpoints: sidecar JSON with sha256, safe-mode loading, tamper detection."""

import json

import numpy as np
import pytest

from covid_xray.checkpoints import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from covid_xray.models import build_davidnet


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "davidnet.keras"
    model = build_davidnet()
    record = save_checkpoint(model, path, {"preprocessing": "unit", "model": "davidnet"})
    return path, model, record


def test_roundtrip_preserves_predictions(saved):
    path, model, record = saved
    loaded, meta = load_checkpoint(path)
    x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    assert meta["sha256"] == record["sha256"] and meta["preprocessing"] == "unit"
    assert json.loads(path.with_suffix(".json").read_text())["checkpoint"] == "davidnet.keras"


def test_tampered_checkpoint_is_refused(saved, tmp_path):
    path, _, _ = saved
    copy = tmp_path / "davidnet.keras"
    copy.write_bytes(path.read_bytes() + b"tampered")
    copy.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(copy)


def test_missing_checkpoint_says_how_to_train(tmp_path):
    with pytest.raises(CheckpointError, match="python train.py --model chexnet"):
        load_checkpoint(tmp_path / "chexnet.keras")
    assert read_metadata(tmp_path / "chexnet.keras") == {}


def test_checkpoint_has_no_optimizer_state(tmp_path):
    """A compiled model is saved without Adam's slots: the file stays about the size of its weights."""
    import keras

    model = build_davidnet()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    model.train_on_batch(np.zeros((1, 224, 224, 3), np.float32), np.eye(3, dtype=np.float32)[:1])
    path = tmp_path / "davidnet.keras"
    save_checkpoint(model, path, {"preprocessing": "unit"})
    assert path.stat().st_size < 1.2 * 4 * model.count_params()
    loaded, _ = load_checkpoint(path)
    x = np.random.default_rng(2).random((1, 224, 224, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
