#!/usr/bin/env python
"""Benchmark what users and maintainers wait for, on this machine, and print one table.

    python benchmarks/bench.py                   # full run (well under 10 min on 2 vCPUs)
    python benchmarks/bench.py --quick           # smoke run: few repeats, same rows
    python benchmarks/bench.py --json bench.json # also save every number

Measured in one process run, under the app's thread settings (2 intra-op threads, 1 inter-op):
- request latency (p50/p95 after warm-up) of `Predictor.predict` end to end: decode, resize,
  normalise, model(s), heatmap, overlay. DavidNet only, CheXNet only, both; Grad-CAM,
  Grad-CAM++, Score-CAM, and probabilities only (the API's path);
- the naive way (a tf-keras-vis `Gradcam` built per request with `clone=True`, eager
  `model.predict`) on the same images, same decoding and overlay, and the speed-up;
- `python app.py`: seconds from process start until the page answers HTTP, until DavidNet and
  then both models answer the /predict API (the app loads them in the background), latency
  through the HTTP API on loopback (plain HTTP requests as the API page's curl commands send
  them, and through `gradio_client`, whose 50 ms polling loops add their own wait), peak RSS
  after warm-up and after 200 requests;
- evaluation throughput (images/s from the original files: decode + predict); training seconds
  per epoch (DavidNet through the project's pipeline and callbacks, against a plain in-memory
  `model.fit` of the same model, batch and augmentation, in alternating rounds; CheXNet's head on
  cached features) and CheXNet feature extraction by batch size;
- fresh processes: `import gradio`, `import tensorflow` (the libraries' own costs), `import app`
  (checked to import no TensorFlow), `python -m covid_xray.predict` on one image and on the
  test split as one folder.

Checkpoints: the committed `checkpoints/<model>.keras` when present; otherwise DavidNet gets
random weights and CheXNet is built from a synthetic Keras-2 weights file (same graph, same
cost: timings do not depend on weight values), which the table says. Inputs are the real
test images (`$COVID_XRAY_DATA`). Nothing is written outside a temporary folder (and `--json`).

Timings depend on what else runs: the table reports the load average before and after; run
it on an idle machine for numbers worth publishing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402

from covid_xray import config  # noqa: E402
from tests.appserver import AppServer  # noqa: E402

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
# The app's thread settings on a 2-vCPU Space (app.create_app).
INTRA_OP_THREADS = 2
INTER_OP_THREADS = 1
# Timed requests (after WARM_UP requests) per measurement: full run / --quick.
REPEATS = {
    "latency": (60, 10),
    "latency_secondary": (30, 6),  # Grad-CAM++, probabilities only, OOD check
    "scorecam": (5, 2),
    "predict_many": (None, 8),  # images per list (None: the whole test split), per worker count
    "naive": (5, 2),
    "naive_reused": (3, 1),
    "http": (30, 8),
    "http_single_model": (15, 4),  # servers with DavidNet only / CheXNet only
    "http_total": (200, 30),  # requests before the "after N requests" RSS reading
    "epochs": (2, 1),  # per training phase, after one untimed epoch (tracing)
    "train_rounds": (2, 1),  # DavidNet: alternating rounds of `epochs` epochs, pipeline vs reference
    "commands": (3, 1),  # fresh processes per command row
    "evaluate_files": (None, 16),  # None: the whole test split
}
WARM_UP = 2
# Requests cycle through the test images: more distinct images than the Predictor's
# explanation cache holds, so no timed request is served from that cache.
SERVER_START_TIMEOUT_S = 300
# elem_id of the Diagnose tab's file upload (app.py): its upload event is timed over HTTP.
UPLOAD_ELEM_ID = "upload"
# Seconds between two /predict calls while the app loads its models (time to "model answers").
MODEL_POLL_S = 0.1
# Those calls send a PROBE_SIDE x PROBE_SIDE copy of a test image: a full-size one costs the server
# ~150 ms of CPU per call even before any model is loaded (Gradio's upload, decode, input check),
# which slowed the very loading being timed.
PROBE_SIDE = 64
# The folder rate of `python -m covid_xray.predict` counts the answers after this many.
FOLDER_SKIP_LINES = 6
# After the models answer, the app keeps working in the background (the training-film index, the
# what-if probe's tracing; on a Space's first start the provisioning too). The request rows are
# timed once the server is idle: under IDLE_CPU_SHARE of one core over IDLE_WINDOW_S (an idle
# Gradio server polls its queue: ~7% of a core), waiting at most IDLE_TIMEOUT_S.
IDLE_WINDOW_S = 2.0
IDLE_CPU_SHARE = 0.2
IDLE_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120
ALPHA = 0.4
# `Predictor.predict_many`: worker counts timed side by side (the command line uses PREDICT_WORKERS).
PREDICT_MANY_WORKERS = (1, 2, 4)
# CheXNet feature extraction: batch sizes timed side by side.
FEATURE_BATCH_SIZES = (16, 32, 64)
SYNTHETIC_NOTE = "synthetic weights (same graph, same cost)"

# Targets on 2 CPU cores (the issue "Performance: benchmark script and a fast inference path").
MAX_RSS_MB = 1536


@dataclass(frozen=True)
class RowSpec:
    key: str
    section: str
    label: str
    target: str = ""


# Table sections.
STARTUP = "start-up (in process)"
PREDICT = "predict, end to end (in process): decode, models, heatmaps, overlays"
NAIVE = "naive reference: tf-keras-vis Gradcam built per request (clone=True), eager model.predict"
HTTP = "app over HTTP: python app.py on loopback"
OFFLINE = "evaluation and training"
COMMANDS = "fresh processes: imports and the command line (median of several runs)"
# Every row the table prints, in order (the smoke test checks that all of them appear).
ROWS: tuple[RowSpec, ...] = (
    RowSpec("startup_davidnet_load", STARTUP, "DavidNet: load checkpoint"),
    RowSpec("startup_davidnet_trace", STARTUP, "DavidNet: forward pass, trace + first run"),
    RowSpec("startup_davidnet_gradcam_trace", STARTUP, "DavidNet: Grad-CAM, trace + first run"),
    RowSpec("startup_chexnet_load", STARTUP, "CheXNet: load checkpoint"),
    RowSpec("startup_chexnet_trace", STARTUP, "CheXNet: forward pass, trace + first run"),
    RowSpec("startup_chexnet_gradcam_trace", STARTUP, "CheXNet: Grad-CAM, trace + first run"),
    RowSpec("startup_scorecam_davidnet", STARTUP, "DavidNet Score-CAM: first use"),
    RowSpec("startup_scorecam_chexnet", STARTUP, "CheXNet Score-CAM: first use"),
    RowSpec("davidnet_gradcam", PREDICT, "DavidNet + Grad-CAM", "p50 <= 40 ms"),
    RowSpec("chexnet_gradcam", PREDICT, "CheXNet + Grad-CAM"),
    RowSpec("both_gradcam", PREDICT, "both + Grad-CAM", "p50 <= 150 ms"),
    RowSpec("both_gradcam++", PREDICT, "both + Grad-CAM++", "<= 2x Grad-CAM"),
    RowSpec("both_none", PREDICT, "both, probabilities only (API path)", "p50 <= 75 ms"),
    RowSpec("input_check", PREDICT, "of which: OOD input check"),  # features from the explainer pass
    RowSpec("both_none_many", PREDICT, "both, probabilities only, a list (predict_many) by workers"),
    RowSpec("davidnet_scorecam", PREDICT, "DavidNet + Score-CAM", "p50 < 1 s"),
    RowSpec("chexnet_scorecam", PREDICT, "CheXNet + Score-CAM", "p50 < 1 s"),
    RowSpec("naive_davidnet", NAIVE, "DavidNet + Grad-CAM"),
    RowSpec("naive_chexnet", NAIVE, "CheXNet + Grad-CAM"),
    RowSpec("naive_both", NAIVE, "both + Grad-CAM"),
    RowSpec("naive_reused_chexnet", NAIVE, "CheXNet, Gradcam object reused"),
    RowSpec("speedup_both", NAIVE, "speed-up, both + Grad-CAM", ">= 6x"),
    RowSpec("page_up", HTTP, "python app.py until the page answers", "<= 5 s"),
    RowSpec("davidnet_answers", HTTP, "until DavidNet answers /predict", "<= 12 s"),
    RowSpec("cold_start", HTTP, "until both models answer", "<= 15 s"),
    RowSpec("server_idle", HTTP, "until its background work is done (server idle)"),
    RowSpec("http_both_gradcam", HTTP, "both + Grad-CAM (upload event)", "p50 <= 300 ms"),
    RowSpec("http_both_api", HTTP, "both, /predict API (plain HTTP, the API page's curl)", "p50 <= 200 ms"),
    RowSpec("http_both_api_client", HTTP, "both, /predict API through gradio_client (polls every 50 ms)"),
    RowSpec("http_davidnet_gradcam", HTTP, "DavidNet only + Grad-CAM"),
    RowSpec("http_chexnet_gradcam", HTTP, "CheXNet only + Grad-CAM"),
    RowSpec("rss_warm", HTTP, "peak RSS after warm-up", "<= 1.5 GB"),
    RowSpec("rss_after", HTTP, "peak RSS after N requests", "<= 1.5 GB"),
    RowSpec("evaluate_decode", OFFLINE, "decode + resize, test files"),
    RowSpec("evaluate_davidnet", OFFLINE, "evaluate DavidNet from files", ">= 30 images/s"),
    RowSpec("evaluate_chexnet", OFFLINE, "evaluate CheXNet from files"),
    RowSpec("train_davidnet_plain", OFFLINE, "train DavidNet, plain epoch", "<= 1.2x reference"),
    RowSpec("train_davidnet_plain_reference", OFFLINE, "  reference: in-memory model.fit, no callbacks"),
    RowSpec("train_davidnet_augmented", OFFLINE, "train DavidNet, augmented epoch", "<= 1.2x reference"),
    RowSpec("train_davidnet_augmented_reference", OFFLINE, "  reference: in-memory fit, augmenter in model"),
    RowSpec("chexnet_features", OFFLINE, "CheXNet feature extraction", ">= 15 images/s"),
    RowSpec("chexnet_features_batches", OFFLINE, "  by batch size (steady state)"),
    RowSpec("train_chexnet_head_plain", OFFLINE, "train CheXNet head (cached features)"),
    RowSpec("train_chexnet_head_augmented", OFFLINE, "train CheXNet head, 4 views"),
    RowSpec("import_gradio", COMMANDS, "python -c 'import gradio' (Gradio's own)"),
    RowSpec("import_tensorflow", COMMANDS, "python -c 'import tensorflow' (TF's own)"),
    RowSpec("import_app", COMMANDS, "python -c 'import app' (no TensorFlow)"),
    RowSpec("predict_one", COMMANDS, "python -m covid_xray.predict one.jpeg", "<= 8 s"),
    RowSpec("predict_folder", COMMANDS, "python -m covid_xray.predict FOLDER", ">= 20 images/s"),
)
ROW_KEYS = {row.key for row in ROWS}


class BenchmarkError(RuntimeError):
    """The benchmark cannot run (no dataset, the app did not start, ...)."""


# ---------------------------------------------------------------------------
# Recording.
# ---------------------------------------------------------------------------
class Results:
    """Every number measured (for --json) and one display value per table row."""

    def __init__(self) -> None:
        self.numbers: dict[str, object] = {}
        self.cells: dict[str, tuple[str, bool | None]] = {}
        self.notes: list[str] = []

    def set(self, key: str, text: str, met: bool | None = None, **numbers) -> None:
        if key not in ROW_KEYS:
            raise KeyError(f"Unknown table row {key!r}.")
        self.cells[key] = (text, met)
        if numbers:
            self.numbers[key] = numbers

    def skip(self, key: str, why: str) -> None:
        self.set(key, f"skipped ({why})")

    def latency(
        self,
        key: str,
        seconds: list[float],
        *,
        cpu_seconds: list[float] | None = None,
        server_cpu_ms: float | None = None,
        client_cpu_ms: float | None = None,
        max_p50_ms: float | None = None,
    ) -> dict:
        """A latency row: p50 and p95 of wall time; with `cpu_seconds`, the p50 of process CPU time.

        CPU time counts both TensorFlow threads: on an idle 2-core machine wall time lies between
        half of it and all of it; wall close to CPU on a busy machine means the threads queued.
        `server_cpu_ms`, `client_cpu_ms`: mean CPU time per request of the app process and of
        the client (HTTP rows): the client shares the machine's cores with the server.
        """
        stats = latency_stats(seconds)
        met = None if max_p50_ms is None else stats["p50_ms"] <= max_p50_ms
        text = f"p50 {fmt_ms(stats['p50_ms'])}  p95 {fmt_ms(stats['p95_ms'])}"
        if cpu_seconds:
            stats["cpu_p50_ms"] = float(np.percentile(np.asarray(cpu_seconds) * 1000.0, 50))
            text += f"  cpu {fmt_ms(stats['cpu_p50_ms'])}"
        if server_cpu_ms is not None:
            stats["server_cpu_mean_ms"] = server_cpu_ms
            text += f"  server cpu {fmt_ms(server_cpu_ms)}"
        if client_cpu_ms is not None:
            stats["client_cpu_mean_ms"] = client_cpu_ms
            text += f"  client cpu {fmt_ms(client_cpu_ms)}"
        self.set(key, f"{text}  (n={stats['n']})", met, **stats)
        return stats


def latency_stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds, np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "n": int(ms.size),
    }


def fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def timed_cpu(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - start, time.process_time() - cpu


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------------------
# Set-up: checkpoints and images.
# ---------------------------------------------------------------------------
def prepare_checkpoints(work: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Folders `both/`, `davidnet/`, `chexnet/` of checkpoints, and where each model came from."""
    import keras

    from covid_xray.checkpoints import save_checkpoint
    from covid_xray.models import build_chexnet, build_davidnet

    source = work / "models"
    source.mkdir()
    provenance = {}
    for name in config.MODELS:
        committed = config.MODELS[name].checkpoint_path(config.CHECKPOINT_DIR)
        target = config.MODELS[name].checkpoint_path(source)
        if committed.exists() and committed.with_suffix(".json").exists():
            # The checkpoint, its sidecar and the files made for it (e.g. ood_<model>.json).
            for path in {committed, committed.with_suffix(".json"), *committed.parent.glob(f"*_{name}.*")}:
                shutil.copyfile(path, source / path.name)
            provenance[name] = f"committed checkpoint ({committed.relative_to(config.PROJECT_ROOT)})"
            continue
        keras.utils.set_random_seed(0)
        mode = config.MODELS[name].preprocessing_for("default")
        if name == "chexnet":
            from tests.chexnet_fixtures import write_keras2_chexnet_weights

            weights = work / "chexnet_base_synthetic.h5"
            write_keras2_chexnet_weights(weights, seed=0)
            model = build_chexnet(weights=weights)
            provenance[name] = SYNTHETIC_NOTE
        else:
            model = build_davidnet()
            provenance[name] = "random weights (same graph, same cost)"
        save_checkpoint(model, target, {"preprocessing": mode, "model": name, "benchmark": provenance[name]})
        keras.backend.clear_session()
    folders = {}
    for subset in ("both", *config.MODELS):
        folder = work / f"checkpoints_{subset}"
        folder.mkdir()
        for name in config.MODELS if subset == "both" else (subset,):
            for path in (*source.glob(f"{name}.*"), *source.glob(f"*_{name}.*")):
                (folder / path.name).symlink_to(path)
        folders[subset] = folder
    return folders, provenance


