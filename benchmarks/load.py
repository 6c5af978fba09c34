#!/usr/bin/env python
"""Load and soak test: many concurrent API clients with good and bad files against `python app.py`.

    python benchmarks/load.py                       # 20 clients x 25 requests (500 in all)
    python benchmarks/load.py --clients 5 --requests 10
    python benchmarks/load.py --rounds 4            # soak: the same load 4 times, RSS after each
    python benchmarks/load.py --json load.json      # also save every number

Starts the app on 127.0.0.1 (never another interface) on a free port, with the committed
checkpoints (DavidNet and its OOD guard); a model without a committed checkpoint (CheXNet) gets
random weights, same graph and same cost, so that the load is the real one. Then N threads,
each with its own `gradio_client.Client`, send M requests each to the documented `/predict`
endpoint, picking at random between good inputs (every X-ray of $COVID_XRAY_DATA, and the
odd-but-valid files of the generated corpus: 16-bit PNG, CMYK JPEG, DICOM, a 30-megapixel JPEG,
a colour photo...) and bad ones (the corpus's empty, truncated, fake, tiny, decompression-bomb
and undecodable DICOM files). Nothing is written outside a temporary folder (and --json/--log).

It prints: errors on good inputs (must be 0), bad inputs answered with the decoder's message,
latency p50/p95 as a client sees it (queue wait included: the app runs one model request at a
time), the server's RSS after warm-up and after the load (drift target < 100 MB), whether the
server still answers a good request identically afterwards, and the tracebacks in its log.
Exit status 1 when a target is missed. Bounded: at most MAX_REQUESTS requests in all,
REQUEST_TIMEOUT_S per request, and --max-seconds for the whole load (requests not sent in time
are counted as a failure, not silently dropped). Numbers depend on what else runs: the load
average before and after is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from covid_xray import config  # noqa: E402
from tests.appserver import HOST, AppServer  # noqa: E402

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
DEFAULT_CLIENTS = 20
DEFAULT_REQUESTS = 25  # per client
DEFAULT_BAD_FRACTION = 0.3
DEFAULT_MAX_SECONDS = 1800  # the whole load phase
MAX_CLIENTS = 100
MAX_REQUESTS = 10_000  # clients x requests
# A request that takes longer is a hang (20 clients queue behind one worker: generous).
REQUEST_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 600
# Good inputs include every image of the dataset (train and test, 317) when it is present: far
# more distinct images than the Predictor's result cache holds (inference.EXPLANATION_CACHE_SIZE
# entries), so most requests run the models instead of being answered from that cache.
DATASET_SPLITS = ("train", "test")
# Real images in the warm-up pass (with every corpus file).
WARM_UP_REAL_IMAGES = 6
# Targets (the issue "Robustness and security").
MAX_GOOD_ERRORS = 0
MAX_RSS_DRIFT_MB = 100.0


@dataclass(frozen=True)
class Input:
    """One file the clients send, and what the server must answer."""

    name: str
    path: Path
    good: bool
    expected_error: str = ""  # the decoder's message for a bad file
    real: bool = False  # a dataset X-ray (not a generated corpus file)


@dataclass
class Outcome:
    """What one request got."""

    input: Input
    seconds: float
    ok: bool  # good input: valid JSON for every model; bad input: an error with the right message
    detail: str = ""


# ---------------------------------------------------------------------------
# Set-up.
# ---------------------------------------------------------------------------
def prepare_checkpoints(folder: Path) -> dict[str, str]:
    """Copy the committed checkpoints (and OOD guards) into `folder`; random weights for a model
    without one. Returns where each model came from."""
    import keras

    from covid_xray.checkpoints import save_checkpoint
    from covid_xray.models import build_chexnet, build_davidnet

    folder.mkdir(parents=True, exist_ok=True)
    provenance = {}
    for name, spec in config.MODELS.items():
        committed = spec.checkpoint_path(config.CHECKPOINT_DIR)
        target = spec.checkpoint_path(folder)
        if committed.exists() and committed.with_suffix(".json").exists():
            shutil.copyfile(committed, target)
            shutil.copyfile(committed.with_suffix(".json"), target.with_suffix(".json"))
            guard = config.CHECKPOINT_DIR / f"ood_{name}.json"
            if guard.exists():
                shutil.copyfile(guard, folder / guard.name)
            provenance[name] = "committed checkpoint" + (" + OOD guard" if guard.exists() else "")
            continue
        keras.utils.set_random_seed(0)
        model = build_davidnet() if name == "davidnet" else build_chexnet(weights=None)
        mode = spec.preprocessing_for("default")
        save_checkpoint(model, target, {"preprocessing": mode, "model": name, "load_test": "random weights"})
        keras.backend.clear_session()
        provenance[name] = "random weights (same graph, same cost)"
    return provenance


def prepare_inputs(work: Path, data_dir: Path) -> list[Input]:
    """Valid corpus files, bad corpus files (with the decoder's message), then real X-rays."""
    from covid_xray.imaging import ImageDecodeError
    from covid_xray.inference import decode_source
    from covid_xray.synthetic import build_corpus

    inputs = []
    for case in build_corpus(work / "corpus"):
        if case.expect == "ok":
            inputs.append(Input(case.name, case.path, good=True))
            continue
        try:
            decode_source(case.path)
        except ImageDecodeError as exc:
            inputs.append(Input(case.name, case.path, good=False, expected_error=str(exc)))
        else:
            raise RuntimeError(f"Corpus file {case.name} was expected to fail decoding but did not.")
    for split in DATASET_SPLITS:
        for path in sorted((data_dir / split).glob("*/*")):
            if path.is_file():
                inputs.append(Input(str(path.relative_to(data_dir)), path, good=True, real=True))
    return inputs


def start_server(checkpoint_dir: Path, work: Path) -> tuple[AppServer, float]:
    """`python app.py` on a free loopback port, up and answering; returns it and its start-up seconds."""
    server = AppServer.start(
        checkpoint_dir,
        work,
        env={
            "GRADIO_TEMP_DIR": work / "gradio_cache",  # uploads are deleted with the work folder
            # The weights the app would use on its own (no missing-file stand-in): the real load.
            config.CHEXNET_WEIGHTS_ENV_VAR: config.resolve_chexnet_weights(),
        },
        tag="app",
    )
    return server, server.wait_until_up(SERVER_START_TIMEOUT_S, poll_s=1.0)


def rss_mb(pid: int) -> dict[str, float]:
    """Current and peak resident memory of a process (Linux /proc), in MB."""
    values = {"rss_mb": float("nan"), "peak_rss_mb": float("nan")}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                values["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                values["peak_rss_mb"] = int(line.split()[1]) / 1024
    return values


# ---------------------------------------------------------------------------
# Requests.
# ---------------------------------------------------------------------------
def send(client, item: Input, timeout: float = REQUEST_TIMEOUT_S) -> Outcome:
    """One /predict request, judged against what the input should get."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    start = time.perf_counter()
    try:
        job = client.submit(handle_file(str(item.path)), api_name="/predict")
        payload = job.result(timeout=timeout)
    except AppError as exc:
        seconds = time.perf_counter() - start
        if item.good:
            return Outcome(item, seconds, False, f"refused: {exc}")
        if item.expected_error not in str(exc):
            return Outcome(item, seconds, False, f"message {str(exc)!r}, expected {item.expected_error!r}")
        return Outcome(item, seconds, True)
    except Exception as exc:  # noqa: BLE001 - a timeout, a dropped connection...: all are failures
        return Outcome(item, time.perf_counter() - start, False, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    if not item.good:
        return Outcome(item, seconds, False, "accepted a bad file")
    problem = check_payload(payload)
    return Outcome(item, seconds, not problem, problem)


def check_payload(payload) -> str:
    """Empty if `payload` is the documented API JSON, else what is wrong."""
    if not isinstance(payload, dict):
        return f"not a JSON object: {payload!r}"
    for name in config.MODELS:
        entry = payload.get(name)
        if not isinstance(entry, dict) or entry.get("available") is not True:
            return f"{name}: {entry!r}"
        probabilities = entry.get("probabilities", {})
        if list(probabilities) != list(config.CLASS_NAMES) or abs(sum(probabilities.values()) - 1) > 1e-4:
            return f"{name}: bad probabilities {probabilities!r}"
    check = payload.get("input_check")
    if not isinstance(check, dict) or not isinstance(check.get("is_xray_likely"), bool):
        return f"input_check: {check!r}"
    return ""


def run_load(
    url: str,
    inputs: list[Input],
    clients: int,
    requests: int,
    bad_fraction: float,
    max_seconds: float,
    seed: int,
) -> tuple[list[Outcome], int, float]:
    """N threads x M requests; returns the outcomes, the requests never sent, and the wall time."""
    from gradio_client import Client

    good = [i for i in inputs if i.good]
    bad = [i for i in inputs if not i.good]
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    unsent = [0]

    def worker(index: int) -> None:
        rng = random.Random(seed + index)
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # noqa: BLE001
            with lock:
                unsent[0] += requests
                outcomes.append(Outcome(Input("client", Path(url), True), 0.0, False, f"connect: {exc}"))
            return
        for sent in range(requests):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with lock:
                    unsent[0] += requests - sent
                return
            item = rng.choice(bad) if bad and rng.random() < bad_fraction else rng.choice(good)
            outcome = send(client, item, timeout=min(REQUEST_TIMEOUT_S, remaining))
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_S)
    return outcomes, unsent[0], time.monotonic() - start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------
def count_tracebacks(log: str) -> tuple[int, int]:
    """(tracebacks in the server log, of which pydicom logged for a file it could not decode)."""
    lines = log.splitlines()
    total = pydicom = 0
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            total += 1
            pydicom += index > 0 and "ERROR pydicom" in lines[index - 1]
    return total, pydicom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", type=int, default=DEFAULT_CLIENTS, help=f"concurrent clients (max {MAX_CLIENTS})"
    )
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, help="requests per client")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the load (soak); RSS is read after each round"
    )
    parser.add_argument("--bad-fraction", type=float, default=DEFAULT_BAD_FRACTION, help="share of bad files")
    parser.add_argument(
        "--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="time bound of all rounds together"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--log", default=None, help="keep a copy of the server's log here")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be in 1..{MAX_CLIENTS}")
    if args.requests < 1 or args.rounds < 1 or args.clients * args.requests * args.rounds > MAX_REQUESTS:
        parser.error(f"--requests and --rounds must be >= 1, clients x requests x rounds <= {MAX_REQUESTS}")
    if not 0.0 <= args.bad_fraction <= 1.0:
        parser.error("--bad-fraction must be in [0, 1]")

    from gradio_client import Client, handle_file

    load_before = os.getloadavg()
    outcomes: list[Outcome] = []
    rss_rounds: list[float] = []
    unsent = 0
    wall = 0.0
    with tempfile.TemporaryDirectory(prefix="covid_xray_load_") as tmp:
        work = Path(tmp)
        provenance = prepare_checkpoints(work / "checkpoints")
        inputs = prepare_inputs(work, config.resolve_data_dir())
        real = [i for i in inputs if i.real]
        reference_input = real[0] if real else next(i for i in inputs if i.good)
        server, server_start_s = start_server(work / "checkpoints", work)
        try:
            pid = server.process.pid
            rss_start = rss_mb(pid)
            # Warm-up, one request at a time: every corpus file and a few real X-rays, so that
            # lazy allocations (traced functions, decoder tables) belong to the baseline.
            client = Client(server.url, verbose=False)
            warm = [
                send(client, item) for item in [i for i in inputs if not i.real] + real[:WARM_UP_REAL_IMAGES]
            ]
            reference = client.predict(handle_file(str(reference_input.path)), api_name="/predict")
            rss_warm = rss_mb(pid)
            deadline = time.monotonic() + args.max_seconds
            for round_index in range(args.rounds):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    unsent += args.clients * args.requests
                    continue
                got, missed, seconds = run_load(
                    server.url,
                    inputs,
                    args.clients,
                    args.requests,
                    args.bad_fraction,
                    remaining,
                    args.seed + 1000 * round_index,
                )
                outcomes += got
                unsent += missed
                wall += seconds
                rss_rounds.append(rss_mb(pid)["rss_mb"])
            rss_after = rss_mb(pid)
            again = client.predict(handle_file(str(reference_input.path)), api_name="/predict")
            still_same = again == reference
            alive = server.process.poll() is None
        finally:
            server.stop()
        tracebacks, pydicom_tracebacks = count_tracebacks(server.log_path.read_text(errors="replace"))
        if args.log:
            shutil.copyfile(server.log_path, args.log)

    good = [o for o in outcomes if o.input.good]
    bad = [o for o in outcomes if not o.input.good]
    good_errors = [o for o in good if not o.ok]
    bad_errors = [o for o in bad if not o.ok]
    warm_errors = [o for o in warm if not o.ok]
    drift = rss_after["rss_mb"] - rss_warm["rss_mb"]
    latencies = [o.seconds for o in outcomes]
    good_latencies = [o.seconds for o in good]
    numbers = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "rounds": args.rounds,
        "bad_fraction": args.bad_fraction,
        "inputs": {
            "real_xrays": len(real),
            "corpus_valid": sum(i.good and not i.real for i in inputs),
            "corpus_bad": sum(not i.good for i in inputs),
        },
        "models": provenance,
        "server_start_s": round(server_start_s, 1),
        "sent": len(outcomes),
        "unsent": unsent,
        "wall_s": round(wall, 1),
        "throughput_rps": round(len(outcomes) / wall, 2) if wall else None,
        "good_requests": len(good),
        "good_errors": len(good_errors),
        "bad_requests": len(bad),
        "bad_wrong_answers": len(bad_errors),
        "warm_up_requests": len(warm),
        "warm_up_errors": len(warm_errors),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p95_s": round(percentile(latencies, 95), 3),
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "good_latency_p50_s": round(percentile(good_latencies, 50), 3),
        "good_latency_p95_s": round(percentile(good_latencies, 95), 3),
        "rss_start_mb": round(rss_start["rss_mb"], 1),
        "rss_warm_mb": round(rss_warm["rss_mb"], 1),
        "rss_after_rounds_mb": [round(v, 1) for v in rss_rounds],
        "rss_after_mb": round(rss_after["rss_mb"], 1),
        "rss_drift_mb": round(drift, 1),
        "peak_rss_mb": round(rss_after["peak_rss_mb"], 1),
        "server_alive": alive,
        "same_answer_after_load": still_same,
        "server_log_tracebacks": tracebacks,
        "server_log_tracebacks_pydicom": pydicom_tracebacks,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    passed = (
        len(good_errors) <= MAX_GOOD_ERRORS
        and not bad_errors
        and not warm_errors
        and drift < MAX_RSS_DRIFT_MB
        and still_same
        and alive
        and unsent == 0
    )
    numbers["passed"] = passed

    def mark(ok: bool) -> str:
        return "ok" if ok else "FAILED"

    counts = numbers["inputs"]
    print(
        f"Load test: {args.clients} clients x {args.requests} requests x {args.rounds} round(s) on {HOST}, "
        f"{args.bad_fraction:.0%} bad; inputs: {counts['real_xrays']} real X-rays, "
        f"{counts['corpus_valid']} valid and {counts['corpus_bad']} bad corpus files"
    )
    print("  models: " + "; ".join(f"{k}: {v}" for k, v in provenance.items()))
    print(
        f"  load average before/after: {numbers['load_average_before']} / {numbers['load_average_after']}"
        f" on {numbers['cpu_count']} CPUs; app start {numbers['server_start_s']} s"
    )
    print(
        f"  sent {len(outcomes)} requests in {wall:.1f} s ({numbers['throughput_rps']} req/s), "
        f"unsent {unsent}  [{mark(unsent == 0)}]"
    )
    print(f"  errors on good inputs: {len(good_errors)} of {len(good)}  [{mark(not good_errors)}: must be 0]")
    print(
        f"  bad inputs answered with the decoder's message: {len(bad) - len(bad_errors)} of {len(bad)}"
        f"  [{mark(not bad_errors)}]"
    )
    print(
        f"  warm-up pass: {len(warm) - len(warm_errors)} of {len(warm)} answered as expected"
        f"  [{mark(not warm_errors)}]"
    )
    print(
        f"  latency (client side, queue wait included): p50 {numbers['latency_p50_s']} s, "
        f"p95 {numbers['latency_p95_s']} s, max {numbers['latency_max_s']} s; "
        f"good inputs p50 {numbers['good_latency_p50_s']} s, p95 {numbers['good_latency_p95_s']} s"
    )
    print(
        f"  server RSS: {numbers['rss_start_mb']} MB after start, "
        f"{numbers['rss_warm_mb']} MB after warm-up, {numbers['rss_after_mb']} MB after the load "
        f"(drift {drift:+.1f} MB, target < {MAX_RSS_DRIFT_MB:.0f})"
        f"  [{mark(drift < MAX_RSS_DRIFT_MB)}]; peak {numbers['peak_rss_mb']} MB"
        + (f"; after each round: {numbers['rss_after_rounds_mb']} MB" if args.rounds > 1 else "")
    )
    print(
        f"  server alive: {alive}; same answer to a good request after the load: {still_same}"
        f"  [{mark(alive and still_same)}]"
    )
    print(
        f"  tracebacks in the server log: {tracebacks - pydicom_tracebacks} "
        f"(+{pydicom_tracebacks} logged by pydicom for undecodable DICOM pixel data)"
    )
    for outcome in (good_errors + bad_errors + warm_errors)[:10]:
        print(f"    {outcome.input.name}: {outcome.detail}")
    print("PASSED" if passed else "FAILED")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
