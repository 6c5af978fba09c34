"""What the app serves right now: the models loaded so far and first-start provisioning's progress.

`python app.py` serves the page at once; `AppRuntime.start()` then, in a background thread,
imports TensorFlow, loads and warms each installed model (DavidNet first), and runs
`provision.Provisioner` to bring what is missing (the dataset, the CheXNet weights and head),
loading CheXNet when its head is ready. The page polls `status_line()`, `model_message()` and
`version` (which changes with every update), so it follows without a reload.
"""

from __future__ import annotations

import logging
import os
import threading

from covid_xray import config, provision
from covid_xray.config import MODELS
from covid_xray.inference import Predictor, unavailable_detail

logger = logging.getLogger(__name__)

# Model states as the page shows them.
LOADING, READY, PREPARING, MISSING = "loading", "ready", "preparing", "missing"


class AppRuntime:
    """The predictor (empty until models load) plus the provisioning status, for one app process.

    Args:
        checkpoint_dir: checkpoint folder (default: `config.resolve_checkpoint_dir()`, then the cache).
        weights_path: CheXNet base weights (default: `config.resolve_chexnet_weights()`).
        settings: provisioning settings (default: from the environment).
    """

    def __init__(self, checkpoint_dir=None, weights_path=None, settings: provision.Settings | None = None):
        self.checkpoint_dir = checkpoint_dir
        self.weights_path = weights_path
        self.predictor = Predictor({})
        self.status = provision.Status()
        self.provisioner = provision.Provisioner(
            settings or provision.Settings.from_env(), self.status, on_ready=self._on_step_ready
        )
        self._lock = threading.Lock()
        self._loading: set[str] = set()
        # "See the shortcut" tools per loaded model (covid_xray.teaching): the what-if probe, and
        # the index of training films (once the dataset is on disk).
        self.probes: dict = {}
        self.indexes: dict = {}
        self._indexing = False
        self._changes = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def serving(cls, predictor: Predictor, settings: provision.Settings | None = None) -> AppRuntime:
        """A runtime that serves `predictor` as it is: nothing loads, nothing is provisioned
        (tests, benchmarks)."""
        runtime = cls(settings=settings or provision.Settings(offline=True))
        runtime.predictor = predictor
        runtime._done.set()
        return runtime

    # -- lifecycle ---------------------------------------------------------
    def start(self, background: bool = True) -> AppRuntime:
        """Load the installed models, then provision what is missing (in a thread by default)."""
        if background:
            self._thread = threading.Thread(target=self._run, name="covid-xray-runtime", daemon=True)
            self._thread.start()
        else:
            self._run()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading and provisioning are over; False on timeout."""
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def version(self) -> int:
        """Changes whenever anything the page shows may have changed."""
        with self._lock:
            return self._changes + self.status.version

    def _bump(self) -> None:
        with self._lock:
            self._changes += 1

    def _run(self) -> None:
        try:
            from covid_xray.inference import configure_cpu_threads

            configure_cpu_threads(intra_op=2, inter_op=1)
            with self._lock:
                self._loading = {
                    n for n, s in MODELS.items() if s.checkpoint_path(self.checkpoint_dir).exists()
                }
            self._bump()
            for name in MODELS:
                self._load(name)
            self.provisioner.run()
            self._prepare_indexes()
        except Exception:  # noqa: BLE001 - the page must keep serving whatever happens here
            logger.exception("Start-up failed; serving what is loaded.")
        finally:
            with self._lock:
                self._loading.clear()
            self._bump()
            self._done.set()

    def _load(self, name: str) -> None:
        with self._lock:
            self._loading.add(name)
        self._bump()
        try:
            if self.predictor.load(name, self.checkpoint_dir, self.weights_path):
                from covid_xray.probe import Probe

                self.probes[name] = Probe.for_loaded(self.predictor.loaded[name])
        finally:
            with self._lock:
                self._loading.discard(name)
            self._bump()

    def _prepare_indexes(self) -> None:
        """Index the training films of every loaded model (features cached on disk by checkpoint)."""
        from covid_xray import report

        if not report.data_available():
            return
        self._indexing = True
        self._bump()
        try:
            self._index_models()
        finally:
            self._indexing = False
            self._bump()

    def _index_models(self) -> None:
        from covid_xray import neighbours

        for name in self.predictor.available_models:
            if name in self.probes:
                self.probes[name].warm_up()  # traced here, not on a visitor's first click
            if name in self.indexes:
                continue
            try:
                self.indexes[name] = neighbours.index_for(
                    self.predictor.loaded[name], cache_dir=config.resolve_home() / "neighbours"
                )
            except Exception:  # noqa: BLE001 - one model's index must not stop the other's
                logger.exception("No similar-films index for %s.", MODELS[name].display_name)
            self._bump()

    def _on_step_ready(self, step: str) -> None:
        if step == "head" and not self.predictor.is_available("chexnet"):
            self._load("chexnet")

    # -- what the page shows -----------------------------------------------
    def model_state(self, name: str) -> str:
        """READY, LOADING, PREPARING (provisioning works towards it) or MISSING."""
        if self.predictor.is_available(name):
            return READY
        with self._lock:
            if name in self._loading:
                return LOADING
        if name == "chexnet" and not self.finished and not self.provisioner.settings.offline:
            head = self.status.get("head").state
            if head == provision.READY:
                return LOADING  # the head is trained; CheXNet loads next
            if head in (provision.WAITING, provision.WORKING):
                return PREPARING
        return MISSING

    def _preparing_step(self) -> str | None:
        """The provisioning step at work now, if any."""
        for step, state in self.status.snapshot().items():
            if state.state == provision.WORKING:
                return step
        return None

    def preparation_text(self) -> str:
        """What provisioning does now, e.g. "training head, epoch 7/25" ("" when idle)."""
        step = self._preparing_step()
        if step is None:
            return ""
        progress = self.status.get(step).progress_text()
        title = provision.STEP_TITLES[step]
        return progress if step == "head" else f"{title}: {progress}"

    def model_message(self, name: str) -> str:
        """One line for visitors about a model that has no answer now ("" when it is ready)."""
        display = MODELS[name].display_name
        state = self.model_state(name)
        if state == READY:
            return ""
        if state == LOADING:
            return f"{display} is loading; it answers here in a few seconds."
        if state == PREPARING:
            doing = self.preparation_text() or "waiting for its turn"
            return f"{display} is being prepared on this server ({doing}). It appears here when ready."
        failed = [
            s
            for s in ("dataset", "weights", "head")
            if self.status.get(s).state == provision.FAILED and name == "chexnet"
        ]
        if failed:
            reason = self.status.get(failed[0]).message
            step = provision.STEP_TITLES[failed[0]]
            return f"{display} is not installed on this server: preparing the {step} failed ({reason})."
        return self.predictor.status_message(name) or f"{display} is not installed on this server."

    def model_detail(self, name: str) -> str:
        """For operators: the commands that install a missing model (no server paths)."""
        if self.predictor.is_available(name):
            return ""
        detail = self.predictor.status_detail(name)
        if detail:
            return detail
        return unavailable_detail(name, MODELS[name].checkpoint_path(self.checkpoint_dir), self.weights_path)

    def api_json(self, result) -> dict:
        """`PredictionResult.to_api_json()`, with each model that has no answer described as the
        page describes it: `{available: false, state, message, detail}` (no server paths)."""
        payload = result.to_api_json()
        for name, prediction in result.models.items():
            if not prediction.available:
                payload[name] = {
                    "available": False,
                    "state": self.model_state(name),
                    "message": self.model_message(name),
                    "detail": self.model_detail(name),
                }
        return payload

    def dataset_state(self, data_dir=None) -> str:
        """READY, PREPARING (provisioning is bringing it) or MISSING."""
        from covid_xray import report

        if report.data_available(data_dir):
            return READY
        state = self.status.get("dataset").state
        if state in (provision.WAITING, provision.WORKING) and not self.provisioner.settings.offline:
            return PREPARING
        return MISSING

    def dataset_message(self, data_dir=None) -> str:
        """One line for visitors when the dataset (examples, gallery, quiz) is not there yet."""
        state = self.dataset_state(data_dir)
        if state == READY:
            return ""
        if state == PREPARING:
            step = self.status.get("dataset")
            doing = step.progress_text() if step.state == provision.WORKING else "waiting"
            return (
                f"The test images are being downloaded to this server ({doing}); they appear here when ready."
            )
        step = self.status.get("dataset")
        if step.state == provision.FAILED:
            return f"The test images are not available on this server: the download failed ({step.message})."
        return (
            "The test images are not available on this server, so examples, the gallery and the quiz "
            "are empty. Uploads still work."
        )

    def dataset_detail(self) -> str:
        """For operators: how to give the app its dataset."""
        return "\n".join(
            [
                "Download it (needs kagglehub and internet):",
                "    " + config.DOWNLOAD_COMMAND,
                f"or point {config.DATA_ENV_VAR} at an existing Covid19-dataset folder, or let the app "
                f"download it on start (set {provision.DATASET_SOURCE_ENV_VAR} for another source; "
                f"unset {provision.OFFLINE_ENV_VAR}).",
            ]
        )

    def status_line(self) -> str:
        """E.g. "DavidNet ready · CheXNet: training head, epoch 7/25"."""
        parts = []
        for name, spec in MODELS.items():
            state = self.model_state(name)
            if state == PREPARING:
                parts.append(f"{spec.display_name}: {self.preparation_text() or 'being prepared'}")
            else:
                parts.append(f"{spec.display_name} {'not installed' if state == MISSING else state}")
        data = self.dataset_state()
        if data != READY:
            parts.append("test images " + ("downloading" if data == PREPARING else "not available"))
        if self._indexing:
            parts.append("indexing the training films")
        return " · ".join(parts)


def default_runtime() -> AppRuntime:
    """A runtime for `python app.py` (checkpoint folder and weights from the environment)."""
    return AppRuntime(os.environ.get(config.CHECKPOINT_DIR_ENV_VAR))