def test_images(data_dir) -> list[Path]:
    from covid_xray import data

    try:
        samples = data.list_samples(data_dir, split="test")
    except data.DatasetNotFoundError as exc:
        raise BenchmarkError(str(exc)) from exc
    return [s.path for s in samples]


class ImageCycle:
    """Hands out the test images in order, round and round (period > the explanation cache)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.index = 0

    def next(self) -> Path:
        path = self.paths[self.index % len(self.paths)]
        self.index += 1
        return path


# ---------------------------------------------------------------------------
# In-process serving path.
# ---------------------------------------------------------------------------
def measure_predict(predictor_factory, images: ImageCycle, method, repeats: int) -> dict[str, list[float]]:
    """Wall and CPU seconds of `Predictor.predict` (fresh predictor: empty cache; distinct images)."""
    predictor = predictor_factory()
    for _ in range(WARM_UP):
        predictor.predict(images.next(), method=method, alpha=ALPHA)
    runs = [timed_cpu(predictor.predict, images.next(), method=method, alpha=ALPHA) for _ in range(repeats)]
    return {"seconds": [wall for wall, _ in runs], "cpu_seconds": [cpu for _, cpu in runs]}


def measure_predict_many(results: Results, predictor_factory, images: ImageCycle, count: int | None) -> None:
    """Images/s of `Predictor.predict_many` (probabilities only, what the command line runs) with
    1, 2 and 4 workers, each on a fresh predictor (empty cache) over the same images."""
    if not hasattr(predictor_factory(), "predict_many"):
        results.set("both_none_many", "none in this version")
        return
    paths = images.paths[:count]
    rates = {}
    for workers in PREDICT_MANY_WORKERS:
        predictor = predictor_factory()
        list(predictor.predict_many(images.paths[-WARM_UP:], method=None, workers=workers))
        seconds, answers = timed(list, predictor.predict_many(paths, method=None, workers=workers))
        if any(error is not None for _, _, error in answers):
            raise BenchmarkError("predict_many refused a test image")
        rates[workers] = len(paths) / seconds
    text = ", ".join(f"{w}: {r:.1f}/s" for w, r in rates.items())
    results.set("both_none_many", f"{text} ({len(paths)} images)", images_per_s=rates)


def measure_input_check(results: Results, predictor, images: ImageCycle, repeats: int) -> None:
    """The share of a request spent on "is this a chest X-ray?" (the OOD guard), when there is one."""
    from covid_xray import preprocessing
    from covid_xray.inference import decode_source

    check = getattr(predictor, "check_input", None)
    if check is None:
        results.set("input_check", "none in this version")
        return
    inputs = [decode_source(images.next()) for _ in range(WARM_UP + repeats)]
    inputs = [(rgb, preprocessing.resize_for_model(rgb)) for rgb in inputs]
    guard = getattr(predictor, "input_guard", None)
    # As in a request: the learned check's features come from the explainer's forward pass (already
    # paid for in the model's share), so only the guard's own work is timed here.
    features = []
    for _, model_input in inputs:
        known = {}
        if guard is not None and predictor.loaded[guard.model_name].explainer.feature_layer:
            loaded = predictor.loaded[guard.model_name]
            x = preprocessing.normalize(model_input, loaded.preprocessing)
            known[guard.model_name] = loaded.explainer.analyse(x, None)[2]
        features.append(known)
    for (rgb, model_input), known in zip(inputs[:WARM_UP], features, strict=False):
        check(rgb, model_input, known)
    runs = [
        timed_cpu(check, rgb, model_input, known)
        for (rgb, model_input), known in zip(inputs[WARM_UP:], features[WARM_UP:], strict=True)
    ]
    results.latency("input_check", [wall for wall, _ in runs], cpu_seconds=[cpu for _, cpu in runs])


def bench_serving(results: Results, folders: dict[str, Path], images: ImageCycle, quick: bool) -> dict:
    from covid_xray.inference import WARM_UP_METHODS, Predictor, load_model

    pick = 1 if quick else 0
    loaded = {}
    for name in config.MODELS:
        seconds, loaded[name] = timed(load_model, name, folders["both"])
        results.set(f"startup_{name}_load", f"{seconds:.2f} s", seconds=seconds)
        # As `Predictor.load` does: the forward pass (the model serves from then on), then Grad-CAM.
        seconds, _ = timed(loaded[name].explainer.warm_up, ())
        results.set(f"startup_{name}_trace", f"{seconds:.2f} s", seconds=seconds)
        seconds, _ = timed(loaded[name].explainer.warm_up, WARM_UP_METHODS)
        results.set(f"startup_{name}_gradcam_trace", f"{seconds:.2f} s", seconds=seconds)

    def factory(*names):
        missing = {n: "left out of this measurement" for n in config.MODELS if n not in names}
        return lambda: Predictor({n: loaded[n] for n in names}, missing)

    both = tuple(config.MODELS)
    n = REPEATS["latency"][pick]
    results.latency(
        "davidnet_gradcam", **measure_predict(factory("davidnet"), images, "gradcam", n), max_p50_ms=40
    )
    results.latency("chexnet_gradcam", **measure_predict(factory("chexnet"), images, "gradcam", n))
    ours = results.latency(
        "both_gradcam", **measure_predict(factory(*both), images, "gradcam", n), max_p50_ms=150
    )
    n = REPEATS["latency_secondary"][pick]
    plus = results.latency("both_gradcam++", **measure_predict(factory(*both), images, "gradcam++", n))
    ratio = plus["p50_ms"] / ours["p50_ms"]
    text, met = results.cells["both_gradcam++"]
    results.set(
        "both_gradcam++", f"{text}  = {ratio:.2f}x Grad-CAM", ratio <= 2.0, **plus, ratio_to_gradcam=ratio
    )
    results.latency("both_none", **measure_predict(factory(*both), images, None, n), max_p50_ms=75)
    measure_input_check(results, factory(*both)(), images, n)
    measure_predict_many(results, factory(*both), images, REPEATS["predict_many"][pick])

    for name in config.MODELS:
        # The first Score-CAM request traces its compiled function (not done at start-up).
        seconds, _ = timed(factory(name)().predict, images.next(), method="scorecam", alpha=ALPHA)
        results.set(f"startup_scorecam_{name}", f"{seconds:.2f} s", seconds=seconds)
        latencies = measure_predict(factory(name), images, "scorecam", REPEATS["scorecam"][pick])
        results.latency(f"{name}_scorecam", **latencies, max_p50_ms=1000)
    return {"loaded": loaded, "ours_both_p50_ms": ours["p50_ms"]}


# ---------------------------------------------------------------------------
# The naive reference: tf-keras-vis per request, eager model.predict.
# ---------------------------------------------------------------------------
def naive_request(path, models: dict, reuse: dict | None = None) -> dict[str, float]:
    """One request the naive way; returns the seconds spent per model (decode/overlay shared)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from covid_xray import preprocessing
    from covid_xray.explain import render_overlay
    from covid_xray.inference import decode_source, display_image

    rgb = decode_source(path)
    shown = display_image(rgb)
    model_input = preprocessing.resize_for_model(rgb)
    spent = {}
    for name, (model, mode) in models.items():
        start = time.perf_counter()
        x = preprocessing.normalize(model_input, mode)[None]
        probs = model.predict(x, verbose=0)[0]
        if reuse is not None:
            gradcam = reuse[name]
        else:
            # Score the logit, not the softmax output: the clone gets a linear last activation.
            gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
        cam = gradcam(
            CategoricalScore(int(np.argmax(probs))),
            x,
            penultimate_layer=config.MODELS[name].gradcam_layer,
            seek_penultimate_conv_layer=False,
        )[0]
        render_overlay(shown, cam, alpha=ALPHA)
        spent[name] = time.perf_counter() - start
    return spent


