"""Command-line prediction: `python -m covid_xray.predict IMAGE|FOLDER ... [--json] [--heatmap-dir D]`.

Prints each model's prediction and probabilities for every file (JSON with `--json`, the same
shape as the app's `predict` API); a folder stands for the image files in it and its subfolders
(sorted). A file that is not a usable image gets a one-line message and the exit status is 1;
the other files are still processed. Models load once; without `--heatmap-dir` each image costs
one forward pass per model (no gradients). A few images run eagerly, more through the compiled
functions (`EAGER_MAX_IMAGES`); two images are in flight at once (`Predictor.predict_many`,
`--workers`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Optional libraries that Keras 3 imports at its own import time when they are installed, for
# features this command never uses (scikit-learn wrappers, matplotlib image galleries, pandas
# data adapters): about 1.5 s of the command's start-up. Keras treats each as absent on
# ImportError; they import normally once Keras is in (a heatmap's colours need matplotlib).
KERAS_OPTIONAL_MODULES = ("sklearn", "matplotlib", "pandas")

# Up to this many images the command runs TensorFlow eagerly: tracing the compiled functions costs
# seconds (CheXNet's forward pass: ~1.8 s, against ~0.5 s for its first eager call), which only
# pays back after about five images (eager: ~0.35 s per CheXNet pass, compiled ~0.055 s). Same
# kernels either way: the outputs are the same (tests/test_predict.py compares them).
EAGER_MAX_IMAGES = 4

# What a folder argument stands for: files with these suffixes (any case), hidden files left out.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm", ".dicom", ".dic"}
)


def expand_inputs(names: list[str]) -> list[str]:
    """Each argument as given, except that a folder becomes its image files (recursively, sorted)."""
    out = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = (
                p
                for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            out += sorted(str(p) for p in found)
        else:
            out.append(name)
    return out


@contextlib.contextmanager
def hidden_modules(names: tuple[str, ...]):
    """Within the block, importing any of `names` (not imported yet) raises ImportError."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # the import system's "not importable" marker
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify chest X-rays with DavidNet and CheXNet.")
    parser.add_argument(
        "images", nargs="+", help="image files (JPEG, PNG, BMP, TIFF, WebP, GIF or DICOM) or folders of them"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--heatmap-dir", default=None, help="also save Grad-CAM overlays (PNG) here")
    parser.add_argument(
        "--checkpoint-dir", default=None, help="default: $COVID_XRAY_CHECKPOINT_DIR, else checkpoints/"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="images in flight at once (default 2: each still runs alone through the models, same results)",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    with hidden_modules(KERAS_OPTIONAL_MODULES):
        import keras  # noqa: F401 - imported here so that Keras leaves them out

    inputs = expand_inputs(args.images)
    with running_eagerly(len(inputs) <= EAGER_MAX_IMAGES):
        return _predict_all(args, inputs)


@contextlib.contextmanager
def running_eagerly(eager: bool):
    """Within the block, TensorFlow's compiled functions run eagerly when `eager` is true; the
    process-wide setting is restored afterwards (main() may run inside another program)."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(eager or before)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


def _predict_all(args, inputs: list[str]) -> int:
    """Print every input's prediction (the API's JSON with --json); 1 when any input was refused."""
    from covid_xray.inference import PREDICT_WORKERS, Predictor

    predictor = Predictor.from_checkpoints(args.checkpoint_dir, warm_up=False)
    method = "gradcam" if args.heatmap_dir else None
    workers = PREDICT_WORKERS if args.workers is None else args.workers
    status = 0
    for name, result, exc in predictor.predict_many(inputs, method=method, workers=workers):
        if exc is not None:
            status = 1
            message, reason = _input_error(name, exc)
            if args.json:
                print(json.dumps({"file": name, "error": message, "reason": reason}))
            else:
                print(f"{name}: error: {message}")
            continue
        payload = result.to_api_json()
        if args.json:
            print(json.dumps({"file": name, **payload}))
        else:
            from covid_xray.config import MODELS

            parts = []
            for model, out in ((m, payload[m]) for m in MODELS):
                if out.get("available"):
                    probs = ", ".join(f"{c} {p:.3f}" for c, p in out["probabilities"].items())
                    parts.append(f"{model}: {out['prediction']} ({probs})")
                else:
                    parts.append(f"{model}: unavailable")
            check = payload.get("input_check") or {}
            if check and not check.get("is_xray_likely", True):
                warnings = " ".join(check.get("warnings", []))
                parts.append(f"WARNING: may not be a frontal chest X-ray: {warnings}")
            print(f"{name}: " + "; ".join(parts))
        if args.heatmap_dir:
            from PIL import Image

            out_dir = Path(args.heatmap_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            for model, prediction in result.models.items():
                if prediction.overlay is not None:
                    Image.fromarray(prediction.overlay).save(out_dir / f"{Path(name).stem}_{model}.png")
    return status


def _input_error(name: str, exc: Exception) -> tuple[str, str]:
    """(message for people, reason) for an input `predict` refused: an image decoder error or a
    file that cannot be read."""
    from covid_xray.imaging import ImageDecodeError

    if isinstance(exc, ImageDecodeError):
        return str(exc), exc.reason
    if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
        return f"No such file: {name}", "not_found"
    return f"Cannot read {name}: {exc.strerror or exc}", "unreadable"


if __name__ == "__main__":
    sys.exit(main())
