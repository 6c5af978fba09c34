"""Unit tests of `tests.appserver` with small stand-in commands instead of `python app.py`."""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from covid_xray import config
from tests.appserver import HOST, AppServer, AppServerError, app_environment, free_port

# Answers 200 with the environment it was given on /gradio_api/info, 404 elsewhere, on the
# host and port the app would use.
FAKE_APP = """
import http.server, json, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/gradio_api/info":
            self.send_error(404)
            return
        body = json.dumps(dict(os.environ)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("fake app listening", flush=True)
address = (os.environ["GRADIO_SERVER_NAME"], int(os.environ["GRADIO_SERVER_PORT"]))
http.server.HTTPServer(address, Handler).serve_forever()
"""
SLEEPER = "import time; print('sleeping', flush=True); time.sleep(120)"
# Ignores SIGTERM (stop() must kill it); says so once the handler is installed.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring SIGTERM', flush=True); time.sleep(120)"
)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_for_log(server: AppServer, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in server.log_tail():
        assert time.monotonic() < deadline, f"{text!r} never appeared in the log: {server.log_tail()!r}"
        time.sleep(0.02)


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, port))
        sock.listen()


def test_environment_has_the_common_settings_and_extras_win(tmp_path, monkeypatch):
    monkeypatch.setenv("COVID_XRAY_TEST_INHERITED", "yes")
    env = app_environment(4321, tmp_path / "ckpt", tmp_path, {"GRADIO_TEMP_DIR": tmp_path / "cache"})
    assert env["GRADIO_SERVER_NAME"] == "127.0.0.1"
    assert env["GRADIO_SERVER_PORT"] == "4321"
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert env[config.CHECKPOINT_DIR_ENV_VAR] == str(tmp_path / "ckpt")
    weights = Path(env[config.CHEXNET_WEIGHTS_ENV_VAR])
    assert weights.parent == tmp_path and not weights.exists()
    assert env["GRADIO_TEMP_DIR"] == str(tmp_path / "cache")
    assert env["COVID_XRAY_TEST_INHERITED"] == "yes"
    overridden = app_environment(1, tmp_path, tmp_path, {config.CHEXNET_WEIGHTS_ENV_VAR: "/w.h5"})
    assert overridden[config.CHEXNET_WEIGHTS_ENV_VAR] == "/w.h5"


def test_server_that_answers(tmp_path):
    with AppServer.start(
        tmp_path / "ckpt", tmp_path, env={"EXTRA_SETTING": 7}, tag="fake", command=python(FAKE_APP)
    ) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        assert server.log_path == tmp_path / "fake.log"
        assert server.checkpoint_dir == tmp_path / "ckpt" and server.work_dir == tmp_path
        up = server.wait_until_up(timeout_s=60, poll_s=0.05)
        assert 0 < up < 60
        assert time.perf_counter() - server.started >= up
        with urllib.request.urlopen(server.url + "gradio_api/info", timeout=5) as response:
            seen = json.load(response)
        assert seen["GRADIO_SERVER_PORT"] == str(server.port)
        assert seen["EXTRA_SETTING"] == "7"
        assert seen[config.CHECKPOINT_DIR_ENV_VAR] == str(tmp_path / "ckpt")
        assert "fake app listening" in server.log_tail()
        assert server.process.poll() is None
    assert server.process.poll() is not None  # the context manager stopped it


def test_process_that_exits_raises_with_its_log_tail(tmp_path):
    command = python("import sys; print('no checkpoints here', flush=True); sys.exit(3)")
    with AppServer.start(tmp_path, tmp_path, command=command) as server:
        with pytest.raises(AppServerError, match="exited with code 3") as caught:
            server.wait_until_up(timeout_s=60, poll_s=0.05)
    assert "no checkpoints here" in str(caught.value)
    assert isinstance(caught.value, RuntimeError)


def test_process_that_never_listens_times_out_and_is_stopped(tmp_path):
    server = AppServer.start(tmp_path, tmp_path, command=python(SLEEPER))
    try:
        wait_for_log(server, "sleeping")
        begin = time.perf_counter()
        with pytest.raises(AppServerError, match=r"did not answer .* within 0\.5 s") as caught:
            server.wait_until_up(timeout_s=0.5, poll_s=0.05)
        assert time.perf_counter() - begin < 15
        assert "sleeping" in str(caught.value)
        assert server.process.poll() is not None
    finally:
        server.stop()


def test_stop_ends_the_process_and_is_idempotent(tmp_path):
    server = AppServer.start(tmp_path, tmp_path, command=python(SLEEPER))
    wait_for_log(server, "sleeping")
    assert server.process.poll() is None
    server.stop()
    assert server.process.returncode == -signal.SIGTERM
    server.stop()  # already stopped: nothing to do
    assert server.process.returncode == -signal.SIGTERM


def test_stop_kills_a_process_that_ignores_terminate(tmp_path):
    server = AppServer.start(tmp_path, tmp_path, command=python(STUBBORN))
    try:
        wait_for_log(server, "ignoring SIGTERM")
        server.stop(timeout_s=0.5)
        assert server.process.returncode == -signal.SIGKILL
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_context_manager_stops_the_process_on_error(tmp_path):
    with pytest.raises(ValueError, match="inside the block"):
        with AppServer.start(tmp_path, tmp_path, command=python(SLEEPER)) as server:
            raise ValueError("inside the block")
    assert server.process.poll() is not None


def test_log_tail_returns_the_end_of_the_log(tmp_path):
    command = python("print('x' * 5000 + 'THE END', flush=True)")
    with AppServer.start(tmp_path, tmp_path, command=command) as server:
        server.process.wait(timeout=30)
        assert server.log_tail(8) == "THE END\n"
        assert len(server.log_tail()) == 3000
