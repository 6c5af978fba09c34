"""Robustness and security: bad inputs through the API and the CLI, the OOD warning, input
limits, a tampered checkpoint, and Gradio's file routes.

The server tests share the session's one `python app.py` subprocess (`tests.app_fixtures.app_server`:
both models with random weights, a 2 MB upload limit); the CLI runs once over the whole corpus
with the committed checkpoints (DavidNet and its fitted OOD guard). The decoder itself is tested
on the same corpus in tests/test_imaging.py.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from covid_xray import config
from covid_xray.config import CLASS_NAMES, MODELS
from covid_xray.imaging import ImageDecodeError
from covid_xray.inference import Predictor, decode_source
from covid_xray.runtime import AppRuntime
from covid_xray.synthetic import CorpusCase, build_corpus, colour_photo, xray_like
from tests.app_fixtures import PROJECT_ROOT, SERVER_MAX_UPLOAD_BYTES

COVID_IMAGE = "test/Covid/0100.jpeg"
NORMAL_IMAGE = "test/Normal/0101.jpeg"
# The committed checkpoints (not $COVID_XRAY_CHECKPOINT_DIR): DavidNet and ood_davidnet.json.
COMMITTED_CHECKPOINTS = config.CHECKPOINT_DIR
# A CLI run over the whole corpus loads DavidNet once and decodes a 30-megapixel JPEG.
CLI_TIMEOUT_S = 600
COLOUR_WARNING = "in colour"
LEARNED_WARNING = "looks unlike the chest X-rays"
OOD_HEADLINE = "may not be a frontal chest X-ray"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[CorpusCase]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def _expected_error(case: CorpusCase) -> str:
    """The message the decoder gives for a bad corpus file (what the API and CLI must relay)."""
    with pytest.raises(ImageDecodeError) as info:
        decode_source(case.path)
    assert info.value.reason == case.reason, case.name
    return str(info.value)


def _assert_model_entry(entry: dict) -> None:
    assert entry["available"] is True
    assert list(entry["probabilities"]) == list(CLASS_NAMES)
    assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert entry["prediction"] == max(entry["probabilities"], key=entry["probabilities"].get)


def _assert_input_check(check: dict) -> None:
    assert set(check) == {"is_xray_likely", "warnings"}
    assert isinstance(check["is_xray_likely"], bool)
    assert all(isinstance(w, str) and w for w in check["warnings"])
    # Warnings and the verdict agree: a warning is exactly what makes an input unlikely.
    assert check["is_xray_likely"] == (not check["warnings"])


# ---------------------------------------------------------------------------
# In-process: the guard wiring, the page's warning line, a tampered checkpoint.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_module():
    import importlib

    return importlib.import_module("app")


def test_input_check_without_a_fitted_guard_runs_the_cheap_checks(predictor_davidnet, data_dir):
    # Random weights and no ood_davidnet.json beside them: the learned check is off.
    assert predictor_davidnet.input_guard is None
    real = predictor_davidnet.predict(data_dir / COVID_IMAGE, method=None)
    assert real.input_check.is_xray_likely and not real.input_check.learned_check
    assert real.to_api_json()["input_check"] == {"is_xray_likely": True, "warnings": []}
    photo = predictor_davidnet.predict(colour_photo(300, 300), method=None)
    payload = photo.to_api_json()
    _assert_input_check(payload["input_check"])
    assert payload["input_check"]["is_xray_likely"] is False
    assert any(COLOUR_WARNING in w for w in payload["input_check"]["warnings"])
    # A warning, never a refusal: the models still answer.
    _assert_model_entry(payload["davidnet"])


def test_committed_guard_is_loaded_and_runs_its_learned_check(data_dir):
    predictor = Predictor.from_checkpoints(COMMITTED_CHECKPOINTS, warm_up=False)
    if not predictor.is_available("davidnet"):
        pytest.fail(
            f"The committed DavidNet checkpoint does not load: {predictor.status_message('davidnet')}"
        )
    guard = predictor.input_guard
    if guard is None:  # e.g. a retrained checkpoint whose guard was not refitted
        reason = getattr(predictor.loaded["davidnet"].guard, "disabled_reason", "no guard could be built")
        pytest.fail(f"DavidNet's learned OOD check is off: {reason}")
    assert guard.model_name == "davidnet"
    real = predictor.predict(data_dir / COVID_IMAGE, method=None).input_check
    assert real.learned_check and real.is_xray_likely
    assert real.scores["mahalanobis"] < real.scores["mahalanobis_threshold"]
    photo = predictor.predict(colour_photo(300, 300), method=None).input_check
    assert photo.learned_check and "features" in photo.flags and "colour" in photo.flags
    assert any(LEARNED_WARNING in w for w in photo.warnings)


def test_guard_features_come_from_the_explainer_pass_and_match_a_separate_pass(data_dir):
    """The learned check reads DavidNet's features from the explainer's forward pass; a separate
    pass through the guard's own feature function gives the same distance (and Score-CAM, whose
    compiled function has no features, falls back to that separate pass)."""
    predictor = Predictor.from_checkpoints(COMMITTED_CHECKPOINTS, warm_up=False)
    guard = predictor.input_guard
    assert guard is not None, "DavidNet's learned OOD check is off"
    explainer = predictor.loaded["davidnet"].explainer
    assert explainer.feature_layer == guard.extractor.layer
    from covid_xray import preprocessing

    rgb = decode_source(str(data_dir / COVID_IMAGE))
    resized = preprocessing.resize_for_model(rgb)
    separate = guard.check(rgb, resized).scores["mahalanobis"]
    _, _, fused = explainer.analyse(preprocessing.normalize(resized, "unit"), "gradcam")
    np.testing.assert_allclose(fused, guard.features(resized)[0], rtol=1e-5, atol=1e-5)
    for method in (None, "gradcam", "gradcam++", "scorecam"):
        check = predictor.predict(rgb, method=method).input_check
        assert check.learned_check
        assert check.scores["mahalanobis"] == pytest.approx(separate, rel=1e-4), method


def test_page_shows_the_warning_above_the_model_columns(app_module, runtime_davidnet, data_dir, tmp_path):
    photo = tmp_path / "holiday.png"
    Image.fromarray(colour_photo(300, 300)).save(photo)
    values = app_module.diagnose(runtime_davidnet, str(photo), "gradcam", 0.4)
    warning = values[-1]  # the last output: the input-check warning
    assert OOD_HEADLINE in warning and COLOUR_WARNING in warning
    assert values[-2]["input_check"]["is_xray_likely"] is False
    real = app_module.diagnose(runtime_davidnet, str(data_dir / COVID_IMAGE), "gradcam", 0.4)
    assert real[-1] == "" and real[-2]["input_check"]["is_xray_likely"] is True
    # The warning component sits in the Diagnose tab, before the model columns.
    demo = app_module.build_demo(runtime_davidnet, data_dir=data_dir)
    ids = [c.get("props", {}).get("elem_id") for c in demo.config["components"]]
    assert ids.index("input-check") < ids.index("diagnose-davidnet")


def test_tampered_checkpoint_is_shown_as_unavailable(
    app_module, checkpoint_dir_davidnet, missing_weights, data_dir, tmp_path
):
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(checkpoint_dir_davidnet, tampered)
    with open(tampered / "davidnet.keras", "ab") as handle:  # one byte more: sha256 no longer matches
        handle.write(b"\0")
    predictor = Predictor.from_checkpoints(tampered, missing_weights, warm_up=False)
    assert not predictor.is_available("davidnet")
    message, detail = predictor.status_message("davidnet"), predictor.status_detail("davidnet")
    assert message == "DavidNet could not be loaded on this server (its checkpoint failed a check)."
    assert "does not match its recorded sha256" in detail and "davidnet.keras" in detail
    assert str(tampered) not in detail  # operator detail, but no server paths
    # The app starts and shows the reason in DavidNet's column, not a traceback.
    runtime = AppRuntime.serving(predictor)
    demo = app_module.build_demo(runtime, data_dir=data_dir)
    panels = {
        c["props"]["elem_id"]: c["props"].get("value", "")
        for c in demo.config["components"]
        if c.get("props", {}).get("elem_id", "").endswith("-missing")
    }
    assert panels["diagnose-davidnet-missing"] == message
    # The API still answers: DavidNet unavailable with the message, the input still checked.
    payload = app_module.api_predict(runtime, str(data_dir / COVID_IMAGE))
    assert payload["davidnet"] == {
        "available": False,
        "state": "missing",
        "message": message,
        "detail": detail,
    }
    _assert_input_check(payload["input_check"])


def test_every_model_event_shares_the_model_queue(app_module, runtime_davidnet, data_dir):
    """Requests beyond the concurrency limit wait in one queue instead of oversubscribing 2 vCPUs."""
    demo = app_module.build_demo(runtime_davidnet, data_dir=data_dir)
    # Events that take inputs and write a model's heatmap, plus the API (an event without inputs,
    # like clearing the upload, cannot run a model).
    model_events = [
        fn
        for fn in demo.fns.values()
        if fn.api_name == "predict"
        or (fn.inputs and any(str(getattr(o, "elem_id", "") or "").endswith("-overlay") for o in fn.outputs))
    ]
    # The quiz's New quiz / Next only clear the model columns, and the status timer only shows or
    # hides them (no model runs): the only exceptions.
    clearing = {"quiz-new", "quiz-next"}

    def triggers(fn) -> set[str]:
        return {str(getattr(demo.blocks.get(block_id), "elem_id", "")) for block_id, _ in fn.targets}

    def is_timer(fn) -> bool:
        return all(isinstance(demo.blocks.get(block_id), gr.Timer) for block_id, _ in fn.targets)

    exempt = [fn for fn in model_events if triggers(fn) <= clearing or is_timer(fn)]
    assert len(exempt) == 3 and all(fn.concurrency_id != app_module.MODEL_QUEUE for fn in exempt)
    model_events = [fn for fn in model_events if fn not in exempt]
    # Diagnose: upload, example, 2 settings, API; gallery: case, 2 settings; quiz: 3 answers.
    assert len(model_events) == 11
    assert all(fn.concurrency_id == app_module.MODEL_QUEUE for fn in model_events)
    assert app_module.CONCURRENCY_LIMIT == int(os.environ.get("COVID_XRAY_CONCURRENCY", "1"))


# ---------------------------------------------------------------------------
# The CLI: the whole corpus in one process.
# ---------------------------------------------------------------------------
def _run_cli(args: list[str], env_overrides: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_overrides or {}))
    return subprocess.run(
        [sys.executable, "-m", "covid_xray.predict", "--json", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def _json_lines(process: subprocess.CompletedProcess) -> list[dict]:
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:
        raise AssertionError(f"CLI printed non-JSON output: {exc}\n{process.stdout[-3000:]}") from exc


@pytest.mark.slow
def test_corpus_through_the_cli(corpus, tmp_path):
    missing = tmp_path / "no_such_scan.png"
    files = [str(case.path) for case in corpus] + [str(missing)]
    process = _run_cli(["--checkpoint-dir", str(COMMITTED_CHECKPOINTS), *files])
    records = _json_lines(process)
    assert process.returncode == 1, process.stderr[-3000:]  # some files are bad: exit status 1
    # No exception escaped through our code (pydicom logs its own decoder failures).
    assert f'File "{PROJECT_ROOT}' not in process.stderr, process.stderr[-3000:]
    assert [r["file"] for r in records] == files, "one line per file, in order"
    by_name = {case.name: record for case, record in zip(corpus, records, strict=False)}
    for case, record in zip(corpus, records, strict=False):
        if case.expect == "error":
            assert record == {"file": str(case.path), "error": _expected_error(case), "reason": case.reason}
        else:
            assert "error" not in record, (case.name, record)
            _assert_model_entry(record["davidnet"])
            _assert_input_check(record["input_check"])
    assert records[-1]["reason"] == "not_found" and str(missing) in records[-1]["error"]
    # The committed guard's learned check runs in the CLI too (DavidNet features).
    photo = by_name["photo_colour"]["input_check"]
    assert photo["is_xray_likely"] is False
    assert any(COLOUR_WARNING in w for w in photo["warnings"])
    assert any(LEARNED_WARNING in w for w in photo["warnings"])
    # A greyscale chest-like image in an ordinary format raises no warning (reports/ood.json).
    assert by_name["bmp"]["input_check"] == {"is_xray_likely": True, "warnings": []}


@pytest.mark.slow
def test_limits_from_the_environment_apply_in_the_cli(corpus, tmp_path):
    # Smooth content compresses well: 1.3 megapixels in far fewer bytes than the byte limit.
    big = tmp_path / "big_but_small_file.jpg"
    Image.fromarray(xray_like(100, 120)).resize((1200, 1100), Image.Resampling.BILINEAR).save(big, quality=80)
    small = tmp_path / "small.png"
    Image.fromarray(xray_like(200, 200)).save(small)
    large = next(c for c in corpus if c.name == "jpeg_large_xray").path
    max_bytes = 300_000
    assert big.stat().st_size < max_bytes < large.stat().st_size
    # No checkpoint: decoding (and its limits) does not depend on the models.
    process = _run_cli(
        ["--checkpoint-dir", str(tmp_path / "none"), str(big), str(large), str(small)],
        {"COVID_XRAY_MAX_PIXELS": "1000000", "COVID_XRAY_MAX_UPLOAD_BYTES": str(max_bytes)},
    )
    records = _json_lines(process)
    assert process.returncode == 1, process.stderr[-3000:]
    assert [r.get("reason") for r in records] == ["too_large", "file_too_large", None]
    assert "1.3 megapixels" in records[0]["error"] and "1.0 megapixels" in records[0]["error"]
    assert "0.3 MB" in records[1]["error"] or "300,000 bytes" in records[1]["error"]
    assert records[2]["davidnet"]["available"] is False and "input_check" in records[2]


# ---------------------------------------------------------------------------
# The API of a real server.
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


def _predict(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/predict")


@pytest.mark.slow
def test_corpus_through_the_api_then_a_good_request(client, corpus, data_dir):
    from gradio_client.exceptions import AppError

    reference = _predict(client, data_dir / NORMAL_IMAGE)
    for name in MODELS:
        _assert_model_entry(reference[name])
    failures = []
    for case in corpus:
        assert case.path.stat().st_size <= SERVER_MAX_UPLOAD_BYTES, case.name
        try:
            payload = _predict(client, case.path)
        except AppError as exc:
            if case.expect == "ok":
                failures.append(f"{case.name}: refused ({exc})")
            elif _expected_error(case) not in str(exc):
                failures.append(f"{case.name}: message {str(exc)!r}, expected {_expected_error(case)!r}")
            continue
        except Exception as exc:  # noqa: BLE001 - any other failure is a robustness bug to report
            failures.append(f"{case.name}: {type(exc).__name__}: {exc}")
            continue
        if case.expect == "error":
            failures.append(f"{case.name}: accepted, expected the error {case.reason!r}")
            continue
        try:
            for name in MODELS:
                _assert_model_entry(payload[name])
            _assert_input_check(payload["input_check"])
        except (AssertionError, KeyError) as exc:
            failures.append(f"{case.name}: bad JSON {payload!r} ({exc})")
    assert not failures, "\n".join(failures)
    # After the whole corpus the server still answers a good request, identically.
    assert _predict(client, data_dir / NORMAL_IMAGE) == reference


@pytest.mark.slow
def test_ood_warning_is_in_the_api_json(client, corpus, data_dir):
    photo = next(c for c in corpus if c.name == "photo_colour").path
    payload = _predict(client, photo)
    assert payload["input_check"]["is_xray_likely"] is False
    assert any(COLOUR_WARNING in w for w in payload["input_check"]["warnings"])
    for name in MODELS:  # a warning, not a refusal
        _assert_model_entry(payload[name])
    real = _predict(client, data_dir / COVID_IMAGE)
    assert real["input_check"] == {"is_xray_likely": True, "warnings": []}


# ---------------------------------------------------------------------------
# Gradio's file routes serve nothing private.
# ---------------------------------------------------------------------------
# Every GET route of the installed Gradio whose path takes a parameter, with what this module
# does about it. A Gradio upgrade that adds one fails `test_every_parametrised_route_is_reviewed`
# until someone decides whether it can serve files.
PROBED_ROUTES = {
    "/gradio_api/file={path_or_url:path}": "/gradio_api/file=",
    "/gradio_api/file/{path:path}": "/gradio_api/file/",
    "/gradio_api/proxy={url_path:path}": "/gradio_api/proxy=",
    "/static/{path:path}": "/static/",
    "/assets/{path:path}": "/assets/",
    "/svelte/{path:path}": "/svelte/",
}
# Parametrised routes that are probed specially or cannot name a file.
OTHER_ROUTES = {
    "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}": "probed: traversal",
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist-file": "probed: no stream, no file",
    "/gradio_api/run-history/records/{endpoint}/{record_id}/assets/{asset_id}": "probed: run history is off",
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist.m3u8": "in-memory streams",
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}": "in-memory stream segments",
    "/gradio_api/heartbeat/{session_hash}": "server-sent events, no file",
    "/gradio_api/call/{api_name}/{event_id}": "event results, no file",
    "/gradio_api/call/v2/{api_name}/{event_id}": "event results, no file",
    "/pwa_icon/{size}": "the favicon only (none set: 404)",
    "/monitoring/{key}": "probed: monitoring is off",
}
# Legacy spellings (Gradio 3/4) a scanner tries: nothing may answer them with a file either.
LEGACY_ROUTES = ("/file=", "/file/")


def _gradio_get_routes() -> set[str]:
    """Paths of every GET route of the installed Gradio, from a tiny Blocks (no server)."""
    import gradio as gr
    from gradio.routes import App

    with gr.Blocks() as demo:
        gr.Markdown("x")
    app = App.create_app(demo)
    paths: set[str] = set()
    for route in app.routes:
        if getattr(route, "methods", None):
            if "GET" in route.methods:
                paths.add(route.path)
            continue
        router = getattr(route, "original_router", None)  # the /gradio_api router
        for sub in getattr(router, "routes", []):
            if "GET" in (getattr(sub, "methods", None) or ()):
                paths.add(sub.path)
    return paths


def test_every_parametrised_route_is_reviewed():
    parametrised = {p for p in _gradio_get_routes() if "{" in p}
    assert parametrised, "could not enumerate Gradio's routes"
    reviewed = set(PROBED_ROUTES) | set(OTHER_ROUTES)
    assert parametrised <= reviewed, f"new Gradio routes to review: {sorted(parametrised - reviewed)}"


def _raw_get(url: str, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send `target` byte for byte (no client-side normalisation of `..` or `%2f`)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _path_variants(path: str, allowed_dir: str) -> list[str]:
    """Ways to spell `path` (absolute) or reach it from an allowed folder or the server's cwd."""
    bare = path.lstrip("/")
    up = "../" * 12
    return [
        urllib.parse.quote(path),
        urllib.parse.quote(path, safe=""),
        "/" + urllib.parse.quote(path),
        "file://" + urllib.parse.quote(path),
        urllib.parse.quote(allowed_dir + "/" + up + bare),
        urllib.parse.quote(allowed_dir + "/", safe="/") + "..%2f" * 12 + urllib.parse.quote(bare, safe=""),
        up + urllib.parse.quote(bare),
        "..%2f" * 12 + urllib.parse.quote(bare, safe=""),
        "..%252f" * 12 + urllib.parse.quote(bare, safe=""),
        "%2e%2e/" * 12 + urllib.parse.quote(bare),
        "..%5c" * 12 + urllib.parse.quote(bare.replace("/", "\\"), safe=""),
    ]