def bench_naive(
    results: Results, loaded: dict, images: ImageCycle, ours_both_p50_ms: float, quick: bool
) -> None:
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    models = {name: (lm.explainer.model, lm.preprocessing) for name, lm in loaded.items()}
    repeats = REPEATS["naive"][1 if quick else 0]
    naive_request(images.next(), models)  # first eager calls: not timed, as for our path
    per_model: dict[str, list[float]] = {name: [] for name in models}
    totals, cpu = [], []
    for _ in range(repeats):
        start_cpu = time.process_time()
        seconds, spent = timed(naive_request, images.next(), models)
        totals.append(seconds)
        cpu.append(time.process_time() - start_cpu)
        for name, value in spent.items():
            per_model[name].append(value)
    results.latency("naive_davidnet", per_model["davidnet"])
    results.latency("naive_chexnet", per_model["chexnet"])
    naive = results.latency("naive_both", totals, cpu_seconds=cpu)
    speedup = naive["p50_ms"] / ours_both_p50_ms
    results.set("speedup_both", f"{speedup:.1f}x", speedup >= 6.0, speedup=speedup)

    chexnet = {"chexnet": models["chexnet"]}
    reuse = {"chexnet": Gradcam(models["chexnet"][0], model_modifier=ReplaceToLinear(), clone=True)}
    naive_request(images.next(), chexnet, reuse)
    repeats = REPEATS["naive_reused"][1 if quick else 0]
    reused = [naive_request(images.next(), chexnet, reuse)["chexnet"] for _ in range(repeats)]
    results.latency("naive_reused_chexnet", reused)


