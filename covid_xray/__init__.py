"""covid-xray: explainable chest X-ray classification (Normal / Viral Pneumonia / COVID-19).

Importing the package first quiets TensorFlow on machines without an NVIDIA GPU (see
`quiet_tensorflow`), so the app, train.py and the CLIs start with a clean log.
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

from covid_xray.config import CLASS_NAMES, IMAGE_SIZE, MODELS

__all__ = ["CLASS_NAMES", "IMAGE_SIZE", "MODELS", "has_nvidia_device", "quiet_tensorflow"]
__version__ = "0.1.0"

# Device nodes of an NVIDIA driver (Linux) or of a GPU passed into WSL2.
_GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/dxg")
# What TensorFlow's C++ side prints while it loads, before its logging is set up ("All log
# messages before absl::InitializeLog() ...", then INFO lines such as "oneDNN custom operations
# are on" or "Could not find cuda drivers"): TF_CPP_MIN_LOG_LEVEL does not reach these.
_PRE_INIT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+\s+\d+ \S+:\d+\] .*)$"
)


def has_nvidia_device() -> bool:
    """True when this machine may have an NVIDIA GPU: a driver device node, or CUDA_VISIBLE_DEVICES
    naming devices (-1 or empty hides them all, as `quiet_tensorflow` does on CPU machines)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (visible is not None and visible.strip() not in ("", "-1")) or any(
        glob.glob(p) for p in _GPU_DEVICE_GLOBS
    )


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's package import with the process's stderr captured, then replays all but
    the pre-initialisation INFO lines (anything else, warnings and errors included, is kept)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        spec = module.__spec__
        spec.loader = module.__loader__ = self._loader  # the real loader from here on
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to quiet
            return self._loader.exec_module(module)
        with tempfile.TemporaryFile(mode="w+b") as captured:
            sys.stderr.flush()
            os.dup2(captured.fileno(), 2)
            try:
                self._loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                text = captured.read().decode("utf-8", "replace")
                kept = [line for line in text.splitlines() if not _PRE_INIT_NOISE.match(line)]
                if kept:
                    sys.stderr.write("\n".join(kept) + "\n")
                    sys.stderr.flush()


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds the `tensorflow` package once and hands its import to `_QuietLoader`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up log to what matters; call before TensorFlow is imported.

    Without an NVIDIA device (`has_nvidia_device`), CUDA is hidden (CUDA_VISIBLE_DEVICES=-1) and
    TensorFlow's C++ log shows fatal messages only, so a CPU machine does not print
    "failed call to cuInit ... UNKNOWN ERROR (303)". With one, only INFO and WARNING are hidden
    (TF_CPP_MIN_LOG_LEVEL=2): a real GPU is never hidden and its errors still show. Values already
    in the environment win. Unless TF_CPP_MIN_LOG_LEVEL is 0, the INFO lines TensorFlow prints
    while loading are dropped too.
    """
    if has_nvidia_device():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    else:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet_load = os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0"
    if quiet_load and "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


quiet_tensorflow()
