"""`python -m covid_xray.studies.faithfulness`: skipping an untrained model, and the whole run on a
tiny checkpoint and three real test images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covid_xray import config
from covid_xray.report.faithfulness import border_mass_summary, faithfulness_image_path, faithfulness_markdown
from covid_xray.studies import faithfulness as study


def test_cli_skips_a_model_without_checkpoint(tmp_path, capsys):
    assert (
        study.main(["--model", "chexnet", "--checkpoint-dir", str(tmp_path), "--reports-dir", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "Skipping CheXNet" in out and config.TRAIN_INSTALL_COMMAND.format(name="chexnet") in out
    assert config.FAITHFULNESS_COMMAND.format(name="chexnet") in out
    assert not (tmp_path / "chexnet").exists()


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_checkpoint(tmp_path, data_dir, capsys):
    from covid_xray.checkpoints import sha256_file
    from tests.app_fixtures import make_checkpoint_dir

    checkpoints = make_checkpoint_dir(tmp_path / "checkpoints", models=("davidnet",))
    reports = tmp_path / "reports"
    args = [
        "--model",
        "davidnet",
        "chexnet",
        "--data-dir",
        str(data_dir),
        "--checkpoint-dir",
        str(checkpoints),
        "--reports-dir",
        str(reports),
        "--limit",
        "3",
        "--seed",
        "4",
    ]
    assert study.main(args) == 0
    out = capsys.readouterr().out
    assert "Skipping CheXNet" in out

    path = reports / "davidnet" / config.FAITHFULNESS_FILE
    report = json.loads(path.read_text())
    cfg = report["config"]
    assert cfg["methods"] == ["gradcam", "gradcam++", "scorecam"] and cfg["ks"] == [0.05, 0.1, 0.2]
    assert cfg["n_images"] == 3 and cfg["seed"] == 4 and cfg["fill"] == "mean"
    assert cfg["checkpoint_sha256"] == sha256_file(checkpoints / "davidnet.keras")
    assert cfg["uniform_border_mass"] == 0.36
    official = report["results"]["official"]
    assert official["n"] == 3 and report["results"]["leakage_free"]["n"] == cfg["n_leakage_free"]
    assert len(report["images"]) == 3 and "timings_s" not in report
    for method in cfg["methods"]:
        deletion = official["methods"][method]["deletion"]["0.1"]
        per_image = [img["methods"][method]["drop"][1] for img in report["images"]]
        assert deletion["heatmap_drop"] == pytest.approx(np.mean(per_image), abs=1e-5)
        assert 0.0 <= deletion["beats_random"] <= 1.0
    png = faithfulness_image_path("davidnet", reports)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = faithfulness_markdown("davidnet", reports)
    grad = official["methods"]["gradcam"]
    assert f"{grad['deletion']['0.05']['heatmap_drop']:.3f} / {official['random_drop']['0.05']:.3f}" in text
    assert "--limit 3" in text
    summary = border_mass_summary("davidnet", reports)
    assert summary["methods"]["gradcam"]["mean"] == grad["border_mass"]["mean"]

    # Deterministic given the seed: a second run writes the same bytes.
    first = path.read_bytes()
    assert study.main(args) == 0
    assert path.read_bytes() == first
