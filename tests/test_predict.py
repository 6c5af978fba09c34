"""`python -m covid_xray.predict`: folders stand for their image files; the output is the API's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covid_xray import config
from covid_xray.predict import expand_inputs


def test_a_folder_stands_for_its_image_files_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.PNG", "a.jpeg", "b/1.dcm", ".hidden.png", "notes.txt", "c.gif"):
        (tmp_path / name).write_bytes(b"x")
    single = tmp_path / "notes.txt"
    assert expand_inputs([str(tmp_path), str(single), "missing.png"]) == [
        str(tmp_path / "a.jpeg"),
        str(tmp_path / "b" / "1.dcm"),
        str(tmp_path / "b" / "2.PNG"),
        str(tmp_path / "c.gif"),
        str(single),  # named explicitly: kept (and reported if it is not an image)
        "missing.png",
    ]
    inner = tmp_path / "b"
    assert expand_inputs([str(inner)]) == [str(inner / "1.dcm"), str(inner / "2.PNG")]


@pytest.mark.slow  # a TensorFlow process
def test_command_on_a_folder_prints_the_api_json_of_every_image(data_dir, checkpoint_dir_davidnet, tmp_path):
    from covid_xray.inference import Predictor

    folder = data_dir / "test" / "Viral Pneumonia"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "covid_xray.predict",
            str(folder),
            "--json",
            "--checkpoint-dir",
            str(checkpoint_dir_davidnet),
        ],
        cwd=config.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    files = expand_inputs([str(folder)])
    assert [entry["file"] for entry in lines] == files and len(files) >= 10
    predictor = Predictor.from_checkpoints(checkpoint_dir_davidnet, warm_up=False)
    for entry in lines[:3]:
        expected = predictor.predict(entry["file"], method=None).to_api_json()
        assert entry["davidnet"]["prediction"] == expected["davidnet"]["prediction"]
        for name, p in expected["davidnet"]["probabilities"].items():
            assert entry["davidnet"]["probabilities"][name] == pytest.approx(p, abs=1e-6)
        assert entry["chexnet"]["available"] is False


def test_hidden_modules_cannot_be_imported_inside_the_block_only(tmp_path, monkeypatch):
    from covid_xray.predict import hidden_modules

    (tmp_path / "covid_probe_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "covid_probe_module", raising=False)
    with hidden_modules(("covid_probe_module", "json")):
        with pytest.raises(ImportError):
            import covid_probe_module  # noqa: F401
        import json as already_imported  # imported before the block: left alone

        assert already_imported.dumps(1) == "1"
    import covid_probe_module

    assert covid_probe_module.VALUE == 1


# Modules the command must not import: the app's UI library, and libraries that Keras imports for
# features the command does not use; matplotlib only with --heatmap-dir (its colour map).
HEAVY_MODULES = ("gradio", "sklearn", "pandas", "matplotlib")
_RUN_AND_LIST_MODULES = (
    "import json, sys\n"
    "from covid_xray.predict import main\n"
    "status = main(sys.argv[1:])\n"
    f"print('MODULES ' + json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]), file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def test_main_in_process_leaves_tensorflow_compiling(tmp_path, capsys):
    """Regression: main() on one file switched TensorFlow to eager mode for the rest of the process
    (tests running it in-process then saw no trace at all)."""
    import tensorflow as tf

    from covid_xray.predict import main, running_eagerly

    assert main(["--checkpoint-dir", str(tmp_path), str(tmp_path / "absent.jpg")]) == 1
    assert "No such file" in capsys.readouterr().out
    assert tf.config.functions_run_eagerly() is False
    with running_eagerly(True):
        assert tf.config.functions_run_eagerly() is True
        with running_eagerly(False):  # an inner block never turns off what an outer one set
            assert tf.config.functions_run_eagerly() is True
    assert tf.config.functions_run_eagerly() is False


def _predict_json(args, checkpoint_dir) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "covid_xray.predict", *map(str, args), "--json"]
        + ["--checkpoint-dir", str(checkpoint_dir)],
        cwd=config.PROJECT_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {Path(entry["file"]).name: entry for entry in map(json.loads, completed.stdout.splitlines())}


@pytest.mark.slow  # TensorFlow processes
def test_few_images_run_eagerly_with_the_same_output_as_the_compiled_functions(
    data_dir, checkpoint_dir_both, tmp_path
):
    """Up to EAGER_MAX_IMAGES the command skips tracing; a longer folder runs compiled. Both
    models' JSON (probabilities to the last digit, input check) is the same either way."""
    from covid_xray.predict import EAGER_MAX_IMAGES

    sources = sorted((data_dir / "test" / "Covid").iterdir())[: EAGER_MAX_IMAGES + 2]
    folder = tmp_path / "folder"
    folder.mkdir()
    for source in sources:
        (folder / source.name).write_bytes(source.read_bytes())
    compiled = _predict_json([folder], checkpoint_dir_both)
    eager = _predict_json(sources[:2], checkpoint_dir_both)
    assert len(compiled) == EAGER_MAX_IMAGES + 2 and len(eager) == 2
    for name, entry in eager.items():
        assert entry["davidnet"]["available"] and entry["chexnet"]["available"]
        assert {k: v for k, v in entry.items() if k != "file"} == {
            k: v for k, v in compiled[name].items() if k != "file"
        }


@pytest.mark.slow  # TensorFlow processes
def test_command_imports_only_what_it_needs(data_dir, checkpoint_dir_davidnet, tmp_path):
    from covid_xray.inference import Predictor

    image = str(data_dir / "test" / "Covid" / "0100.jpeg")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    imported = {}
    for run, extra in (("plain", []), ("heatmaps", ["--heatmap-dir", str(tmp_path / "maps")])):
        completed = subprocess.run(
            [sys.executable, "-c", _RUN_AND_LIST_MODULES, image, "--json"]
            + ["--checkpoint-dir", str(checkpoint_dir_davidnet), *extra],
            cwd=config.PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        line = next(x for x in completed.stderr.splitlines() if x.startswith("MODULES "))
        imported[run] = json.loads(line.removeprefix("MODULES "))
    assert imported["plain"] == []
    assert imported["heatmaps"] == ["matplotlib"]  # the overlay's colour map, imported after Keras
    # The overlay written is the one the predictor computes in this (fully imported) process.
    from PIL import Image

    predictor = Predictor.from_checkpoints(checkpoint_dir_davidnet, warm_up=False)
    expected = predictor.predict(image, method="gradcam").models["davidnet"].overlay
    with Image.open(tmp_path / "maps" / "0100_davidnet.png") as saved:
        written = np.asarray(saved)
    assert written.shape == expected.shape
    # Another process may differ by float round-off (thread counts): one level at most.
    assert np.abs(written.astype(int) - expected).max() <= 1


def test_workers_below_one_are_refused(tmp_path, capsys):
    from covid_xray.predict import main

    with pytest.raises(SystemExit) as info:
        main(["--workers", "0", str(tmp_path / "a.png")])
    assert info.value.code == 2 and "--workers must be at least 1" in capsys.readouterr().err
