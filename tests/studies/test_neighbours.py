"""`python -m covid_xray.studies.neighbours`: the lookup timer and the leave-one-out agreement
(no time budget is asserted here: the command and benchmarks/bench.py print the figures)."""

from __future__ import annotations

import math

import numpy as np

from covid_xray.neighbours import NeighbourIndex
from covid_xray.studies.neighbours import leave_one_out_agreement, time_lookup


def test_time_lookup_returns_a_median_in_milliseconds():
    # 251 training films x 1024 pooled DenseNet121 features, the larger of the two models.
    rng = np.random.default_rng(0)
    features = np.maximum(rng.standard_normal((251, 1024)), 0).astype(np.float32)
    index = NeighbourIndex(features, [f"train/Covid/{i}.jpg" for i in range(251)], ["Covid"] * 251)
    ms = time_lookup(index, n=20)
    assert math.isfinite(ms) and ms > 0


def test_leave_one_out_agreement_counts_nearest_films_of_the_same_label():
    # Five tight pairs along five directions: each film's nearest other film is its pair mate.
    # Three pairs share a label, two do not: 6 of the 10 films agree with their nearest.
    rng = np.random.default_rng(1)
    centres = np.repeat(np.eye(5) * 5, 2, axis=0)
    features = (centres + rng.normal(0, 0.01, centres.shape)).astype(np.float32)
    labels = ["Covid", "Covid", "Normal", "Normal", "Covid", "Covid", "Covid", "Normal", "Normal", "Covid"]
    index = NeighbourIndex(features, [f"train/x/{i}.png" for i in range(10)], labels)
    assert leave_one_out_agreement(index) == 6 / 10