@pytest.fixture(scope="module")
def uploaded(app_server):
    """A file uploaded through Gradio's own route: the one kind of file the app means to serve."""
    import httpx

    content = b"covid-xray upload control " + os.urandom(8).hex().encode()
    response = httpx.post(
        app_server.url + "gradio_api/upload",
        files={"files": ("control.txt", content, "text/plain")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()[0], content


def _private_targets(app_server, data_dir) -> dict[str, bytes]:
    """Absolute paths the server must never serve, with bytes that prove a leak."""
    root = config.PROJECT_ROOT
    return {
        "/etc/passwd": b"root:",
        str(root / "checkpoints" / "davidnet.keras"): b"PK",
        str(root / "checkpoints" / "davidnet.json"): b'"sha256"',
        str(app_server.checkpoint_dir / "davidnet.keras"): b"PK",
        str(root / "app.py"): b"def build_demo",
        str(root / "covid_xray" / "config.py"): b"CLASS_NAMES",
        str(data_dir / COVID_IMAGE): b"\xff\xd8\xff",
        str(app_server.reports_dir / "audit.json"): b"leaked_test_files",
        str(app_server.log_path): b"",
    }


@pytest.mark.slow
def test_uploaded_files_are_served_back(app_server, uploaded):
    """Control: the file route works, so the refusals below are refusals, not a broken route."""
    path, content = uploaded
    status, body = _raw_get(app_server.url, "/gradio_api/file=" + urllib.parse.quote(path))
    assert (status, body) == (200, content)


@pytest.mark.slow
def test_private_files_are_not_served_through_any_route(app_server, data_dir, uploaded):
    upload_dir = str(Path(uploaded[0]).parent)
    cache_dir = str(
        Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()
    )
    routes = [*PROBED_ROUTES.values(), *LEGACY_ROUTES]
    leaks, checked = [], 0
    for path, signature in _private_targets(app_server, data_dir).items():
        content = Path(path).read_bytes() if Path(path).is_file() else b""
        proof = signature or content[:64]
        spellings = _path_variants(path, upload_dir) + _path_variants(path, cache_dir)[4:6]
        relative = os.path.relpath(path, PROJECT_ROOT)  # the server's working directory
        if not relative.startswith(".."):
            spellings += [urllib.parse.quote(relative), "./" + urllib.parse.quote(relative)]
        for route in routes:
            for spelling in spellings:
                target = route + spelling
                status, body = _raw_get(app_server.url, target)
                checked += 1
                if status == 200 and proof and proof in body:
                    leaks.append(target)
        for route in ("/gradio_api/file=", "/gradio_api/file/"):
            status, _ = _raw_get(app_server.url, route + urllib.parse.quote(path), method="HEAD")
            if status == 200:
                leaks.append(f"HEAD {route}{path}")
    assert checked > 500
    assert not leaks, "served:\n" + "\n".join(leaks)


@pytest.mark.slow
def test_special_routes_serve_nothing_private(app_server):
    app_py = b"def build_demo"
    passwd = b"root:"
    bare = "etc/passwd"
    targets = {
        # A real component id is not needed to reach the traversal check, but use one anyway.
        "/gradio_api/custom_component/file/client/" + "..%2f" * 12 + "etc/passwd": passwd,
        "/gradio_api/custom_component/file/client/" + "../" * 12 + "etc/passwd": passwd,
        "/gradio_api/custom_component/file/client/x/..%2f..%2f..%2f..%2fapp.py": app_py,
        "/gradio_api/stream/s/r/0/playlist-file": passwd,
        "/gradio_api/run-history/records/predict/0/assets/" + "..%2f" * 12 + bare: passwd,
        "/gradio_api/proxy=file:///etc/passwd": passwd,
        "/gradio_api/proxy=" + app_server.url + "gradio_api/file=/etc/passwd": passwd,
        "/gradio_api/vibe-code": app_py,
        "/gradio_api/runs": app_py,
        "/monitoring/x": passwd,
        "/pwa_icon/64": passwd,
    }
    leaks = []
    for target, proof in targets.items():
        status, body = _raw_get(app_server.url, target)
        if status == 200 and proof in body:
            leaks.append(f"{target} ({status})")
    assert not leaks, "served:\n" + "\n".join(leaks)
    # Uploaded X-rays are patient data: no run history is kept (Gradio's /runs page is off).
    assert _raw_get(app_server.url, "/gradio_api/runs")[0] == 404
    # The vibe editor (it returns the app's source code) is off.
    assert _raw_get(app_server.url, "/gradio_api/vibe-code")[0] == 403
