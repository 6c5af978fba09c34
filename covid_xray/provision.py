"""First-start provisioning: bring what the app lacks (dataset, CheXNet weights, CheXNet head).

A Hugging Face Space starts from the repository alone. `Provisioner.run()` (the app runs it in a
background thread while the page already serves what exists) takes three steps, in order, into
one cache folder (`config.resolve_home()`):

1. the dataset (`COVID_XRAY_DATASET_SOURCE`): a Kaggle handle through kagglehub, or a `.zip` as
   Kaggle serves it (top folder `Covid19-dataset/`) over `file://` / `http(s)://`; checked
   against the known layout and per-class counts before it is moved into place;
2. the CheXNet base weights (`COVID_XRAY_CHEXNET_SOURCE`, optional `COVID_XRAY_CHEXNET_SHA256`):
   checked to load as a complete DenseNet121 (`studies.weights.install`) before they are trusted;
3. the CheXNet head: trained with the shipped recipe (`training.train`, features cached,
   selected on validation only), then evaluated exactly as `python -m covid_xray.studies.evaluate
   --model chexnet` does; checkpoint and reports are moved into the cache only when both are
   complete (the `.keras` file last: its presence means "done").

Every step is idempotent (an existing dataset, weights file or checkpoint is used, not fetched
again) and atomic (work happens in a staging folder or a `.part` file that is removed on any
failure), so a crash, a truncated download, a wrong hash or an HTTP error leaves nothing that a
later start trusts. `COVID_XRAY_OFFLINE=1` turns all of it off.

Progress goes to one thread-safe :class:`Status` (the page polls it) and to a tqdm bar in the
terminal. The messages in `Status` are for visitors: no server paths.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from covid_xray import config
from covid_xray.downloads import DownloadError, download

logger = logging.getLogger(__name__)

# The settings' environment variables (named in config, their one home).
DATASET_SOURCE_ENV_VAR = config.DATASET_SOURCE_ENV_VAR
CHEXNET_SOURCE_ENV_VAR = config.CHEXNET_SOURCE_ENV_VAR
CHEXNET_SHA256_ENV_VAR = config.CHEXNET_SHA256_ENV_VAR
OFFLINE_ENV_VAR = config.OFFLINE_ENV_VAR
HEAD_TRAIN_ARGS_ENV_VAR = config.HEAD_TRAIN_ARGS_ENV_VAR
DEFAULT_DATASET_SOURCE = f"kaggle:{config.KAGGLE_DATASET}"
DEFAULT_CHEXNET_SOURCE = f"kaggle:{config.CHEXNET_KAGGLE_DATASET}"
# A dataset archive larger than this when unpacked is refused (the real one is about 0.1 GB).
MAX_UNPACKED_BYTES = 4 << 30

STEPS = ("dataset", "weights", "head")
STEP_TITLES = {"dataset": "dataset", "weights": "CheXNet weights", "head": "CheXNet head"}
# Step states. "unavailable": cannot run here (offline, or a step it needs is missing).
WAITING, WORKING, READY, FAILED, UNAVAILABLE = "waiting", "working", "ready", "failed", "unavailable"
FINAL_STATES = (READY, FAILED, UNAVAILABLE)


class ProvisionError(RuntimeError):
    """A provisioning step failed; the message is one line for people (no server paths)."""


# ---------------------------------------------------------------------------
# Settings.
# ---------------------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Where to bring things from and where to put them (see the module docstring)."""

    dataset_source: str = DEFAULT_DATASET_SOURCE
    chexnet_source: str = DEFAULT_CHEXNET_SOURCE
    chexnet_sha256: str | None = None
    offline: bool = False
    head_train_args: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: dict | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            dataset_source=env.get(DATASET_SOURCE_ENV_VAR) or DEFAULT_DATASET_SOURCE,
            chexnet_source=env.get(CHEXNET_SOURCE_ENV_VAR) or DEFAULT_CHEXNET_SOURCE,
            chexnet_sha256=(env.get(CHEXNET_SHA256_ENV_VAR) or "").strip().lower() or None,
            offline=_truthy(env.get(OFFLINE_ENV_VAR)),
            head_train_args=tuple(shlex.split(env.get(HEAD_TRAIN_ARGS_ENV_VAR) or "")),
        )


def source_kind(source: str) -> str:
    """'kaggle', 'file' or 'http' (https included).

    Raises:
        ProvisionError: any other scheme.
    """
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme == "kaggle" and source.split(":", 1)[1].strip():
        return "kaggle"
    if scheme in ("file", "http", "https"):
        return "http" if scheme.startswith("http") else "file"
    raise ProvisionError(
        f"Unsupported source {source!r}: use kaggle:<owner>/<dataset>, file://... or https://..."
    )


