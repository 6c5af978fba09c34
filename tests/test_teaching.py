"""See the shortcut on the page: the runtime's tools (index + probe) and the values the app shows."""

from __future__ import annotations

import importlib
import sys

import pytest

from covid_xray import teaching
from covid_xray.runtime import AppRuntime

COVID_IMAGE = "test/Covid/0100.jpeg"
LEAKED_IMAGE = "test/Covid/COVID-00003b.jpg"


@pytest.fixture(scope="module")
def runtime(predictor_davidnet, data_dir):
    """DavidNet (random weights) served with its probe and its index of the 251 training films."""
    from covid_xray.probe import Probe

    runtime = AppRuntime.serving(predictor_davidnet)
    runtime.probes["davidnet"] = Probe.for_loaded(predictor_davidnet.loaded["davidnet"])
    runtime._prepare_indexes()
    assert "davidnet" in runtime.indexes and len(runtime.indexes["davidnet"]) == 251
    return runtime


def test_explore_finds_films_and_probes_masks(runtime, data_dir):
    views = teaching.explore(runtime, str(data_dir / COVID_IMAGE))
    davidnet, chexnet = views["davidnet"], views["chexnet"]
    assert len(davidnet.neighbours) == teaching.NEIGHBOURS_K
    distances = [n.distance for n in davidnet.neighbours]
    assert distances == sorted(distances)
    assert all(n.file.startswith("train/") for n in davidnet.neighbours)
    assert {o.mask for o in davidnet.probe.outcomes} == set(teaching.MASK_LABELS) - {"none"}
    assert chexnet.neighbours == [] and chexnet.probe is None and "not available" in chexnet.message


def test_a_leaked_test_image_finds_its_copy_first(runtime, data_dir):
    view = teaching.explore(runtime, str(data_dir / LEAKED_IMAGE))["davidnet"]
    first = view.neighbours[0]
    assert first.twin and first.distance == pytest.approx(0.0, abs=1e-6)
    assert "copy in the training set" in teaching.summary_markdown(view)


def test_page_values(runtime, data_dir):
    sys.modules.pop("app", None)
    app = importlib.import_module("app")
    values = app.shortcut_values(runtime, str(data_dir / COVID_IMAGE))
    summary, items, figure, *chexnet = values
    assert "Nearest training film" in summary
    assert len(items) == teaching.NEIGHBOURS_K and items[0][0].ndim == 3 and "distance" in items[0][1]
    assert figure is not None and len(figure.axes[0].patches) == 3 * len(teaching.MASK_LABELS)
    assert "not available" in chexnet[0] and chexnet[1] == [] and chexnet[2] is None
    assert app.shortcut_values(runtime, None)[0] == "Choose or upload an image first."
