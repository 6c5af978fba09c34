"""Shared fixtures: the real dataset root, quiet TensorFlow, deterministic seeds."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from covid_xray.config import resolve_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    """The real dataset (317 images). Integration tests fail loudly when it is absent."""
    root = resolve_data_dir()
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        pytest.fail(
            f"Dataset not found at {root}. Set COVID_XRAY_DATA to the Covid19-dataset folder "
            "or run `python -m covid_xray.data download`."
        )
    return root
