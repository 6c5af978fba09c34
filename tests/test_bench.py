"""Smoke test of `benchmarks/bench.py`: it runs and prints every row of its table.

No timing is asserted here (timings belong to the benchmark's own output, on a known machine);
this only keeps the script working as the code it measures changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from covid_xray import config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCH = PROJECT_ROOT / "benchmarks" / "bench.py"
# A --quick run loads both models (DenseNet121 included) and trains a few epochs: generous on a
# busy 2-core machine.
TIMEOUT_S = 1500


def _bench_module():
    spec = importlib.util.spec_from_file_location("covid_xray_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(script, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a benchmark script as a user would (the dataset from the project's setting)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", COVID_XRAY_DATA=str(config.resolve_data_dir()))
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_quick_run_prints_every_row(tmp_path):
    bench = _bench_module()
    out = tmp_path / "bench.json"
    completed = run_script(BENCH, "--quick", "--skip-http", "--skip-cold-start", "--json", str(out))
    assert completed.returncode == 0, completed.stderr[-4000:]
    table = completed.stdout
    # The header names the machine, the load and where each model's weights came from.
    assert "machine:" in table and "load average" in table
    assert "CheXNet:" in table and "DavidNet:" in table
    for row in bench.ROWS:
        assert row.label in table, f"row {row.label!r} missing from:\n{table}"
        if row.target:
            assert f"[{row.target}]" in table
    assert "not measured" not in table

    saved = json.loads(out.read_text())
    assert set(saved["table"]) == {row.key for row in bench.ROWS}
    # HTTP rows are skipped on request, everything else is measured.
    for row in bench.ROWS:
        value = saved["table"][row.key]
        if row.section == bench.HTTP:
            assert value.startswith("skipped"), (row.key, value)
        else:
            assert not value.startswith("skipped"), (row.key, value)
    latency = saved["results"]["both_gradcam"]
    assert latency["n"] >= 1 and 0 < latency["p50_ms"] <= latency["p95_ms"]


def test_rejects_unknown_options():
    completed = run_script(BENCH, "--no-such-option", timeout=120)
    assert completed.returncode == 2
    assert "--no-such-option" in completed.stderr


@pytest.mark.slow
def test_startup_script_prints_every_phase():
    """`benchmarks/startup.py` runs the app's start-up phase by phase (no timing asserted)."""
    completed = run_script(PROJECT_ROOT / "benchmarks" / "startup.py")
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if " s  " in line]
    phases = [line.split(" s  ", 1)[1] for line in lines]
    for name in config.MODELS:
        assert any(p.startswith(f"load {name} checkpoint") for p in phases), completed.stdout
        assert f"trace + first run of {name}" in phases
    assert phases[:2] == ["import gradio", "import tensorflow"]
    assert "first request (both models + Grad-CAM)" in phases and phases[-1].startswith("total")
    # The total is the sum of the phases printed above it.
    values = [float(line.split(" s  ", 1)[0]) for line in lines]
    assert values[-1] == pytest.approx(sum(values[:-1]), abs=0.1)  # each value rounded to 0.01
