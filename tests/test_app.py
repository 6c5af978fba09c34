"""The Gradio app: its handlers in-process, then a real `python app.py` server through gradio_client.

The server tests start app.py as a subprocess on a free loopback port with both models (random
weights) and check the documented `predict` API, error handling, and that Gradio's file routes
serve none of the files the app does not mean to serve.
"""

from __future__ import annotations

import importlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from covid_xray import config
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES
from covid_xray.explain import colorbar_width
from tests.app_fixtures import GALLERY_ROWS, SERVER_MAX_UPLOAD_BYTES

COVID_IMAGE = "test/Covid/0100.jpeg"
NORMAL_IMAGE = "test/Normal/0101.jpeg"
# Outputs of the diagnose handler: status, preview, (summary, label, overlay) x 2, answer, json,
# input-check warning.
N_DIAGNOSE = 2 + 3 * len(config.MODELS) + 3


@pytest.fixture(scope="module")
def app_module():
    """app.py imported as a module (importing it must not load any model)."""
    sys.modules.pop("app", None)
    module = importlib.import_module("app")
    assert not hasattr(module, "demo"), "app.py must only build its demo under __main__ / create_app()"
    return module


def _fake_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not an X-ray")
    return path


# ---------------------------------------------------------------------------
# Handlers, in-process.
# ---------------------------------------------------------------------------
def test_diagnose_handler(app_module, runtime_davidnet, predictor_davidnet, data_dir):
    values = app_module.diagnose(runtime_davidnet, str(data_dir / COVID_IMAGE), "gradcam", 0.4, "answer")
    assert len(values) == N_DIAGNOSE
    (
        status,
        preview,
        d_summary,
        d_label,
        d_overlay,
        c_summary,
        c_label,
        c_overlay,
        answer,
        payload,
        warning,
    ) = values
    assert status == ""
    assert preview.shape == (512, 512, 3)
    assert d_overlay.shape == (512, 512 + colorbar_width(512, 512), 3)  # the colour scale beside it
    assert "DavidNet" in d_summary and "Grad-CAM" in d_summary
    assert sum(d_label.values()) == pytest.approx(1.0, abs=1e-5)
    assert (c_summary, c_label, c_overlay) == ("", None, None)  # CheXNet not installed
    assert answer == "answer"
    assert payload["chexnet"]["available"] is False
    assert warning == ""  # a real chest X-ray: no input-check warning


