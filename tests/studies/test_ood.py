"""`python -m covid_xray.studies.ood`: fitting and measuring the input guard with a randomly
initialised DavidNet on the real dataset (no training)."""

from __future__ import annotations

import json
import math

import pytest

from covid_xray import imaging, ood, synthetic
from covid_xray.studies import ood as ood_study


@pytest.fixture(scope="module")
def random_davidnet_dir(tmp_path_factory):
    import keras

    from covid_xray.checkpoints import save_checkpoint
    from covid_xray.models import build_davidnet

    keras.utils.set_random_seed(1)
    directory = tmp_path_factory.mktemp("random_davidnet")
    metadata = {
        "model": "davidnet",
        "preprocessing": "unit",
        "config": {"protocol": "default", "val_fraction": 0.2, "seed": 42},
    }
    save_checkpoint(build_davidnet(), directory / "davidnet.keras", metadata)
    return directory


def test_fit_refuses_an_unknown_layer(random_davidnet_dir):
    with pytest.raises(ood.GuardError, match="no layer named 'nope'"):
        ood_study.fit_guard("davidnet", random_davidnet_dir, layer="nope")


def test_measure_cli_without_a_checkpoint_exits_with_a_message(tmp_path, capsys):
    assert ood_study.main(["measure", "--model", "davidnet", "--checkpoint-dir", str(tmp_path)]) == 2
    assert "python train.py --model davidnet" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_check_and_measure_with_a_random_davidnet(random_davidnet_dir, data_dir, tmp_path):
    from covid_xray import data
    from covid_xray.checkpoints import read_metadata

    feature_guard, path = ood_study.fit_guard("davidnet", random_davidnet_dir, data_dir)
    assert path == random_davidnet_dir / "ood_davidnet.json"
    splits = data.make_splits(data_dir, val_fraction=0.2, seed=42)
    info = feature_guard.info
    assert info["n_train"] == len(data.list_samples(data_dir, "train")) and info["folds"] == ood.CV_FOLDS
    assert feature_guard.feature_layer == "conv3" and feature_guard.dim == 64
    assert math.isfinite(feature_guard.threshold) and feature_guard.threshold > 0
    assert feature_guard.threshold <= info["out_of_fold_scores"]["max"] + 1e-9
    assert feature_guard.model_sha256 == read_metadata(random_davidnet_dir / "davidnet.keras")["sha256"]

    guard = ood.load_guard("davidnet", random_davidnet_dir)
    assert guard is not None and guard.learned_enabled
    sample = splits["test"][0]
    rgb = imaging.load_image(sample.path, draft_size=448)
    result = guard.check(rgb)
    assert result.learned_check
    assert all(math.isfinite(v) for v in result.scores.values())

    assert (
        ood_study.main(
            [
                "measure",
                "--model",
                "davidnet",
                "--checkpoint-dir",
                str(random_davidnet_dir),
                "--data-dir",
                str(data_dir),
                "--out",
                str(tmp_path / "ood.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "ood.json").read_text())["models"]["davidnet"]
    assert report["test_false_alarm"]["official"]["n"] == 66
    real = report["real_xray_false_alarm"]
    assert real["train_out_of_fold"]["n"] == info["n_train"] and real["all_real"]["n"] == info["n_train"] + 66
    assert real["curated_examples"]["n"] == 9
    # measure recomputes the out-of-fold distances: the same images above the threshold as fit counted.
    flagged = real["train_out_of_fold"]["learned_only"] * info["n_train"]
    assert flagged == pytest.approx(info["out_of_fold_flagged"])
    assert report["non_xray_hit_rate"]["overall"]["n"] >= 40
    assert set(report["non_xray_hit_rate"]["per_category"]) == set(synthetic.NON_XRAY_CATEGORIES)
    assert report["learned_check"] is True