def head_overrides(tokens: tuple[str, ...]) -> dict:
    """`TrainConfig` fields from `KEY=VALUE` tokens (`$COVID_XRAY_HEAD_TRAIN_ARGS`, e.g.
    "epochs=2 augment_epochs=0 max_per_class=8"), converted to each field's type.

    Raises:
        ProvisionError: unknown field or a value of the wrong type.
    """
    import dataclasses

    from covid_xray.training import TrainConfig

    types = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}
    out = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in types:
            raise ProvisionError(
                f"{HEAD_TRAIN_ARGS_ENV_VAR}: {token!r} is not KEY=VALUE with a training setting"
            )
        kind = types[key]
        try:
            out[key] = _truthy(value) if kind is bool else kind(value) if kind in (int, float) else value
        except ValueError as exc:
            raise ProvisionError(
                f"{HEAD_TRAIN_ARGS_ENV_VAR}: {token!r} has a value of the wrong type"
            ) from exc
    return out


# ---------------------------------------------------------------------------
# Status: one object the page polls.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StepStatus:
    """One step as visitors see it: its state, what it is doing now, and progress."""

    state: str = WAITING
    activity: str = ""  # e.g. "downloading", "training head"
    done: float = 0
    total: float = 0
    unit: str = ""  # "MB", "images", "epochs"
    message: str = ""  # why it failed or is unavailable, for visitors

    def progress_text(self) -> str:
        if not self.total:
            return self.activity
        if self.unit == "epoch":
            return f"{self.activity}, epoch {int(self.done)}/{int(self.total)}"
        if self.unit == "MB":
            return f"{self.activity}, {self.done:.1f} of {self.total:.1f} MB"
        return f"{self.activity}, {int(self.done)}/{int(self.total)} {self.unit}"


class Status:
    """Thread-safe state of every step, plus a version number that changes with each update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps = {name: StepStatus() for name in STEPS}
        self.version = 0

    def set(self, step: str, **changes) -> None:
        with self._lock:
            self._steps[step] = replace(self._steps[step], **changes)
            self.version += 1

    def get(self, step: str) -> StepStatus:
        with self._lock:
            return self._steps[step]

    def snapshot(self) -> dict[str, StepStatus]:
        with self._lock:
            return dict(self._steps)

    @property
    def finished(self) -> bool:
        return all(s.state in FINAL_STATES for s in self.snapshot().values())


# ---------------------------------------------------------------------------
# Downloads (the loop itself: covid_xray.downloads).
# ---------------------------------------------------------------------------

def kaggle_download(handle: str) -> Path:
    """Download a Kaggle dataset with kagglehub (its own cache) and return its folder.

    A thin adapter: everything downstream of it is the same code as for the other sources.

    Raises:
        ProvisionError: kagglehub missing, or the download failed.
    """
    try:
        import kagglehub
    except ImportError as exc:
        raise ProvisionError("kagglehub is not installed (pip install kagglehub)") from exc
    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as exc:  # noqa: BLE001 - network, auth and API errors all end here, for people
        raise ProvisionError(f"Kaggle download of {handle} failed ({type(exc).__name__})") from exc


def _mb(nbytes: float) -> float:
    return nbytes / 1e6


# ---------------------------------------------------------------------------
# Dataset checks.
# ---------------------------------------------------------------------------
def check_dataset(root: Path) -> str:
    """Check a dataset folder's layout and per-class counts against `config.EXPECTED_COUNTS`.

    Returns:
        One line for the log, e.g. "317 images (train 251, test 66)".

    Raises:
        ProvisionError: missing folders or unexpected counts.
    """
    from covid_xray import data

    try:
        samples = data.list_samples(root)
    except data.DatasetNotFoundError as exc:
        raise ProvisionError(
            f"the dataset does not have the expected layout ({exc.__class__.__name__})"
        ) from exc
    counts: dict[str, dict[str, int]] = {}
    for s in samples:
        counts.setdefault(s.split, {}).setdefault(s.label, 0)
        counts[s.split][s.label] += 1
    if counts != config.EXPECTED_COUNTS:
        raise ProvisionError(f"the dataset has unexpected image counts {counts}")
    sizes = {split: sum(c.values()) for split, c in counts.items()}
    return f"{len(samples)} images (train {sizes['train']}, test {sizes['test']})"


def _safe_extract(archive: Path, target: Path) -> None:
    """Unpack a zip into `target`, refusing members that leave it or an oversized archive."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise ProvisionError("the archive is too large once unpacked")
            root = target.resolve()
            for member in members:
                if not (root / member.filename).resolve().is_relative_to(root):
                    raise ProvisionError("the archive holds a path outside its folder")
            zf.extractall(target)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ProvisionError("the download is not a complete zip archive") from exc


