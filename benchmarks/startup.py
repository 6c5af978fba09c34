#!/usr/bin/env python
"""Where `python app.py`'s start-up time goes, phase by phase (prints seconds; asserts nothing).

    python benchmarks/startup.py

Mirrors `app.create_app()` with both models (the committed DavidNet; CheXNet from a synthetic
Keras-2 weights file when no trained checkpoint exists: same graph, same cost), in one fresh
process: imports, per-model checkpoint load and warm-up trace, UI build, launch, first request.
Run it on an idle machine; the first run after boot also pays for a cold disk cache.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
START = time.perf_counter()
PHASES: list[float] = []


def mark(label: str, since: float) -> float:
    """Print and record the seconds since `since`; return now."""
    now = time.perf_counter()
    PHASES.append(now - since)
    print(f"{now - since:7.2f} s  {label}", flush=True)
    return now


def main() -> int:
    t = START
    import gradio  # noqa: F401

    t = mark("import gradio", t)
    import tensorflow  # noqa: F401

    t = mark("import tensorflow", t)
    import bench  # the benchmark's checkpoint preparation (not part of the app's start-up)

    with tempfile.TemporaryDirectory() as work:
        folders, provenance = bench.prepare_checkpoints(Path(work))
        t = time.perf_counter()
        import app
        from covid_xray import config
        from covid_xray.inference import WARM_UP_METHODS, Predictor, configure_cpu_threads, load_model

        t = mark("import app and covid_xray", t)
        configure_cpu_threads(intra_op=2, inter_op=1)
        loaded = {}
        for name in config.MODELS:
            loaded[name] = load_model(name, folders["both"])
            t = mark(f"load {name} checkpoint ({provenance[name]})", t)
            loaded[name].explainer.warm_up(WARM_UP_METHODS)
            t = mark(f"trace + first run of {name}", t)
        predictor = Predictor(loaded, {})
        from covid_xray.runtime import AppRuntime

        demo = app.build_demo(AppRuntime.serving(predictor))
        t = mark("build the UI", t)
        demo.queue()
        demo.launch(prevent_thread_lock=True, run_history=False, quiet=True)
        t = mark("launch the server", t)
        predictor.predict(str(bench.test_images(None)[0]), method="gradcam")
        mark("first request (both models + Grad-CAM)", t)
        demo.close()
    print(f"{sum(PHASES):7.2f} s  total (process start to first answer, checkpoint preparation excluded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
