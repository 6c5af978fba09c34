#!/usr/bin/env python
"""Where `python app.py`'s start-up time goes (prints seconds; asserts nothing).

    python benchmarks/startup.py                      # in one process, phase by phase
    python benchmarks/startup.py --app 5              # python app.py 5 times: page, models, requests
    python benchmarks/startup.py --app 5 --compare DIR  # the same, alternating with DIR's app.py

Phases (default): mirrors the app's start-up with both models (the committed DavidNet; CheXNet
from a synthetic Keras-2 weights file when no trained checkpoint exists: same graph, same cost),
in one fresh process: imports, per-model checkpoint load and warm-up trace, UI build, launch,
first request.

`--app N`: spawns `python app.py` N times as a visitor's server starts (offline, both models'
checkpoints, a provisioning cache shared by the runs so that the training-film index is built
once, by an untimed first start) and prints, per run and as medians: seconds from spawn until the
page answers HTTP, until DavidNet answers the /predict API and until both do (polled every 0.1 s
as `bench.py` polls, but with a 64x64 copy of a test image), then, once the server is idle, the
p50 of `--requests` upload events (the Diagnose tab's, Grad-CAM overlays included) and `/predict`
calls (over plain HTTP as the API page's curl commands, and through gradio_client). `--compare
DIR` alternates each run with DIR's `app.py` (another checkout, e.g. `git worktree add DIR
HEAD~1`), so that both see the same machine load. The load average is printed
before and after. Run it on an idle machine; the first run after boot also pays for a cold disk
cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
START = time.perf_counter()
PHASES: list[float] = []
# --app: requests are timed once the server is idle (`bench.wait_until_idle`).
WARM_UP_REQUESTS = 2


def mark(label: str, since: float) -> float:
    """Print and record the seconds since `since`; return now."""
    now = time.perf_counter()
    PHASES.append(now - since)
    print(f"{now - since:7.2f} s  {label}", flush=True)
    return now


def phases() -> int:
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


# ---------------------------------------------------------------------------
# --app: fresh `python app.py` servers.
# ---------------------------------------------------------------------------
def serve_once(command: list[str], checkpoint_dir: Path, work: Path, home: Path, tag: str, requests: int):
    """One fresh server: {page, davidnet, both[, upload_p50_ms, api_p50_ms, api_client_p50_ms]}."""
    import bench

    from covid_xray import config
    from tests.appserver import AppServer

    env = {
        "GRADIO_TEMP_DIR": work / f"gradio_{tag}",
        "COVID_XRAY_OFFLINE": "1",
        "COVID_XRAY_HOME": home,
    }
    images = bench.ImageCycle(bench.test_images(None))
    probe = bench.probe_image(work, images.paths[0])
    with AppServer.start(checkpoint_dir, work, env=env, tag=tag, command=command) as app:
        page = app.wait_until_up(bench.SERVER_START_TIMEOUT_S, poll_s=0.05)
        client = bench.AppClient(app.url)
        answered = bench._wait_for_models(client, tuple(config.MODELS), probe, app.started)
        out = {"page": page, "davidnet": answered["davidnet"], "both": max(answered.values())}
        if requests:
            out["settle"] = bench.wait_until_idle(app.process.pid)
            if out["settle"] is None:
                raise bench.BenchmarkError(
                    f"the app was still busy {bench.IDLE_TIMEOUT_S:.0f} s after its models answered"
                )
            for _ in range(WARM_UP_REQUESTS):
                client.upload(images.next())
                client.api_http(images.next())
            requests_by_key = (
                ("upload_p50_ms", client.upload),
                ("api_p50_ms", client.api_http),
                ("api_client_p50_ms", client.api),
            )
            for key, request in requests_by_key:
                seconds = [bench.timed(request, images.next())[0] for _ in range(requests)]
                out[key] = statistics.median(seconds) * 1000.0
    return out


def apps(runs: int, compare: Path | None, requests: int) -> int:
    import bench

    commands = {"this checkout": [sys.executable, str(ROOT / "app.py")]}
    if compare is not None:
        commands[f"compare ({compare})"] = [sys.executable, str(compare / "app.py")]
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    results: dict[str, list[dict]] = {label: [] for label in commands}
    with tempfile.TemporaryDirectory(prefix="covid-xray-startup-") as tmp:
        work = Path(tmp)
        folders, provenance = bench.prepare_checkpoints(work)
        print(f"DavidNet: {provenance['davidnet']}; CheXNet: {provenance['chexnet']}", flush=True)
        home = work / "home"
        # Untimed: builds the shared cache (the training-film index) that later starts read.
        serve_once(commands["this checkout"], folders["both"], work, home, "untimed", 1)
        for run in range(runs):
            for i, (label, command) in enumerate(commands.items()):
                row = serve_once(command, folders["both"], work, home, f"run{run}_{i}", requests)
                results[label].append(row)
                cells = "  ".join(f"{k} {v:.2f}" for k, v in row.items())
                print(f"run {run + 1} {label}: {cells}  (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    labels = {
        "page": "s until the page answers",
        "davidnet": "s until DavidNet answers /predict",
        "both": "s until both models answer",
        "upload_p50_ms": "ms upload event p50 (both + Grad-CAM)",
        "api_p50_ms": "ms /predict API p50 (plain HTTP)",
        "api_client_p50_ms": "ms /predict API p50 through gradio_client",
    }
    for label, rows in results.items():
        print(f"\nmedians of {len(rows)} runs, {label}:")
        for key, text in labels.items():
            values = [row[key] for row in rows if key in row]
            if values:
                print(f"{statistics.median(values):9.2f} {text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", type=int, metavar="N", default=0, help="start python app.py N times")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="with --app: alternate with DIR/app.py")
    parser.add_argument(
        "--requests",
        type=int,
        default=10,
        metavar="N",
        help="with --app: timed requests of each kind (0: none)",
    )
    args = parser.parse_args(argv)
    if args.compare is not None and not args.app:
        parser.error("--compare needs --app N")
    if args.app:
        return apps(args.app, args.compare.resolve() if args.compare else None, args.requests)
    return phases()


if __name__ == "__main__":
    raise SystemExit(main())
