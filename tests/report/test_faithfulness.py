"""The report's faithfulness text (`covid_xray.report.faithfulness`) read from saved reports."""

from __future__ import annotations

import numpy as np
import pytest

from covid_xray import config
from covid_xray import faithfulness as ff
from covid_xray.report import faithfulness as rf
from covid_xray.studies import faithfulness as study


def test_reader_without_a_report_names_the_command(tmp_path):
    text = rf.faithfulness_markdown("davidnet", tmp_path)
    assert config.FAITHFULNESS_COMMAND.format(name="davidnet") in text
    assert rf.faithfulness_image_path("davidnet", tmp_path) is None
    assert rf.border_mass_summary("davidnet", tmp_path) is None
    (tmp_path / "davidnet").mkdir()
    (tmp_path / "davidnet" / config.FAITHFULNESS_FILE).write_text("{not json")
    assert config.FAITHFULNESS_COMMAND.format(name="davidnet") in rf.faithfulness_markdown(
        "davidnet", tmp_path
    )


def _centred_noise(rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0, 0.01, (20, 3))
    return noise - noise.mean(axis=0)  # the mean difference is exactly the offset


def _synthetic_report(heat: dict[str, float], border: dict[str, float]) -> dict:
    """A report in the saved format: per-method mean drops (random: 0.1) and border masses."""
    rng = np.random.default_rng(0)
    ks = [0.05, 0.1, 0.2]
    random_drops = 0.1 + rng.normal(0, 0.01, (20, 3))
    subset = {
        "n": 20,
        "random_drop": {f"{k:g}": float(random_drops[:, j].mean()) for j, k in enumerate(ks)},
        "methods": {
            m: {
                "deletion": ff.summarize_deletion(
                    random_drops + drop - 0.1 + _centred_noise(rng), random_drops, ks
                ),
                "border_mass": ff.summarize_border(np.full(20, border[m])),
                "support": 0.5,
            }
            for m, drop in heat.items()
        },
    }
    return {
        "model": "davidnet",
        "display_name": "DavidNet",
        "config": {
            "methods": list(heat),
            "ks": ks,
            "fill": "mean",
            "random_draws": 3,
            "border": 0.1,
            "uniform_border_mass": 0.36,
            "n_images": 20,
            "limit": None,
        },
        "results": {"official": subset, "leakage_free": {**subset, "n": 17}},
    }


def test_markdown_reads_the_numbers_honestly(tmp_path):
    report = _synthetic_report(
        {"gradcam": 0.4, "gradcam++": 0.1, "scorecam": 0.1},
        {"gradcam": 0.55, "gradcam++": 0.37, "scorecam": 0.2},
    )
    study.write_report(report, tmp_path / "davidnet" / config.FAITHFULNESS_FILE)
    text = rf.faithfulness_markdown("davidnet", tmp_path)
    official = report["results"]["official"]
    grad = official["methods"]["gradcam"]
    assert f"{grad['deletion']['0.2']['heatmap_drop']:.3f} / {official['random_drop']['0.2']:.3f}" in text
    assert "| Grad-CAM |" in text and "| Grad-CAM++ |" in text and "| Score-CAM |" in text
    assert "| 100% / 0% | 0.55 / 0.55 |" in text and "0.36" in text
    # Deletion: Grad-CAM clearly beats random; the other two are indistinguishable from it.
    assert "random blobs for Grad-CAM (by 0.300; beyond two standard errors)" in text
    assert "Grad-CAM++ and Score-CAM are no better than random at 20%" in text
    # Border mass: one band each.
    assert "Grad-CAM (0.55) puts more of its mass on the image border" in text
    assert "Grad-CAM++ (0.37) puts about as much mass on the border as a uniform map" in text
    assert "Score-CAM (0.20) keeps most of its mass off the border" in text
    summary = rf.border_mass_summary("davidnet", tmp_path)
    assert summary["uniform"] == 0.36 and summary["n"] == 20
    assert summary["methods"]["gradcam"]["mean"] == pytest.approx(0.55)
    assert summary["leakage_free"]["n"] == 17


def test_the_report_and_the_shortcut_explainer_read_a_border_mass_the_same_way(tmp_path):
    """0.412 against a uniform 0.36: "more" in the faithfulness text and in the explainer alike."""
    from covid_xray.report.shortcuts import _border_mass_sentence

    report = _synthetic_report(
        {"gradcam": 0.4, "gradcam++": 0.1, "scorecam": 0.1},
        {"gradcam": 0.412, "gradcam++": 0.37, "scorecam": 0.2},
    )
    study.write_report(report, tmp_path / "davidnet" / config.FAITHFULNESS_FILE)
    assert "Grad-CAM (0.41) puts more of its mass on the image border" in rf.faithfulness_markdown(
        "davidnet", tmp_path
    )
    assert "41% of its heatmap in the outer 10%" in (sentence := _border_mass_sentence("davidnet", tmp_path))
    assert "more than the 36%" in sentence
