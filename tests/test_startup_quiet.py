"""Start-up noise: on a machine without an NVIDIA GPU, importing the package, then TensorFlow,
prints no CUDA errors and no loader INFO lines; a real GPU is never hidden."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import covid_xray
from covid_xray.config import PROJECT_ROOT

pytestmark = pytest.mark.skipif(
    covid_xray.has_nvidia_device(), reason="this machine has (or names) an NVIDIA GPU"
)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    # A visitor's environment: nothing set by the test suite.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _noise(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "cuInit" in line
        or "CUDA" in line
        or "cuda" in line
        or line.startswith(("E0000", "I0000", "W0000"))
        or "absl::InitializeLog" in line
    ]


def test_tensorflow_starts_quietly_on_a_cpu_machine():
    code = (
        "import covid_xray, sys\n"
        "import tensorflow as tf\n"
        "print(tf.config.list_physical_devices('GPU'), float(tf.reduce_sum(tf.ones(3))))\n"
        "print('still here', file=sys.stderr)\n"
    )
    result = _run(["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] 3.0"
    assert _noise(result.stderr) == [], result.stderr
    assert result.stderr.strip() == "still here"  # stderr itself still works after the import


def test_train_cli_error_is_all_that_is_printed(tmp_path):
    """train.py builds devices (where cuInit used to complain) before it fails on the dataset."""
    result = _run(["train.py", "--data-dir", str(tmp_path / "none"), "--run-dir", str(tmp_path / "run")])
    assert result.returncode == 2
    assert _noise(result.stderr) == [], result.stderr
    assert result.stderr.startswith(f"error: Dataset folder {tmp_path / 'none'} does not exist.")


def test_the_noise_check_sees_the_old_lines():
    old = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "E0000 00:00:1796194768.747396    5258 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
        "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
    )
    assert len(_noise(old)) == 2


def test_a_gpu_machine_keeps_its_gpu(monkeypatch):
    """With a driver device node, CUDA stays visible and errors keep showing (level 2 hides INFO/WARNING)."""
    import glob

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0"] if pattern == "/dev/nvidia*" else [])
    covid_xray.quiet_tensorflow()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    covid_xray.quiet_tensorflow()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "-1" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    # A user's own setting wins.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    covid_xray.quiet_tensorflow()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
