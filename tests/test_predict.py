"""`python -m covid_xray.predict`: folders stand for their image files; the output is the API's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
        [sys.executable, "-m", "covid_xray.predict", str(folder), "--json", "--checkpoint-dir",
         str(checkpoint_dir_davidnet)],
        cwd=config.PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
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