# ---------------------------------------------------------------------------
# The app over HTTP.
# ---------------------------------------------------------------------------
def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> dict[str, float]:
    """Current and peak resident memory (MB) of a process and of its child processes."""
    values = {"rss_mb": 0.0, "peak_rss_mb": 0.0, "children_rss_mb": 0.0}
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            values["rss_mb"] = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            values["peak_rss_mb"] = int(line.split()[1]) / 1024
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                values["children_rss_mb"] += rss_mb(int(child))["rss_mb"]
            except (OSError, ValueError):
                pass
    return values


class AppClient:
    """The two request kinds a user sends: an upload with a heatmap, and the JSON API."""

    def __init__(self, url: str):
        import logging

        import httpx
        from gradio_client import Client

        # gradio_client logs every HTTP request at INFO level.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.client = Client(
            url, verbose=False, download_files=False, httpx_kwargs={"timeout": REQUEST_TIMEOUT_S}
        )
        # The upload event is a page event (private: not on the API page, not callable through
        # gradio_client), so it is sent as the browser sends it: file upload, queue join, then
        # the queue's event stream until the event completes.
        self.http = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S)
        page = self.http.get("config").json()
        self.prefix = page.get("api_prefix", "/gradio_api").strip("/")
        upload = next(c for c in page["components"] if c.get("props", {}).get("elem_id") == UPLOAD_ELEM_ID)
        self.upload_trigger = upload["id"]
        self.upload_fn = next(
            d["id"]
            for d in page["dependencies"]
            if [upload["id"], "upload"] in [list(target) for target in d["targets"]]
        )

    def upload(self, path) -> list:
        """The Diagnose tab's upload event: both columns with Grad-CAM overlays (its outputs)."""
        import uuid

        path = Path(path)
        with path.open("rb") as handle:
            stored = self.http.post(f"{self.prefix}/upload", files={"files": (path.name, handle)})
        stored.raise_for_status()
        file = {"path": stored.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        session = uuid.uuid4().hex
        joined = self.http.post(
            f"{self.prefix}/queue/join",
            json={
                "data": [file, "gradcam", ALPHA],
                "fn_index": self.upload_fn,
                "trigger_id": self.upload_trigger,
                "session_hash": session,
                "event_data": None,
            },
        )
        joined.raise_for_status()
        with self.http.stream("GET", f"{self.prefix}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise BenchmarkError(f"the upload event failed: {message.get('output')}")
                    return message["output"]["data"]
        raise BenchmarkError("the upload event's stream ended before it completed")

    def api(self, path) -> dict:
        """/predict through gradio_client (its result arrives through 50 ms polling loops)."""
        from gradio_client import handle_file

        return self.client.predict(handle_file(str(path)), api_name="/predict")

    def api_http(self, path) -> dict:
        """/predict as the API page's curl commands call it: upload the file, POST the call, read its
        event stream until `complete`."""
        path = Path(path)
        with path.open("rb") as handle:
            stored = self.http.post(f"{self.prefix}/upload", files={"files": (path.name, handle)})
        stored.raise_for_status()
        file = {"path": stored.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        called = self.http.post(f"{self.prefix}/call/predict", json={"data": [file]})
        called.raise_for_status()
        event = None
        with self.http.stream("GET", f"{self.prefix}/call/predict/{called.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    if event == "error":
                        raise BenchmarkError(f"/predict failed: {line[5:].strip()}")
                    return json.loads(line[5:])[0]
        raise BenchmarkError("the /predict event stream ended before it completed")


def bench_app(results: Results, folders: dict[str, Path], work: Path, images: ImageCycle, args) -> None:
    """Each server configuration in turn; a failed one is reported in the table, not raised."""
    configs = ("both",) if args.quick else ("both", *config.MODELS)
    for subset in configs:
        try:
            _bench_one_app(results, subset, folders[subset], work, images, args)
        except Exception as exc:  # noqa: BLE001 - the rest of the table is still worth printing
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            results.notes.append(f"app with {subset} checkpoint(s) failed: {first_line}")
    for row in ROWS:
        if row.section == HTTP and row.key not in results.cells:
            if row.key.startswith("http_") and row.key.split("_")[1] in config.MODELS and args.quick:
                results.skip(row.key, "--quick")
            else:
                results.set(row.key, "failed (see notes)")


def probe_image(work: Path, source: Path) -> Path:
    """A small PNG copy of `source` in `work` (made once) for polling the app while it loads."""
    from PIL import Image

    probe = work / f"probe_{PROBE_SIDE}.png"
    if not probe.exists():
        with Image.open(source) as image:
            image.convert("RGB").resize((PROBE_SIDE, PROBE_SIDE)).save(probe)
    return probe


def _wait_for_models(client: AppClient, names: tuple[str, ...], path, started: float) -> dict[str, float]:
    """Seconds from spawn until each model in `names` answers the /predict API (polled over plain
    HTTP: gradio_client's polling would add its own wait to each answer)."""
    answered: dict[str, float] = {}
    deadline = started + SERVER_START_TIMEOUT_S
    while len(answered) < len(names):
        payload = client.api_http(path)
        now = time.perf_counter() - started
        for name in names:
            if name not in answered and (payload.get(name) or {}).get("available"):
                answered[name] = now
        if time.perf_counter() > deadline:
            missing = [n for n in names if n not in answered]
            raise BenchmarkError(f"{missing} did not answer within {SERVER_START_TIMEOUT_S} s of start")
        if len(answered) < len(names):
            time.sleep(MODEL_POLL_S)
    return answered


def wait_until_idle(pid: int) -> float | None:
    """Seconds until the process used under IDLE_CPU_SHARE of a core over IDLE_WINDOW_S: its
    background start-up work is over; None if it was still busy after IDLE_TIMEOUT_S."""
    start = time.perf_counter()
    before = process_cpu_seconds(pid)
    while time.perf_counter() - start < IDLE_TIMEOUT_S:
        time.sleep(IDLE_WINDOW_S)
        now = process_cpu_seconds(pid)
        if now - before < IDLE_CPU_SHARE * IDLE_WINDOW_S:
            return time.perf_counter() - start
        before = now
    return None


def _bench_one_app(results: Results, subset: str, checkpoint_dir: Path, work: Path, images, args) -> None:
    pick = 1 if args.quick else 0
    cache = work / f"gradio_{subset}"
    cache.mkdir()
    # Offline, with a provisioning cache of its own: nothing is downloaded or trained meanwhile.
    env = {"GRADIO_TEMP_DIR": cache, "COVID_XRAY_OFFLINE": "1", "COVID_XRAY_HOME": work / f"home_{subset}"}
    app = AppServer.start(checkpoint_dir, work, env=env, tag=f"app_{subset}")
    try:
        up = app.wait_until_up(SERVER_START_TIMEOUT_S, poll_s=0.05)
        client = AppClient(app.url)
        names = tuple(config.MODELS) if subset == "both" else (subset,)
        answered = _wait_for_models(client, names, probe_image(work, images.paths[0]), app.started)
        if subset == "both":
            results.set("page_up", f"{up:.1f} s", up <= 5.0, seconds=up)
            david = answered["davidnet"]
            results.set("davidnet_answers", f"{david:.1f} s", david <= 12.0, seconds=david)
            if args.skip_cold_start:
                results.skip("cold_start", "--skip-cold-start")
            else:
                both = max(answered.values())
                results.set(
                    "cold_start",
                    f"{both:.1f} s (CheXNet {answered['chexnet']:.1f} s)",
                    both <= 15.0,
                    seconds=both,
                    server_up_seconds=up,
                    answered_seconds=answered,
                )
        settle = wait_until_idle(app.process.pid)  # the rows are timed anyway if it never settles
        if subset == "both":
            idle = None if settle is None else time.perf_counter() - app.started
            results.set(
                "server_idle",
                f"still busy after {IDLE_TIMEOUT_S:.0f} s more" if idle is None else f"{idle:.1f} s",
                seconds=idle,
            )
        client.upload(images.next())
        sent = 1
        for _ in range(WARM_UP):
            client.upload(images.next())
            client.api(images.next())
            sent += 2
        key = "http_both_gradcam" if subset == "both" else f"http_{subset}_gradcam"
        repeats = REPEATS["http" if subset == "both" else "http_single_model"][pick]
        if subset == "both":
            warm = rss_mb(app.process.pid)
            results.set(
                "rss_warm",
                f"{warm['peak_rss_mb']:.0f} MB (now {warm['rss_mb']:.0f} MB)",
                warm["peak_rss_mb"] + warm["children_rss_mb"] <= MAX_RSS_MB,
                **warm,
            )
        requests = (
            (key, client.upload),
            ("http_both_api", client.api_http),
            ("http_both_api_client", client.api),
        )
        for row_key, request in requests:
            server_cpu, client_cpu = process_cpu_seconds(app.process.pid), time.process_time()
            seconds = [timed(request, images.next())[0] for _ in range(repeats)]
            server_cpu = (process_cpu_seconds(app.process.pid) - server_cpu) / repeats * 1000.0
            client_cpu = (time.process_time() - client_cpu) / repeats * 1000.0
            target_ms = {"http_both_gradcam": 300.0, "http_both_api": 200.0}.get(row_key)
            results.latency(
                row_key, seconds, server_cpu_ms=server_cpu, client_cpu_ms=client_cpu, max_p50_ms=target_ms
            )
            sent += repeats
            if subset != "both":
                return
        total = REPEATS["http_total"][pick]
        while sent < total:
            if sent % 2:
                client.upload(images.next())
            else:
                client.api(images.next())
            sent += 1
        after = rss_mb(app.process.pid)
        results.set(
            "rss_after",
            f"{after['peak_rss_mb']:.0f} MB after {sent} requests (now {after['rss_mb']:.0f} MB)",
            after["peak_rss_mb"] + after["children_rss_mb"] <= MAX_RSS_MB,
            requests=sent,
            **after,
        )
    finally:
        app.stop()


# ---------------------------------------------------------------------------
# Evaluation and training.
# ---------------------------------------------------------------------------
def bench_evaluate(results: Results, loaded: dict, data_dir, quick: bool) -> None:
    from covid_xray import data
    from covid_xray.studies import evaluate

    test = data.list_samples(data_dir, split="test")[: REPEATS["evaluate_files"][1 if quick else 0]]
    data.clear_cache()
    seconds, _ = timed(data.load_arrays, test)
    results.set(
        "evaluate_decode",
        f"{len(test) / seconds:.0f} images/s ({len(test)} files)",
        images_per_s=len(test) / seconds,
    )
    for name, lm in loaded.items():
        # From the original files each time: forget the decoded images first.
        data.clear_cache()
        evaluate.predict_samples(lm.explainer.model, test[:2], lm.preprocessing)  # first eager call
        data.clear_cache()
        seconds, _ = timed(evaluate.predict_samples, lm.explainer.model, test, lm.preprocessing)
        rate = len(test) / seconds
        met = rate >= 30.0 if name == "davidnet" else None
        results.set(
            f"evaluate_{name}",
            f"{rate:.0f} images/s ({len(test)} files, {seconds:.1f} s)",
            met,
            images_per_s=rate,
        )


def _epoch_timer():
    """A Keras callback that records each epoch's wall and process CPU time."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self._start = (0.0, 0.0)

        def on_epoch_begin(self, epoch, logs=None):
            self._start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start[0])
            self.cpu_seconds.append(time.process_time() - self._start[1])

    return EpochTimer()


def _seconds_per_epoch(model, train_ds, val_ds, epochs: int, class_weight=None, untimed: int = 1) -> float:
    """Median wall time of `epochs` epochs, after `untimed` ones (the first traces the step)."""
    timer = _epoch_timer()
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=untimed + epochs,
        class_weight=class_weight,
        callbacks=[timer],
        verbose=0,
    )
    return float(np.median(timer.seconds[untimed:]))


def _reference_model(cfg, augment: bool):
    """The reference of the DavidNet rows: the same DavidNet, compiled the same way, fed in-memory
    float arrays by plain `model.fit`; with `augment`, the project's augmenter (and the clip and
    normalisation that follow it) runs as the model's first layers instead of in a tf.data map."""
    import keras

    from covid_xray import models, preprocessing, training

    davidnet = models.build_davidnet()
    if not augment:
        return training._compile(davidnet, cfg.learning_rate)
    inputs = keras.Input(davidnet.input.shape[1:])
    x = training._augmenter(cfg)(inputs)
    clip_and_normalise = lambda t: preprocessing.normalize(keras.ops.clip(t, 0.0, 255.0), cfg.preprocessing)  # noqa: E731
    x = keras.layers.Lambda(clip_and_normalise)(x)
    return training._compile(keras.Model(inputs, davidnet(x)), cfg.learning_rate)


def bench_davidnet_epochs(results: Results, cfg, train, val, class_weight, quick: bool) -> None:
    """DavidNet epochs through the project's training path (`data.make_dataset` pipeline and
    `training._callbacks`: keep-best, ReduceLROnPlateau, EarlyStopping, CSV and TensorBoard logs,
    validation every epoch) against the plain in-memory reference, in alternating rounds so that
    both see the same load; medians after one untimed (tracing) epoch each."""
    import keras

    from covid_xray import models, preprocessing, training

    (x_tr, y_tr), (x_va, y_va) = train, val
    epochs, rounds = REPEATS["epochs"][1 if quick else 0], REPEATS["train_rounds"][1 if quick else 0]
    onehot = lambda y: keras.utils.to_categorical(y, config.NUM_CLASSES)  # noqa: E731
    val_ds = training._to_dataset(x_va, y_va, cfg, shuffle=False, augment=False)
    run_dir = Path(tempfile.mkdtemp(prefix="covid-xray-bench-train-"))
    try:
        for phase, augment in (("plain", False), ("augmented", True)):
            keras.utils.set_random_seed(cfg.seed)
            ours = training._compile(models.build_davidnet(), cfg.learning_rate)
            train_ds = training._to_dataset(x_tr, y_tr, cfg, shuffle=True, augment=augment)
            reference = _reference_model(cfg, augment)
            if augment:  # the model normalises: it takes the 0..255 values
                ref_x, ref_val = x_tr.astype(np.float32), x_va.astype(np.float32)
            else:
                ref_x = preprocessing.normalize(x_tr, cfg.preprocessing)
                ref_val = preprocessing.normalize(x_va, cfg.preprocessing)
            timers = {"ours": _epoch_timer(), "reference": _epoch_timer()}
            for round_index in range(rounds):
                untimed = 1 if round_index == 0 else 0
                logs = run_dir / f"{phase}{round_index}"
                logs.mkdir()
                callbacks, _ = training._callbacks(cfg, logs, phase, np.inf)
                ours.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=epochs + untimed,
                    class_weight=class_weight,
                    callbacks=[timers["ours"], *callbacks],
                    verbose=0,
                )
                reference.fit(
                    ref_x,
                    onehot(y_tr),
                    batch_size=cfg.batch_size,
                    shuffle=True,
                    validation_data=(ref_val, onehot(y_va)),
                    epochs=epochs + untimed,
                    class_weight=class_weight,
                    callbacks=[timers["reference"]],
                    verbose=0,
                )
                for timer in timers.values():  # drop the tracing epoch of the first round
                    if untimed:
                        del timer.seconds[-(epochs + 1)], timer.cpu_seconds[-(epochs + 1)]
            wall = {k: float(np.median(t.seconds)) for k, t in timers.items()}
            cpu = {k: float(np.median(t.cpu_seconds)) for k, t in timers.items()}
            ratio = wall["ours"] / wall["reference"]
            results.set(
                f"train_davidnet_{phase}",
                f"{wall['ours']:.1f} s/epoch (cpu {cpu['ours']:.1f} s) = {ratio:.2f}x reference "
                f"(cpu {cpu['ours'] / cpu['reference']:.2f}x; {len(x_tr)} images, batch {cfg.batch_size})",
                ratio <= 1.2,
                seconds_per_epoch=wall["ours"],
                cpu_seconds_per_epoch=cpu["ours"],
                ratio_to_reference=ratio,
                cpu_ratio_to_reference=cpu["ours"] / cpu["reference"],
                epochs_timed=len(timers["ours"].seconds),
                images=len(x_tr),
                batch_size=cfg.batch_size,
            )
            results.set(
                f"train_davidnet_{phase}_reference",
                f"{wall['reference']:.1f} s/epoch (cpu {cpu['reference']:.1f} s)",
                seconds_per_epoch=wall["reference"],
                cpu_seconds_per_epoch=cpu["reference"],
                epochs_timed=len(timers["reference"].seconds),
            )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def bench_training(results: Results, loaded: dict, data_dir, quick: bool) -> None:
    import keras
    import tensorflow as tf

    from covid_xray import data, training

    metadata = loaded["davidnet"].metadata.get("config", {})
    cfg = training.TrainConfig(
        model="davidnet",
        batch_size=int(metadata.get("batch_size", training.TrainConfig.batch_size)),
        learning_rate=float(metadata.get("learning_rate", training.TrainConfig.learning_rate)),
        verbose=0,
    )
    splits = data.make_splits(data_dir, protocol="default", val_fraction=cfg.val_fraction, seed=cfg.seed)
    (x_tr, y_tr), (x_va, y_va) = data.load_arrays(splits["train"]), data.load_arrays(splits["val"])
    class_weight = data.class_weights(y_tr)
    bench_davidnet_epochs(results, cfg, (x_tr, y_tr), (x_va, y_va), class_weight, quick)

    # CheXNet: the frozen DenseNet121 runs once per image (and augmented view); the head then
    # trains on the cached pooled features. The first call traces the compiled function (once per
    # base model); the steady-state rate is timed after it, for each batch size.
    chexnet = loaded["chexnet"].explainer.model
    base = keras.Model(chexnet.input, chexnet.get_layer(config.MODELS["chexnet"].gradcam_layer).output)
    mode = loaded["chexnet"].preprocessing
    count = 32 if quick else 96
    first, _ = timed(training.extract_features, base, x_tr[:8], mode)
    rates = {}
    for batch_size in FEATURE_BATCH_SIZES:
        training.extract_features(base, x_tr[:batch_size], mode, batch_size=batch_size)  # shape warm-up
        start, cpu = time.perf_counter(), time.process_time()
        training.extract_features(base, x_tr[:count], mode, batch_size=batch_size)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rates[batch_size] = {"images_per_s": count / wall, "cpu_ms_per_image": cpu / count * 1000.0}
    default = training.FEATURE_BATCH_SIZE
    rate = rates[default]["images_per_s"]
    results.set(
        "chexnet_features",
        f"{rate:.1f} images/s at batch {default} (cpu {rates[default]['cpu_ms_per_image']:.0f} ms/image; "
        f"first call {first:.1f} s, trace included)",
        rate >= 15.0,
        images_per_s=rate,
        batch_size=default,
        first_call_seconds=first,
    )
    results.set(
        "chexnet_features_batches",
        ", ".join(f"{b}: {r['images_per_s']:.1f}/s" for b, r in rates.items()) + f" ({count} images)",
        by_batch_size={str(b): r for b, r in rates.items()},
    )

    head_cfg = training.TrainConfig(model="chexnet")
    features = base.output.shape[-1]
    rng = np.random.default_rng(0)
    for phase, views in (("plain", 1), ("augmented", head_cfg.feature_views)):
        # Timing does not depend on feature values: random features of the cached shape.
        x = rng.standard_normal((len(x_tr) * views, features)).astype(np.float32)
        y = keras.utils.to_categorical(np.tile(y_tr, views), config.NUM_CLASSES)
        xv = rng.standard_normal((len(x_va), features)).astype(np.float32)
        yv = keras.utils.to_categorical(y_va, config.NUM_CLASSES)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(head_cfg.batch_size)
        vds = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(head_cfg.batch_size)
        inputs = keras.Input(shape=(features,), name="pooled_features")
        hidden = keras.layers.Dense(64, activation="relu", name="head_dense")(inputs)
        outputs = keras.layers.Dense(config.NUM_CLASSES, activation="softmax", name="predictions")(hidden)
        head = training._compile(keras.Model(inputs, outputs), head_cfg.learning_rate)
        seconds = _seconds_per_epoch(head, ds, vds, REPEATS["epochs"][1 if quick else 0], class_weight)
        results.set(
            f"train_chexnet_head_{phase}",
            f"{seconds * 1000:.0f} ms/epoch ({len(x)} feature vectors)",
            seconds_per_epoch=seconds,
            vectors=len(x),
        )


# ---------------------------------------------------------------------------
# Fresh processes: library imports and the command line.
# ---------------------------------------------------------------------------
def _run_seconds(argv: list[str], env: dict | None = None) -> float:
    """Wall seconds of one fresh process run from the project root (it must succeed)."""
    start = time.perf_counter()
    completed = subprocess.run(
        argv,
        cwd=PROJECT_ROOT,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise BenchmarkError(f"{' '.join(map(str, argv))} failed:\n{completed.stderr[-2000:]}")
    return seconds


def bench_commands(results: Results, folders: dict[str, Path], images: ImageCycle, quick: bool) -> None:
    """Imports (what the page and the command line wait for) and `python -m covid_xray.predict`."""
    repeats = REPEATS["commands"][1 if quick else 0]
    python = sys.executable
    probe = "import sys, app; assert 'tensorflow' not in sys.modules, 'app imported TensorFlow'"
    for key, argv in (
        ("import_gradio", [python, "-c", "import gradio"]),
        ("import_tensorflow", [python, "-c", "import tensorflow"]),
        ("import_app", [python, "-c", probe]),
    ):
        seconds = [_run_seconds(argv) for _ in range(repeats)]
        median = float(np.median(seconds))
        results.set(key, f"{median:.1f} s (n={repeats})", seconds=median, runs=seconds)

    # The installed models of the "both" folder (DavidNet + CheXNet, as the app serves them).
    env = {"COVID_XRAY_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [python, "-m", "covid_xray.predict", "--json", "--checkpoint-dir", str(folders["both"])]
    one = [_run_seconds([*command, str(images.paths[0])], env) for _ in range(repeats)]
    median_one = float(np.median(one))
    results.set(
        "predict_one",
        f"{median_one:.1f} s (both models, n={repeats})",
        median_one <= 8.0,
        seconds=median_one,
        runs=one,
    )
    # The folder's own rate: the test split as one folder (past EAGER_MAX_IMAGES, so compiled), timed
    # from the moment the command printed its SKIP_LINES-th answer to its last: start-up, tracing
    # and the first images left out.
    # The reference beside it: the same command with one image in flight (`--workers 1`).
    count, skip = len(images.paths), FOLDER_SKIP_LINES
    folder = Path(tempfile.mkdtemp(prefix="covid-xray-bench-folder-"))
    try:
        for i, path in enumerate(images.paths):  # links: the test split as one folder
            (folder / f"{i:03d}{path.suffix}").symlink_to(path)
        runs = {}
        for label, extra in (("default", []), ("one", ["--workers", "1"])):
            total, lines = _line_seconds([*command, *extra, str(folder)], env)
            if len(lines) != count:
                raise BenchmarkError(f"predict printed {len(lines)} lines for {count} files")
            runs[label] = (total, lines, (count - skip) / max(lines[-1] - lines[skip - 1], 1e-9))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    total, lines, rate = runs["default"]
    one = runs["one"][2]
    results.set(
        "predict_folder",
        f"{rate:.1f} images/s after start-up (answers {skip + 1} to {count}; {one:.1f}/s with --workers 1 "
        f"= {rate / one:.2f}x; {total:.1f} s in all)",
        rate >= 20.0,
        images_per_s=rate,
        one_worker_images_per_s=one,
        overall_images_per_s=count / total,
        seconds=total,
        line_seconds=lines,
        files=count,
    )


def _line_seconds(argv: list[str], env: dict) -> tuple[float, list[float]]:
    """(wall seconds, seconds from start at which each stdout line arrived) of one fresh process
    (unbuffered output, so that each line arrives when it is printed; it must succeed)."""
    with tempfile.TemporaryFile("w+") as stderr:  # a file: a full stderr pipe would block the command
        start = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines = [time.perf_counter() - start for _ in process.stdout]
        if process.wait(timeout=600) != 0:
            stderr.seek(0)
            raise BenchmarkError(f"{' '.join(map(str, argv))} failed:\n{stderr.read()[-2000:]}")
        return time.perf_counter() - start, lines


# ---------------------------------------------------------------------------
# Table.
# ---------------------------------------------------------------------------
def render_table(results: Results, header: list[str]) -> str:
    lines = [*header, ""]
    width = max(len(row.label) for row in ROWS) + 2
    value_width = max(len(results.cells.get(row.key, ("",))[0]) for row in ROWS) + 2
    section = None
    for row in ROWS:
        if row.section != section:
            section = row.section
            lines += ["", f"## {section}"]
        text, met = results.cells.get(row.key, ("not measured", None))
        mark = "" if met is None else ("  ok" if met else "  MISSED")
        target = f"[{row.target}]" if row.target else ""
        lines.append(f"{row.label:<{width}}{text:<{value_width}}{target}{mark}".rstrip())
    if results.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in results.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run), same rows")
    parser.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    parser.add_argument("--skip-http", action="store_true", help="do not start python app.py")
    parser.add_argument("--skip-cold-start", action="store_true", help="do not report the cold start")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the tf-keras-vis reference")
    parser.add_argument("--data-dir", default=None, help="dataset root (else $COVID_XRAY_DATA)")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from covid_xray.inference import configure_cpu_threads

    configure_cpu_threads(INTRA_OP_THREADS, INTER_OP_THREADS)
    import gradio
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    load_before = load_average()
    results = Results()
    data_dir = config.resolve_data_dir(args.data_dir)
    try:
        images = ImageCycle(test_images(data_dir))
        with tempfile.TemporaryDirectory(prefix="covid-xray-bench-") as tmp:
            work = Path(tmp)
            folders, provenance = prepare_checkpoints(work)
            serving = bench_serving(results, folders, images, args.quick)
            if args.skip_naive:
                for row in ROWS:
                    if row.section == NAIVE:
                        results.skip(row.key, "--skip-naive")
            else:
                bench_naive(results, serving["loaded"], images, serving["ours_both_p50_ms"], args.quick)
            if args.skip_http:
                for row in ROWS:
                    if row.section == HTTP:
                        results.skip(row.key, "--skip-http")
            else:
                bench_app(results, folders, work, images, args)
            bench_evaluate(results, serving["loaded"], data_dir, args.quick)
            bench_training(results, serving["loaded"], data_dir, args.quick)
            bench_commands(results, folders, images, args.quick)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_after = load_average()
    cores = len(os.sched_getaffinity(0))
    header = [
        "# covid-xray benchmark" + (" (--quick)" if args.quick else ""),
        f"machine: {cpu_model()}, {cores} CPU cores available; "
        f"TF threads intra-op {INTRA_OP_THREADS}, inter-op {INTER_OP_THREADS}",
        f"software: Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, Gradio {gradio.__version__}",
        f"load average (1/5/15 min): before {' '.join(f'{v:.2f}' for v in load_before)}, "
        f"after {' '.join(f'{v:.2f}' for v in load_after)} (this run's own load included)",
        f"DavidNet: {provenance['davidnet']}; CheXNet: {provenance['chexnet']}",
        f"inputs: {len(images.paths)} test images from {data_dir}, requests cycle through them",
        f"command: python benchmarks/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip()
        + f"  ({time.perf_counter() - started:.0f} s)",
    ]
    if load_before[0] > 0.5 * cores:
        results.notes.append(
            f"The machine was busy before the run (load average {load_before[0]:.1f} on {cores} cores): "
            "other processes probably shared the CPU, so timings are inflated."
        )
    missed = [row.label for row in ROWS if results.cells.get(row.key, ("", None))[1] is False]
    if missed:
        results.notes.append("Targets missed: " + "; ".join(missed) + ".")
    print(render_table(results, header))
    if args.json:
        payload = {
            "header": header,
            "quick": args.quick,
            "cpu_model": cpu_model(),
            "cores": cores,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "provenance": provenance,
            "results": results.numbers,
            "table": {row.key: results.cells.get(row.key, ("not measured", None))[0] for row in ROWS},
            "notes": results.notes,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
