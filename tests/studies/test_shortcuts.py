"""Across-the-test-set shortcuts report: schema and counts on a small run, byte-identical
reruns, the Model report's markdown, and the command's answer without a checkpoint."""

from __future__ import annotations

import json

import keras
import pytest

from covid_xray import config, data, probe
from covid_xray.config import CLASS_NAMES, INPUT_SHAPE
from covid_xray.report.shortcuts import load_shortcuts, shortcuts_markdown
from covid_xray.studies import shortcuts

LEAKED_TEST = "test/Covid/radiopaedia-2019-novel-coronavirus-infected-pneumonia.jpg"
ITS_TWIN = "train/Covid/069.jpg"


def _small_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(16, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="chexnet")


@pytest.fixture(scope="module")
def small_run(data_dir, tmp_path_factory):
    train = data.list_samples(data_dir, "train")
    test = data.list_samples(data_dir, "test")
    train_few = [s for c in CLASS_NAMES for s in [t for t in train if t.label == c][:2]]
    train_few += [s for s in train if s.relpath == ITS_TWIN]
    test_few = [s for c in CLASS_NAMES for s in [t for t in test if t.label == c][:2]]
    test_few += [s for s in test if s.relpath == LEAKED_TEST]
    twins = {LEAKED_TEST: frozenset({ITS_TWIN})}
    model = _small_model()
    cache = tmp_path_factory.mktemp("cache")

    def run():
        # "chexnet" on a small stand-in: the real one has no checkpoint here.
        return shortcuts.compute(
            "chexnet", model, "imagenet", train_few, test_few, cache_dir=cache, twins=twins
        )

    return run(), run, test_few


def test_schema_and_counts_of_a_small_run(small_run):
    result, _, test_few = small_run
    assert result["model"] == "chexnet" and result["display_name"] == "CheXNet"
    assert result["command"] == config.SHORTCUTS_COMMAND.format(name="chexnet")
    assert result["feature_layer"] == "features" and result["n_train"] == 7 and result["k"] == 5
    assert set(result["masks"]) == set(probe.MASK_NAMES)
    assert [r["file"] for r in result["images"]] == sorted(s.relpath for s in test_few)
    official, clean = result["subsets"]["official"], result["subsets"]["leakage_free"]
    assert official["n"] == 7 and clean["n"] == 6  # the leaked image is left out
    for subset, rows in (
        (official, result["images"]),
        (clean, [r for r in result["images"] if not r["leaked"]]),
    ):
        for mask in probe.MASK_NAMES:
            flips = subset["masks"][mask]["flips"]
            assert flips["count"] == sum(mask in r["flipped_by"] for r in rows)
            assert flips["n"] == len(rows) and 0.0 <= flips["rate"] <= 1.0
            assert sum(subset["masks"][mask]["transitions"].values()) == flips["count"]
        assert subset["nearest_shares_true"]["count"] == sum(r["nearest"]["label"] == r["true"] for r in rows)
        assert subset["nearest_shares_predicted"]["count"] == sum(
            r["nearest"]["label"] == r["predicted"] for r in rows
        )
        assert subset["accuracy"]["count"] == sum(r["true"] == r["predicted"] for r in rows)
    leaked = next(r for r in result["images"] if r["file"] == LEAKED_TEST)
    assert leaked["leaked"] and leaked["nearest"] == {
        "file": ITS_TWIN,
        "label": "Covid",
        "distance": 0.0,
        "twin": True,
    }
    assert result["leaked_nearest_is_twin"] == {"count": 1, "n": 1, "rate": 1.0}
    for row in result["images"]:
        assert set(row["masks"]) == set(probe.MASK_NAMES)
        assert row["flipped_by"] == [
            m for m in probe.MASK_NAMES if row["masks"][m]["predicted"] != row["predicted"]
        ]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_reruns_are_byte_identical_and_written_where_the_report_reads(small_run, tmp_path):
    result, run, _ = small_run
    again = run()  # from the feature cache this time
    assert shortcuts.to_text(again) == shortcuts.to_text(result)
    path = shortcuts.write(result, tmp_path)
    assert path == tmp_path / "chexnet" / "shortcuts.json"
    assert json.loads(path.read_text()) == json.loads(shortcuts.to_text(result))
    text = path.read_text()
    assert text.endswith("}\n") and list(json.loads(text)) == sorted(json.loads(text))


def test_markdown_shows_every_mask_and_both_subsets(small_run, tmp_path):
    result, _, _ = small_run
    shortcuts.write(result, tmp_path)
    md = shortcuts_markdown("chexnet", tmp_path)
    assert "CheXNet" in md and "Official test (7)" in md and "Leakage-free test (6)" in md
    for mask in probe.MASKS:
        assert mask.description in md
    flips = result["subsets"]["official"]["masks"]["border"]["flips"]
    assert f"{flips['count']}/7" in md
    assert "predicted** class" in md and "1/1 (100%)" in md


def test_markdown_without_a_report_says_how_to_make_it(tmp_path):
    md = shortcuts_markdown("davidnet", tmp_path)
    assert "No shortcut report for DavidNet" in md and config.SHORTCUTS_COMMAND.format(name="davidnet") in md


def test_the_command_without_a_checkpoint_ends_with_a_message(tmp_path, capsys):
    code = shortcuts.main(
        ["--model", "chexnet", "--checkpoint-dir", str(tmp_path), "--reports-dir", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "CheXNet cannot be probed without its checkpoint" in err and "python train.py --model chexnet" in err
    )
    assert not (tmp_path / "chexnet").exists()


def test_committed_davidnet_report_matches_this_code():
    report = load_shortcuts("davidnet")
    assert report is not None, "reports/davidnet/shortcuts.json is missing: run the command"
    assert report["format_version"] == shortcuts.FORMAT_VERSION
    assert set(report["masks"]) == set(probe.MASK_NAMES)
    assert report["subsets"]["official"]["n"] == 66
    assert report["feature_layer"] == config.MODELS["davidnet"].feature_layer
    from covid_xray.checkpoints import read_metadata
    from covid_xray.config import MODELS

    assert report["model_sha256"] == read_metadata(MODELS["davidnet"].checkpoint_path())["sha256"]