# ---------------------------------------------------------------------------
# The steps.
# ---------------------------------------------------------------------------
@dataclass
class Provisioner:
    """Runs the three steps (see the module docstring); `on_ready(step)` is called after each
    step that ends ready (the app loads CheXNet there)."""

    settings: Settings = field(default_factory=Settings.from_env)
    status: Status = field(default_factory=Status)
    on_ready: Callable[[str], None] | None = None

    @property
    def home(self) -> Path:
        return config.resolve_home()

    # -- dataset -----------------------------------------------------------
    def dataset_target(self) -> Path:
        """Where the dataset is looked for and, when missing, put."""
        return config.resolve_data_dir()

    def dataset_present(self) -> bool:
        return (self.dataset_target() / "test").is_dir()

    def provision_dataset(self) -> None:
        target = self.dataset_target()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-dataset-", dir=target.parent))
        try:
            if source_kind(self.settings.dataset_source) == "kaggle":
                self.status.set("dataset", state=WORKING, activity="downloading from Kaggle")
                folder = kaggle_download(self.settings.dataset_source.split(":", 1)[1])
                from covid_xray import data

                try:
                    source = data.find_dataset_root(folder)
                except data.DatasetNotFoundError as exc:
                    raise ProvisionError("the Kaggle download does not have the expected layout") from exc
                self.status.set("dataset", activity="copying")
                shutil.copytree(source, staging / config.DATASET_FOLDER)
            else:
                archive = staging / "dataset.zip"
                self._download("dataset", self.settings.dataset_source, archive)
                self.status.set("dataset", activity="unpacking", total=0)
                _safe_extract(archive, staging / "unpacked")
                archive.unlink()
                found = staging / "unpacked" / config.DATASET_FOLDER
                if not found.is_dir():
                    raise ProvisionError(f"the archive has no top folder {config.DATASET_FOLDER}/")
                found.rename(staging / config.DATASET_FOLDER)
            self.status.set("dataset", activity="checking", total=0)
            summary = check_dataset(staging / config.DATASET_FOLDER)
            os.replace(staging / config.DATASET_FOLDER, target)
            logger.info("Dataset ready: %s.", summary)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- weights -----------------------------------------------------------
    def weights_target(self) -> Path:
        """$COVID_XRAY_CHEXNET_WEIGHTS when set, else the cache's `chexnet_base.h5`."""
        if os.environ.get(config.CHEXNET_WEIGHTS_ENV_VAR):
            return config.resolve_chexnet_weights()
        return config.home_chexnet_weights()

    def weights_present(self) -> bool:
        return config.resolve_chexnet_weights().exists()

    def provision_weights(self) -> None:
        from covid_xray.studies import weights

        target = self.weights_target()
        target.parent.mkdir(parents=True, exist_ok=True)
        source = self.settings.chexnet_source
        try:
            if source_kind(source) == "kaggle":
                self.status.set("weights", state=WORKING, activity="downloading from Kaggle")
                folder = kaggle_download(source.split(":", 1)[1])
                candidates = sorted(folder.rglob(config.CHEXNET_WEIGHTS_FILENAME)) or sorted(
                    folder.rglob("*.h5")
                )
                if not candidates:
                    raise ProvisionError("the Kaggle download holds no .h5 weights file")
                self.status.set("weights", activity="checking", total=0)
                weights.install(candidates[0], target, self.settings.chexnet_sha256)
                return
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            os.close(fd)
            part = Path(name)
            try:
                digest = self._download("weights", source, part)
                if self.settings.chexnet_sha256 and digest != self.settings.chexnet_sha256:
                    raise ProvisionError("the weights file's SHA-256 does not match the expected one")
                self.status.set("weights", activity="checking", total=0)
                weights.install(part, target, self.settings.chexnet_sha256)
            finally:
                part.unlink(missing_ok=True)
        except weights.WeightsError as exc:
            raise ProvisionError(f"the weights file is not a complete CheXNet DenseNet121 ({exc})") from exc
        logger.info("CheXNet weights ready.")

    # -- head --------------------------------------------------------------
    def head_present(self) -> bool:
        return config.get_model_spec("chexnet").checkpoint_path().exists()

    def provision_head(self) -> None:
        """Train the CheXNet head in a staging folder, evaluate it, then move both into the cache."""
        from covid_xray import training
        from covid_xray.studies import evaluate

        home = self.home
        home.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-head-", dir=home))
        try:
            cfg = training.TrainConfig(
                **head_overrides(self.settings.head_train_args),
                model="chexnet",
                data_dir=str(config.resolve_data_dir()),
                chexnet_weights=str(config.resolve_chexnet_weights()),
                checkpoint_dir=str(staging / "checkpoints"),
                run_dir=str(home / "runs" / f"chexnet-{time.strftime('%Y%m%d-%H%M%S')}"),
                feature_cache_dir=str(home / "features"),
                verbose=0,
            )
            self.status.set("head", state=WORKING, activity="training head", total=0)
            result = training.train(cfg, progress=self._head_progress)
            self.status.set("head", activity="evaluating on the test set", total=0, unit="")
            evaluate.evaluate_model(
                "chexnet",
                str(config.resolve_data_dir()),
                str(staging / "reports" / "chexnet"),
                str(result.checkpoint),
            )
            self.status.set("head", activity="probing shortcuts on the test set")
            self._shortcuts(result.checkpoint, staging / "reports")
            self._install_head(staging, result.checkpoint)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _shortcuts(self, checkpoint: Path, reports: Path) -> None:
        """The Model report's what-if masks and nearest films across the test set (`studies.shortcuts`)."""
        from covid_xray import data
        from covid_xray.checkpoints import load_checkpoint
        from covid_xray.preprocessing import checkpoint_mode
        from covid_xray.studies import shortcuts

        model, metadata = load_checkpoint(checkpoint)
        result = shortcuts.compute(
            "chexnet",
            model,
            checkpoint_mode("chexnet", metadata),
            data.list_samples(None, "train"),
            data.list_samples(None, "test"),
            checkpoint_sha=metadata.get("sha256"),
            cache_dir=self.home / "neighbours",
        )
        shortcuts.write(result, reports)

    def _head_progress(self, stage: str, done: int, total: int) -> None:
        if stage == "features":
            self.status.set(
                "head", activity="computing CheXNet features", done=done, total=total, unit="images"
            )
        else:
            self.status.set("head", activity="training head", done=done, total=total, unit="epoch")

    def _install_head(self, staging: Path, checkpoint: Path) -> None:
        """Move the evaluation, then the sidecar, then the `.keras` file (the "done" marker)."""
        reports = config.home_reports_dir() / "chexnet"
        if reports.exists():
            shutil.rmtree(reports)
        reports.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / "reports" / "chexnet", reports)
        dest = config.home_checkpoint_dir()
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted(checkpoint.parent.iterdir(), key=lambda p: p.suffix == ".keras"):
            os.replace(path, dest / path.name)
        logger.info("CheXNet head trained and evaluated.")

    # -- driver ------------------------------------------------------------
    def _download(self, step: str, url: str, dest: Path) -> str:
        self.status.set(step, state=WORKING, activity="downloading", unit="MB")

        def progress(done: float, total: float) -> None:
            self.status.set(step, done=_mb(done), total=_mb(total))

        try:
            return download(url, dest, progress=progress, title=STEP_TITLES[step])
        except DownloadError as exc:
            raise ProvisionError(str(exc)) from exc

    def run(self) -> Status:
        """Take every step that is needed, in order; never raises (failures go to the status)."""
        plan = [
            ("dataset", self.dataset_present, self.provision_dataset, ()),
            ("weights", self.weights_present, self.provision_weights, ()),
            ("head", self.head_present, self.provision_head, ("dataset", "weights")),
        ]
        for step, present, provision, needs in plan:
            title = STEP_TITLES[step]
            if present():
                self.status.set(step, state=READY, activity="", total=0)
            elif self.settings.offline:
                self.status.set(step, state=UNAVAILABLE, message="downloads are turned off on this server")
                logger.info("Provisioning: %s missing, downloads are off (%s=1).", title, OFFLINE_ENV_VAR)
                continue
            elif any(self.status.get(n).state != READY for n in needs):
                self.status.set(
                    step,
                    state=UNAVAILABLE,
                    message="it needs the "
                    + " and the ".join(STEP_TITLES[n] for n in needs if self.status.get(n).state != READY),
                )
                continue
            else:
                started = time.perf_counter()
                try:
                    provision()
                except Exception as exc:  # noqa: BLE001 - one clear line; the app keeps serving
                    message = (
                        str(exc)
                        if isinstance(exc, ProvisionError)
                        else f"an unexpected error ({type(exc).__name__})"
                    )
                    self.status.set(step, state=FAILED, message=message, total=0)
                    logger.error("Provisioning the %s failed: %s", title, message)
                    logger.debug("Provisioning traceback", exc_info=True)
                    continue
                self.status.set(step, state=READY, activity="", total=0)
                logger.info("Provisioning: %s ready in %.1f s.", title, time.perf_counter() - started)
            if self.on_ready is not None:
                self.on_ready(step)
        return self.status