def test_diagnose_handler_bad_file_clears_outputs(app_module, runtime_davidnet, predictor_davidnet, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, inline: no toast (gr.Warning) repeating it
        values = app_module.diagnose(runtime_davidnet, str(_fake_png(tmp_path)), "gradcam", 0.4)
    assert len(values) == N_DIAGNOSE
    assert values[0].startswith("**Could not read this file.**") and "JPEG" in values[0]
    assert all(v in (None, "") for v in values[1:])
    assert app_module.diagnose(runtime_davidnet, None, "gradcam", 0.4) == [
        "",
        None,
        "",
        None,
        None,
        "",
        None,
        None,
        "",
        None,
        "",
    ]


def test_api_handler(app_module, runtime_davidnet, predictor_davidnet, data_dir, tmp_path):
    payload = app_module.api_predict(runtime_davidnet, str(data_dir / COVID_IMAGE))
    assert payload["davidnet"]["prediction"] in CLASS_NAMES
    chexnet = payload["chexnet"]
    assert chexnet["available"] is False and chexnet["state"] == "missing"
    assert chexnet["message"] == "CheXNet is not installed on this server."
    assert "python train.py --model chexnet" in chexnet["detail"]
    assert "/" not in chexnet["message"] and str(config.PROJECT_ROOT) not in json.dumps(payload)
    with pytest.raises(gr.Error):
        app_module.api_predict(runtime_davidnet, str(_fake_png(tmp_path)))
    with pytest.raises(gr.Error):
        app_module.api_predict(runtime_davidnet, None)


def test_example_source(app_module, data_dir):
    path, answer = app_module.example_source(0, data_dir=data_dir)
    assert path.startswith(str(data_dir)) and "True label" in answer


def test_gallery_handlers(app_module, runtime_davidnet, predictor_davidnet, reports_dir, data_dir):
    items, cases, status = app_module.refresh_gallery(
        "davidnet", app_module.ANY, app_module.ANY, "official", "misclassified", None, reports_dir, data_dir
    )
    assert len(items) == len(cases) == 3 and status == "3 test images match."
    assert items[0][1] == "COVID-19 > Normal (80.0%)"  # confidence as the model columns show it
    items, cases, _ = app_module.refresh_gallery(
        "davidnet", "Normal", app_module.ANY, "official", "both_wrong", None, reports_dir, data_dir
    )
    assert [c.file for c in cases] == ["test/Normal/0103.jpeg"]
    details, image, *model_values = app_module.open_case(runtime_davidnet, cases, 0, "gradcam", 0.3, data_dir)
    assert "0103" in details and image.shape == (512, 512, 3)
    assert model_values[2].shape[0] == image.shape[0]  # DavidNet overlay (+ its colour-scale strip)
    assert model_values[3:] == ["", None, None]


def test_build_demo_without_chexnet(app_module, runtime_davidnet, predictor_davidnet, reports_dir, data_dir):
    demo = app_module.build_demo(runtime_davidnet, reports_dir=reports_dir, data_dir=data_dir)
    assert isinstance(demo, gr.Blocks)
    api_names = [dep.get("api_name") for dep in demo.config["dependencies"]]
    assert "predict" in api_names
    texts = [c.get("props", {}).get("value") for c in demo.config["components"]]
    texts = [t for t in texts if isinstance(t, str)]
    assert "CheXNet is not installed on this server." in texts
    assert any("python train.py --model chexnet" in t for t in texts)  # the operator's accordion
    assert any("Not for diagnosis" in t for t in texts)
    assert not [t for t in texts if str(config.PROJECT_ROOT) in t or str(Path.home()) in t]


def test_build_demo_without_dataset(app_module, runtime_davidnet, predictor_davidnet, reports_dir, tmp_path):
    demo = app_module.build_demo(runtime_davidnet, reports_dir=reports_dir, data_dir=tmp_path)
    texts = [c.get("props", {}).get("value") for c in demo.config["components"]]
    texts = [t for t in texts if isinstance(t, str)]
    assert any("test images are not available on this server" in t for t in texts)
    assert any(config.DOWNLOAD_COMMAND in t and config.DATA_ENV_VAR in t for t in texts)
    assert not [t for t in texts if str(tmp_path) in t or str(config.PROJECT_ROOT) in t]


def test_broken_committed_files_do_not_take_the_app_down(
    app_module, runtime_davidnet, predictor_davidnet, data_dir, tmp_path
):
    broken = tmp_path / "davidnet" / "predictions.csv"
    broken.parent.mkdir()
    broken.write_text("file,true\ntest/Covid/0100.jpeg,Covid\n")
    items, cases, status = app_module.refresh_gallery(
        "davidnet", app_module.ANY, app_module.ANY, "official", "misclassified", None, tmp_path, data_dir
    )
    assert (items, cases) == ([], []) and "cannot be read" in status
    examples = tmp_path / "examples.csv"
    examples.write_text("file,label,note\ntest/Covid/0100.jpeg,Pneumonia,wrong label\n")
    demo = app_module.build_demo(
        runtime_davidnet, reports_dir=tmp_path, data_dir=data_dir, examples_file=examples
    )
    assert isinstance(demo, gr.Blocks)


def test_blocked_paths_cover_private_folders(app_module):
    blocked = app_module.blocked_paths()
    assert str(config.resolve_checkpoint_dir()) in blocked
    assert str(config.resolve_data_dir()) in blocked


# ---------------------------------------------------------------------------
# Quiz tab, in-process.
# ---------------------------------------------------------------------------
def _interactive(updates: list) -> list:
    return [update["interactive"] for update in updates]


def test_quiz_handlers_play_a_whole_quiz(
    app_module, runtime_davidnet, predictor_davidnet, reports_dir, data_dir
):
    installed = predictor_davidnet.available_models
    values = app_module.quiz_start("hard", installed, seed=1, data_dir=data_dir, reports_dir=reports_dir)
    assert len(values) == app_module.N_QUIZ_OUTPUTS
    state, status, image, reveal, *model_values, score = values[: -len(CLASS_NAMES) - 1]
    # Hard cases: DavidNet's errors in the fixture reports (CheXNet is not installed: its errors do
    # not count).
    assert sorted(q.file for q in state.order) == sorted(
        file for file, true, davidnet, *_ in GALLERY_ROWS if davidnet != true
    )
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
    assert "Question 1 of 3" in status and reveal == "" and model_values == ["", None, None] * 2
    assert "answered: 0 of 3" in score and "| CheXNet | not installed |" in score
    assert _interactive(values[-4:]) == [True, True, True, False]  # answers on, Next off
    question = state.current
    for text in (v for v in values[1:] if isinstance(v, str)):  # state stays on the server
        assert question.file not in text and Path(question.file).name not in text

    values = app_module.quiz_answer(runtime_davidnet, state, question.truth, data_dir)
    assert len(values) == app_module.N_QUIZ_OUTPUTS
    revealed, status, image, reveal, d_summary, d_label, d_overlay, *chexnet = values[:10]
    assert image == gr.skip()  # the X-ray stays as it is
    assert f"Truth: {CLASS_DISPLAY_NAMES[question.truth]}" in reveal and "**correct**" in reveal
    assert question.file in reveal  # after the answer, the file may be named
    assert "Grad-CAM" in d_summary and d_overlay.ndim == 3 and sum(d_label.values()) == pytest.approx(1.0)
    assert chexnet == ["", None, None]
    # Models are scored on their live prediction of the image.
    live = predictor_davidnet.predict(str(data_dir / question.file), method=None).models["davidnet"]
    davidnet = revealed.scores["davidnet"]
    assert (davidnet.answered, davidnet.correct) == (1, int(live.predicted == question.truth))
    assert revealed.scores["student"].correct == 1 and "answered: 1 of 3" in values[10]
    assert _interactive(values[-4:]) == [False, False, False, True]

    with pytest.warns(UserWarning, match="already answered"):
        again = app_module.quiz_answer(runtime_davidnet, revealed, question.truth, data_dir)
    assert "already answered" in again[1]
    assert all(v == gr.skip() for i, v in enumerate(again) if i != 1)  # nothing else changes

    state = revealed
    for number in (2, 3):
        values = app_module.quiz_next(state, data_dir)
        state = values[0]
        assert state.phase == "asking" and f"Question {number} of 3" in values[1]
        assert isinstance(values[2], np.ndarray) and values[3] == "" and values[4:10] == ["", None, None] * 2
        state = app_module.quiz_answer(runtime_davidnet, state, "Normal", data_dir)[0]
    values = app_module.quiz_next(state, data_dir)
    assert values[0].phase == "finished" and "Quiz finished" in values[1] and values[2] is None
    assert "answered: 3 of 3" in values[-5] and _interactive(values[-4:]) == [False] * 4
    with pytest.warns(UserWarning, match="quiz is over"):
        app_module.quiz_next(values[0], data_dir)


def test_quiz_start_refusals(
    app_module, runtime_davidnet, predictor_davidnet, reports_dir, data_dir, tmp_path
):
    installed = predictor_davidnet.available_models
    values = app_module.quiz_start("all", installed, data_dir=tmp_path, reports_dir=reports_dir)
    assert "test images are not available on this server" in values[1]
    assert all(v == gr.skip() for i, v in enumerate(values) if i != 1)  # a running quiz is kept
    values = app_module.quiz_start("hard", installed, data_dir=data_dir, reports_dir=tmp_path)
    assert "no installed model has been evaluated" in values[1] and values[0] == gr.skip()
    values = app_module.quiz_start("all", installed, seed=5, data_dir=data_dir, reports_dir=tmp_path)
    assert len(values[0].order) == 66  # all of the official test split


def _by_elem_id(demo: gr.Blocks) -> dict[str, dict]:
    return {c["props"]["elem_id"]: c for c in demo.config["components"] if c.get("props", {}).get("elem_id")}


def test_quiz_tab_layout_and_events(
    app_module, runtime_davidnet, predictor_davidnet, reports_dir, data_dir, tmp_path
):
    demo = app_module.build_demo(runtime_davidnet, reports_dir=reports_dir, data_dir=data_dir)
    tabs = [c["props"]["label"] for c in demo.config["components"] if c["type"] == "tabitem"]
    assert tabs.index("Error gallery") < tabs.index("Quiz") < tabs.index("Model report")
    components = _by_elem_id(demo)
    answers = [components[f"quiz-answer-{c.lower().replace(' ', '-')}"] for c in CLASS_NAMES]
    assert [b["props"]["value"] for b in answers] == [CLASS_DISPLAY_NAMES[c] for c in CLASS_NAMES]
    assert components["quiz-new"]["props"]["interactive"] is True
    assert not any(b["props"]["interactive"] for b in (*answers, components["quiz-next"]))
    assert components["quiz-chexnet-missing"]["props"]["value"] == "CheXNet is not installed on this server."
    assert components["quiz-missing"]["props"]["visible"] is False
    # Answers run the models: they queue with every other model event and are not public API.
    answer_ids = {b["id"] for b in answers}
    quiz_ids = answer_ids | {components[k]["id"] for k in ("quiz-new", "quiz-next")}
    events = [d for d in demo.config["dependencies"] if any(t[0] in quiz_ids for t in d["targets"])]
    assert len(events) == len(CLASS_NAMES) + 2
    for event in events:
        assert event["api_visibility"] in ("private", "undocumented")
        if event["targets"][0][0] in answer_ids:
            assert demo.fns[event["id"]].concurrency_id == app_module.MODEL_QUEUE

    demo = app_module.build_demo(runtime_davidnet, reports_dir=reports_dir, data_dir=tmp_path)
    components = _by_elem_id(demo)
    assert "not available on this server" in components["quiz-missing"]["props"]["value"]
    assert components["quiz-missing"]["props"]["visible"] is True
    assert components["quiz-new"]["props"]["interactive"] is False
    assert components["quiz-mode"]["props"]["interactive"] is False


# ---------------------------------------------------------------------------
# A real server.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


def _predict(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/predict")


@pytest.mark.slow
def test_api_predict_on_a_real_image(client, data_dir):
    result = _predict(client, data_dir / COVID_IMAGE)
    assert set(result) == {"davidnet", "chexnet", "input_check"}
    assert result["input_check"] == {"is_xray_likely": True, "warnings": []}
    for entry in (result[name] for name in ("davidnet", "chexnet")):
        assert entry["available"] is True
        assert entry["prediction"] in CLASS_NAMES
        assert list(entry["probabilities"]) == list(CLASS_NAMES)
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert entry["prediction"] == max(entry["probabilities"], key=entry["probabilities"].get)
    # Same input, same output.
    assert _predict(client, data_dir / COVID_IMAGE) == result


@pytest.mark.slow
def test_readme_curl_commands_call_the_api(app_server, client, data_dir, tmp_path):
    """The README's three HTTP requests (upload, call, result), run as written with curl, give the
    JSON that gradio_client gets."""
    import re
    import shutil
    import subprocess

    readme = (config.PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"the same call is three HTTP requests.*?```bash\n(.*?)```", readme, re.S).group(1)
    assert shutil.which("curl"), "curl is missing (.ci/run installs it)"
    image = tmp_path / "chest.png"
    shutil.copyfile(data_dir / COVID_IMAGE, image)
    script = block.replace("http://127.0.0.1:7860", app_server.url.rstrip("/"))
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "event: complete" and lines[1].startswith("data: ")
    assert json.loads(lines[1][len("data: "):]) == [_predict(client, image)]


@pytest.mark.slow
def test_api_is_documented(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/predict" in endpoints
    assert len(endpoints["/predict"]["parameters"]) == 1


@pytest.mark.slow
def test_bad_upload_is_an_error_and_the_server_stays_up(client, data_dir, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not an image"):
        _predict(client, _fake_png(tmp_path))
    assert _predict(client, data_dir / NORMAL_IMAGE)["davidnet"]["available"] is True


@pytest.mark.slow
def test_oversized_upload_is_refused(app_server, client, data_dir, tmp_path):
    import httpx
    from PIL import Image

    # A valid PNG above the limit: only the upload limit can refuse it.
    noise = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > SERVER_MAX_UPLOAD_BYTES
    upload = app_server.url + "gradio_api/upload"
    response = httpx.post(upload, files={"files": ("big.png", big.read_bytes(), "image/png")}, timeout=60)
    assert response.status_code == 413
    small = (data_dir / COVID_IMAGE).read_bytes()
    assert httpx.post(upload, files={"files": ("x.jpeg", small, "image/jpeg")}, timeout=60).status_code == 200
    assert _predict(client, data_dir / NORMAL_IMAGE)["davidnet"]["available"] is True


def _status_and_body(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.mark.slow
@pytest.mark.parametrize("route", ["gradio_api/file=", "file="])
def test_private_files_are_not_served(app_server, data_dir, route):
    targets = {
        "/etc/passwd": b"root:",
        str(app_server.checkpoint_dir / "davidnet.keras"): b"PK",
        str(app_server.checkpoint_dir / "davidnet.json"): b"sha256",
        str(config.PROJECT_ROOT / "app.py"): b"gradio",
        "app.py": b"gradio",
        str(data_dir / COVID_IMAGE): b"\xff\xd8",
        str(app_server.reports_dir / "audit.json"): b"counts",
    }
    for path, signature in targets.items():
        status, body = _status_and_body(app_server.url + route + urllib.parse.quote(path))
        assert status != 200 or signature not in body, f"{route}{path} was served"


def test_report_and_about_tabs_show_calibration_faithfulness_and_shortcuts(
    app_module, runtime_davidnet, predictor_davidnet, data_dir
):
    from covid_xray import report

    demo = app_module.build_demo(runtime_davidnet, data_dir=data_dir)  # the committed reports/
    props = {c.get("props", {}).get("elem_id"): c.get("props", {}) for c in demo.config["components"]}
    assert props["calibration-davidnet"]["value"] == report.calibration_markdown("davidnet")
    assert props["faithfulness-davidnet"]["value"] == report.faithfulness_markdown("davidnet")
    assert "temperature" in props["calibration-davidnet"]["value"].lower()
    assert props["shortcuts"]["value"] == props["about-shortcuts"]["value"]
    assert "Grad-CAM puts" in props["shortcuts"]["value"]
    labels = [c.get("props", {}).get("label") for c in demo.config["components"]]
    assert "Reliability diagram" in labels
    # The fixture checkpoint has no temperature: its probabilities are labelled raw, never "calibrated".
    assert "Class probabilities (raw softmax, uncalibrated)" in labels
    assert not any("calibrated, temperature" in str(label) for label in labels)
    assert "Heatmap faithfulness: deletion test and border mass" in labels
    tabs = [c["props"]["label"] for c in demo.config["components"] if c["type"] == "tabitem"]
    assert tabs.index("Model report") < tabs.index("About")
