"""Saving and loading trained models with their JSON sidecar (config, metrics, sha256).

Models are loaded with Keras safe mode (no arbitrary code from the file) and the file's
sha256 is checked against the one recorded at save time, so a swapped or corrupted
checkpoint is refused with a clear message instead of serving wrong predictions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras

from covid_xray import config
from covid_xray.config import MODELS
from covid_xray.hashing import sha256_file


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match its recorded hash."""


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """`checkpoints/davidnet.keras` -> `checkpoints/davidnet.json`."""
    return Path(checkpoint).with_suffix(".json")


def save_checkpoint(model: keras.Model, path: str | os.PathLike, metadata: dict) -> dict:
    """Save `model` as `.keras` and write the JSON sidecar with `metadata` plus the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Save an uncompiled copy: the optimizer's state (Adam keeps two tensors per weight) would
    # triple the file and is not needed to serve or evaluate the model.
    # (clone_model would copy the compiled state too; a model rebuilt from its config does not.)
    inference_copy = model.__class__.from_config(model.get_config())
    inference_copy.set_weights(model.get_weights())
    inference_copy.save(path)
    record = dict(metadata)
    record["checkpoint"] = path.name
    record["sha256"] = sha256_file(path)
    write_json(sidecar_path(path), record)
    return record


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON sidecar of a checkpoint ({} when there is none)."""
    side = sidecar_path(path)
    if not side.exists():
        return {}
    return json.loads(side.read_text())


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> tuple[keras.Model, dict]:
    """Load a `.keras` checkpoint in safe mode, verifying its sha256 against the sidecar.

    Raises:
        CheckpointError: the file is missing, its hash differs from the recorded one, or
            Keras cannot load it.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint not found: {path}."
            + (
                f" Train and install it with `{config.TRAIN_INSTALL_COMMAND.format(name=path.stem)}`."
                if path.stem in MODELS
                else ""
            )
        )
    metadata = read_metadata(path)
    if verify and metadata.get("sha256"):
        actual = sha256_file(path)
        if actual != metadata["sha256"]:
            raise CheckpointError(
                f"Checkpoint {path.name} does not match its recorded sha256 "
                f"(expected {metadata['sha256'][:12]}..., got {actual[:12]}...). "
                "The file was changed or corrupted; restore it with `git checkout` or retrain."
            )
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types; wrap them into one for callers.
        raise CheckpointError(f"Could not load checkpoint {path}: {exc}") from exc
    return model, metadata


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON with stable key order and a trailing newline (diff-friendly)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
