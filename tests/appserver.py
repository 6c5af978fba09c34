"""Run the demo app (`python app.py`) as a child process, for tests, benchmarks and scripted demos.

Test and benchmark tooling, so it lives beside the tests rather than in the package (the app never
imports it); benchmark scripts import it as `tests.appserver` with the project root on `sys.path`.

`AppServer.start` launches the app on a free loopback port (never another interface) with the
checkpoints of one folder, its output in a log file; `wait_until_up` waits until it answers
HTTP; `stop` terminates it (and kills it if it does not stop). Use it as a context manager so
that the process is always stopped:

    with AppServer.start(checkpoint_dir, work_dir) as server:
        server.wait_until_up()
        ...  # talk to server.url
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from covid_xray import config

HOST = "127.0.0.1"
# Answers 200 once Gradio serves the app.
READY_PATH = "gradio_api/info"
# Default wait for start-up: the app loads and warms both models (DenseNet121 included).
DEFAULT_START_TIMEOUT_S = 600.0
DEFAULT_POLL_S = 1.0
PROBE_TIMEOUT_S = 5.0  # one readiness request
STOP_TIMEOUT_S = 30.0  # after terminate, and again after kill
LOG_TAIL_CHARS = 3000


class AppServerError(RuntimeError):
    """The app process exited or did not answer in time; the message ends with its log tail."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def app_environment(
    port: int, checkpoint_dir: Path, work_dir: Path, extra: Mapping[str, str | os.PathLike] | None = None
) -> dict[str, str]:
    """The child's environment: ours, the settings every app server gets, then `extra` (which wins).

    CheXNet's base weights point at a missing file in `work_dir` unless `extra` names some, so a
    model without a checkpoint is reported unavailable rather than loaded from elsewhere.
    """
    env = dict(os.environ)
    env.update(
        GRADIO_SERVER_NAME=HOST,
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env[config.CHECKPOINT_DIR_ENV_VAR] = str(checkpoint_dir)
    env[config.CHEXNET_WEIGHTS_ENV_VAR] = str(Path(work_dir) / "no_chexnet_weights.h5")
    env.update({key: str(value) for key, value in (extra or {}).items()})
    return env


class AppServer:
    """A `python app.py` child process and where to reach it.

    Attributes: `process` (the `subprocess.Popen`), `port`, `url` (``http://127.0.0.1:<port>/``),
    `log_path` (its stdout and stderr), `started` (`time.perf_counter()` at spawn),
    `checkpoint_dir` and `work_dir`.
    """

    def __init__(
        self,
        process: subprocess.Popen,
        port: int,
        log_path: Path,
        started: float,
        checkpoint_dir: Path,
        work_dir: Path,
    ):
        self.process = process
        self.port = port
        self.url = f"http://{HOST}:{port}/"
        self.log_path = log_path
        self.started = started
        self.checkpoint_dir = checkpoint_dir
        self.work_dir = work_dir

    @classmethod
    def start(
        cls,
        checkpoint_dir: str | os.PathLike,
        work_dir: str | os.PathLike,
        *,
        env: Mapping[str, str | os.PathLike] | None = None,
        tag: str = "app",
        command: Sequence[str] | None = None,
    ) -> AppServer:
        """Spawn the app (`command`, default ``python app.py`` in the project root) on a free port.

        `env` adds or overrides environment variables; the log goes to `work_dir/<tag>.log`.
        Returns at once: call `wait_until_up` before sending requests.
        """
        checkpoint_dir, work_dir = Path(checkpoint_dir), Path(work_dir)
        port = free_port()
        log_path = work_dir / f"{tag}.log"
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen(
                list(command) if command is not None else [sys.executable, "app.py"],
                cwd=config.PROJECT_ROOT,
                env=app_environment(port, checkpoint_dir, work_dir, env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(process, port, log_path, started, checkpoint_dir, work_dir)

    def wait_until_up(
        self, timeout_s: float = DEFAULT_START_TIMEOUT_S, poll_s: float = DEFAULT_POLL_S
    ) -> float:
        """Seconds from spawn until the app answers HTTP.

        Raises `AppServerError` (with the log tail) if the process exits first, or if it does not
        answer within `timeout_s` of spawn; in that case the process is stopped first.
        """
        deadline = self.started + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AppServerError(
                    f"app.py exited with code {self.process.returncode} before answering HTTP:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + READY_PATH, timeout=PROBE_TIMEOUT_S) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass  # not listening yet (or not ready)
            if time.perf_counter() >= deadline:
                break
            time.sleep(poll_s)
        tail = self.log_tail()
        self.stop()
        raise AppServerError(f"app.py did not answer {self.url} within {timeout_s:g} s (stopped it):\n{tail}")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The last `chars` characters of the app's output ('' if there is no log yet)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Terminate the process and wait for it; kill it if it has not stopped after `timeout_s`.

        Does nothing if it has already exited.
        """
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
