"""Serving path: load every registered model once, warm it, then predict and explain one image.

The app, its API endpoint and the error gallery all go through one :class:`Predictor`:

    predictor = Predictor.from_checkpoints()
    result = predictor.predict("scan.dcm", method="gradcam", alpha=0.4)
    result.models["davidnet"].probabilities   # {"Covid": .., "Normal": .., "Viral Pneumonia": ..}
    result.models["davidnet"].temperature     # calibration T from the checkpoint sidecar, or None
    result.input_check.is_xray_likely        # the OOD guard (covid_xray.ood): warnings, never a refusal
    result.to_api_json()

When a checkpoint's sidecar records a fitted temperature (`python -m covid_xray.studies.calibrate fit`),
`probabilities` are the calibrated ones and `raw_probabilities` the model's own softmax; the
predicted class is the same for both.

A model whose checkpoint (or, for CheXNet, base weights) is missing is recorded as unavailable
with a message for people that names the exact fix; the other model keeps working.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from covid_xray import config, imaging, preprocessing
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, DECODE_DRAFT_SIZE, MODELS

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
# Uploaded scans can be 4000 px wide; the page shows them (and their heatmaps) at most this big.
DISPLAY_MAX_SIDE = 512
DEFAULT_METHOD = "gradcam"
DEFAULT_ALPHA = 0.4
# Traced at start-up, once the model already serves the API (its forward pass is traced first):
# the one compiled function behind Grad-CAM and Grad-CAM++.
# Score-CAM's own function (another few seconds of DenseNet121 tracing on 2 vCPUs) is traced on
# its first request instead, so that the app answers sooner after `python app.py`.
WARM_UP_METHODS: tuple[str, ...] = ("gradcam",)
# Explanations kept in memory (per model, method and image): moving the opacity slider or
# re-opening an image re-uses them instead of recomputing Score-CAM on 2 vCPUs.
EXPLANATION_CACHE_SIZE = 64
# Images in flight at once in `Predictor.predict_many` (the command line's folders): on 2 vCPUs a
# batch-1 forward pass leaves cores idle between its small operations, and two images at a time
# fill them (benchmarks/bench.py times the command's folder rate with 1 and 2); each image still
# runs alone through the same compiled function, so every result is the one `predict` gives
# (tests/test_inference.py).
PREDICT_WORKERS = 2
# Human names of the explanation methods (`explain.SERVED_METHODS`), in the order the UI offers them.
METHOD_DISPLAY_NAMES: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "smoothgrad": "SmoothGrad",
}


def configure_cpu_threads(intra_op: int = 2, inter_op: int = 1) -> bool:
    """Size TensorFlow's thread pools for a small CPU box (a 2-vCPU Space by default).

    Must run before TensorFlow executes its first operation; later calls change nothing and
    return False (logged), which is harmless in tests that already used TensorFlow.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:
        logger.info("TensorFlow thread pools already initialised; keeping them (%s).", exc)
        return False
    return True


# ---------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------
@dataclass
class ModelPrediction:
    """One model's answer for one image (or why it has none)."""

    name: str
    display_name: str
    available: bool
    message: str = ""  # why there is no answer, for visitors
    detail: str = ""  # for operators: commands that fix it (no server paths)
    probabilities: dict[str, float] = field(default_factory=dict)  # keys: CLASS_NAMES; calibrated if T
    predicted: str | None = None
    confidence: float | None = None  # probabilities[predicted]
    method: str | None = None
    heatmap: np.ndarray | None = None  # IMAGE_SIZE x IMAGE_SIZE float32 in [0, 1]
    overlay: np.ndarray | None = None  # uint8 RGB, the display image's size
    raw_probabilities: dict[str, float] = field(default_factory=dict)  # the model's softmax output
    temperature: float | None = None  # calibration temperature applied; None when uncalibrated

    @property
    def calibrated(self) -> bool:
        return self.temperature is not None

    def label_value(self) -> dict[str, float] | None:
        """`gr.Label` value: {display class name: probability}; None when unavailable."""
        if not self.available:
            return None
        return {CLASS_DISPLAY_NAMES[c]: p for c, p in self.probabilities.items()}

    def summary_markdown(self) -> str:
        """One line for people: the predicted class and how the heatmap was made."""
        if not self.available:
            return self.message or f"{self.display_name} has no answer."
        note = ", calibrated" if self.calibrated else ""
        text = f"**{self.display_name}: {CLASS_DISPLAY_NAMES[self.predicted]}** ({self.confidence:.1%}{note})"
        if self.method:
            text += (
                f"  \n{METHOD_DISPLAY_NAMES[self.method]}: where {self.display_name} looked for "
                f"{CLASS_DISPLAY_NAMES[self.predicted]}"
            )
        for sentence in self.heatmap_notes:
            text += f"  \n*{sentence}*"
        return text

    @property
    def heatmap_notes(self) -> list[str]:
        """What the heatmap cannot show, or where it mostly lies (`explain.heatmap_notes`)."""
        if self.heatmap is None:
            return []
        from covid_xray.explain import heatmap_notes

        return heatmap_notes(self.heatmap)

    def to_json(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "message": self.message, "detail": self.detail}
        return {
            "available": True,
            "prediction": self.predicted,
            "probabilities": dict(self.probabilities),
            "raw_probabilities": dict(self.raw_probabilities or self.probabilities),
            "calibrated": self.calibrated,
            "temperature": self.temperature,
        }


@dataclass
class PredictionResult:
    """Both models' answers for one image, plus the image as displayed."""

    image: np.ndarray  # uint8 RGB display image (at most DISPLAY_MAX_SIDE per side)
    models: dict[str, ModelPrediction]
    method: str | None
    alpha: float
    # "Is this a chest X-ray?" (covid_xray.ood.OODResult): checked once per image, warns only.
    input_check: Any = None

    def to_api_json(self) -> dict[str, Any]:
        """The API's JSON, per model: `{available, prediction, probabilities, raw_probabilities,
        calibrated, temperature}` or `{available, message, detail}` (message for people, detail for
        operators; neither holds a server path);
        plus `input_check: {is_xray_likely, warnings}` (warnings are sentences for people)."""
        payload: dict[str, Any] = {name: prediction.to_json() for name, prediction in self.models.items()}
        if self.input_check is not None:
            payload["input_check"] = {
                "is_xray_likely": bool(self.input_check.is_xray_likely),
                "warnings": list(self.input_check.warnings),
            }
        return payload

    @property
    def models_disagree(self) -> bool:
        """True when at least two available models predict different classes."""
        return len({p.predicted for p in self.models.values() if p.available}) > 1


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model ready to serve: its explainer and the input normalisation it was trained with."""

    name: str
    explainer: Any  # covid_xray.explain.Explainer
    preprocessing: str
    metadata: dict
    guard: Any = None  # covid_xray.ood.Guard: cheap checks + this model's learned check, or None
    # Calibration temperature from the sidecar (covid_xray.calibration); None = raw probabilities.
    temperature: float | None = None


def unavailable_message(name: str, checkpoint: Path, error: str = "") -> str:
    """One line for visitors: why a model has no answer (no paths, no commands)."""
    spec = MODELS[name]
    if checkpoint.exists():
        return f"{spec.display_name} could not be loaded on this server (its checkpoint failed a check)."
    return f"{spec.display_name} is not installed on this server."


def unavailable_detail(name: str, checkpoint: Path, weights_path=None, error: str = "") -> str:
    """For operators: what is missing and the commands that fix it (server paths left out).

    Lines indented by 4 spaces are commands (`detail_markdown` makes them code blocks).
    """
    train = "    " + config.TRAIN_INSTALL_COMMAND.format(name=name)
    if checkpoint.exists():
        return f"The checkpoint did not load: {scrub_paths(error)}\nRetrain and install it:\n{train}"
    lines = ["No trained checkpoint. Train and install it:", train]
    if name == "chexnet":
        lines = ["No trained checkpoint."]
        if not config.resolve_chexnet_weights(weights_path).exists():
            lines += [
                "Get the CheXNet base weights first:",
                "    pip install kagglehub",
                "    " + config.WEIGHTS_COMMAND + " fetch-kaggle",
            ]
        lines += [
            "Train the head and evaluate it:",
            train,
            "    " + config.EVALUATE_COMMAND.format(name="chexnet"),
        ]
    lines += [
        f"Or start the app with internet access and without {config.OFFLINE_ENV_VAR}=1: it downloads and "
        "trains what is missing by itself."
    ]
    return "\n".join(lines)


# An absolute file-system path (not a URL): "/a/b/file.keras" -> "file.keras".
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\"`]+)*/([^\s/'\"`]+)")


def scrub_paths(text: str) -> str:
    """`text` with every absolute path of this server shortened to its last part (the file name)."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def detail_markdown(detail: str) -> str:
    """Markdown of an operator's detail: lines indented by 4 spaces become code blocks (easy to
    copy); the rest wraps as text, with `<` `>` escaped so placeholders stay visible."""
    parts, commands = [], []

    def flush() -> None:
        if commands:
            parts.append("```bash\n" + "\n".join(commands) + "\n```")
            commands.clear()

    for line in detail.splitlines():
        if line.startswith("    "):
            commands.append(line.strip())
            continue
        flush()
        if line.strip():
            parts.append(line.strip().replace("<", "&lt;").replace(">", "&gt;"))
    flush()
    return "\n\n".join(parts)


def load_model(
    name: str, checkpoint_dir: str | os.PathLike | None = None, *, scorecam_max_n: int | None = None
) -> LoadedModel:
    """Load one registered model's checkpoint (safe mode, sha256-checked) and build its explainer.

    Raises:
        CheckpointError: missing, corrupted or unloadable checkpoint.
    """
    from covid_xray.calibration import temperature_from_metadata
    from covid_xray.checkpoints import load_checkpoint
    from covid_xray.explain import Explainer

    spec = config.get_model_spec(name)
    model, metadata = load_checkpoint(spec.checkpoint_path(checkpoint_dir))
    mode = preprocessing.checkpoint_mode(name, metadata)
    guard = _load_guard(name, checkpoint_dir, model, metadata)
    # The learned OOD check reads its features from the explainer's forward pass (no second pass).
    feature_layer = guard.extractor.layer if guard is not None and guard.learned_enabled else None
    explainer = Explainer(
        model,
        spec.gradcam_layer,
        scorecam_max_n=spec.scorecam_max_n if scorecam_max_n is None else scorecam_max_n,
        feature_layer=feature_layer,
        smoothgrad_samples=spec.smoothgrad_samples,
    )
    return LoadedModel(
        name=name,
        explainer=explainer,
        preprocessing=mode,
        metadata=metadata,
        guard=guard,
        temperature=temperature_from_metadata(metadata),
    )


def _load_guard(name: str, checkpoint_dir, model, metadata: dict):
    """The model's OOD guard (`ood.load_guard`, sharing the loaded weights), or None.

    The guard only adds warnings: whatever goes wrong building it must not cost the model, so
    any failure is logged and the requests get the cheap checks alone.
    """
    from covid_xray import ood

    try:
        return ood.load_guard(name, checkpoint_dir, model=model, metadata=metadata, warm_up=False)
    except Exception as exc:  # noqa: BLE001 - see docstring
        logger.warning("OOD guard of %s unavailable: %s", MODELS[name].display_name, exc)
        return None


# ---------------------------------------------------------------------------
# Image helpers.
# ---------------------------------------------------------------------------
def decode_source(source) -> np.ndarray:
    """An 8-bit RGB array from a path/bytes (via `imaging.load_image`) or an image array.

    Raises:
        imaging.ImageDecodeError: not a usable image (the message is meant for people).
    """
    if isinstance(source, np.ndarray):
        rgb = source
        if rgb.dtype != np.uint8:
            raise imaging.ImageDecodeError(
                f"Expected an 8-bit image array, got dtype {rgb.dtype}.", "not_an_image"
            )
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
            raise imaging.ImageDecodeError(
                f"Expected an HxWx3 RGB image, got shape {rgb.shape}.", "not_an_image"
            )
        return np.ascontiguousarray(rgb[..., :3])
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    return imaging.load_image(source, draft_size=DECODE_DRAFT_SIZE)


def display_image(rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """Shrink an image (aspect ratio kept) so that its longer side is at most `max_side`."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------
# Predictor.
# ---------------------------------------------------------------------------
class Predictor:
    """All registered models, loaded once and warmed; predicts and explains one image at a time.

    Args:
        loaded: available models by name.
        unavailable: {name: message for people} for models that could not be loaded.
    """

    def __init__(
        self,
        loaded: dict[str, LoadedModel],
        unavailable: dict[str, str] | None = None,
        details: dict[str, str] | None = None,
    ):
        self.loaded = dict(loaded)
        self.unavailable = dict(unavailable or {})
        # For operators (the page folds it away; the API's `detail`): commands, no paths.
        self.details = dict(details or {})
        # (model, method, image digest) -> (probabilities, heatmap, guard features)
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()
        # Gradio may call from several worker threads; one image at a time keeps a 2-vCPU box
        # responsive and the explainers' state safe. The cache has its own lock, so that
        # `predict_many` can run its images side by side while it holds the models' lock.
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()

    @classmethod
    def from_checkpoints(
        cls,
        checkpoint_dir: str | os.PathLike | None = None,
        weights_path: str | os.PathLike | None = None,
        *,
        warm_up: bool = True,
        scorecam_max_n: int | None = None,
    ) -> Predictor:
        """Load every model in `config.MODELS` from its checkpoint; record the missing ones.

        Args:
            checkpoint_dir: folder of `<model>.keras` files (default: `config.resolve_checkpoint_dir()`).
            weights_path: CheXNet base weights, only used to say what is missing.
            warm_up: trace the compiled function of `WARM_UP_METHODS` now (probabilities, Grad-CAM
                and Grad-CAM++), so that the first request is fast; Score-CAM is traced on first use.
            scorecam_max_n: feature maps kept by Score-CAM (each model's `ModelSpec` value if None).
        """
        predictor = cls({})
        for name in MODELS:
            predictor.load(name, checkpoint_dir, weights_path, warm_up=warm_up, scorecam_max_n=scorecam_max_n)
        return predictor

    def load(
        self,
        name: str,
        checkpoint_dir: str | os.PathLike | None = None,
        weights_path: str | os.PathLike | None = None,
        *,
        warm_up: bool = True,
        scorecam_max_n: int | None = None,
    ) -> bool:
        """Load (and warm) one model and start serving it; False, with the reason recorded, when it
        cannot be loaded. Safe while other threads predict: the model joins between two requests."""
        from covid_xray.checkpoints import CheckpointError
        from covid_xray.explain import ExplainerError

        spec = config.get_model_spec(name)
        checkpoint = spec.checkpoint_path(checkpoint_dir)
        try:
            loaded = load_model(name, checkpoint_dir, scorecam_max_n=scorecam_max_n)
        except (CheckpointError, ExplainerError) as exc:
            self.set_unavailable(
                name,
                unavailable_message(name, checkpoint, str(exc)),
                unavailable_detail(name, checkpoint, weights_path, str(exc)),
            )
            logger.warning("%s unavailable: %s", spec.display_name, exc)
            return False
        if warm_up:
            # The forward pass first: the model answers the API (probabilities) as soon as it is in.
            loaded.explainer.warm_up(())
        with self._lock:
            self.loaded[name] = loaded
            self.unavailable.pop(name, None)
            self.details.pop(name, None)
        if warm_up:
            # Then Grad-CAM's function (CheXNet: ~2.5 s of tracing), while the model already
            # serves: a request that needs it meanwhile waits for this trace (TensorFlow traces a
            # function once), not for a second one.
            loaded.explainer.warm_up(WARM_UP_METHODS)
            # The guard's own feature function only serves Score-CAM requests (the others get
            # the features from the explainer).
            if loaded.guard is not None and loaded.explainer.feature_layer is None:
                loaded.guard.warm_up()
        logger.info(
            "Loaded %s (preprocessing %r, %s).",
            spec.display_name,
            loaded.preprocessing,
            "uncalibrated"
            if loaded.temperature is None
            else f"calibration temperature {loaded.temperature:g}",
        )
        return True

    def set_unavailable(self, name: str, message: str, detail: str = "") -> None:
        """Record why `name` has no answer (for visitors, and the operator's detail)."""
        if name not in self.loaded:
            self.unavailable[name] = message
            self.details[name] = detail

    @property
    def lock(self) -> threading.Lock:
        """Held while a model runs: other users of the served models (the what-if probe) take it too."""
        return self._lock

    @property
    def available_models(self) -> list[str]:
        return [name for name in MODELS if name in self.loaded]

    def is_available(self, name: str) -> bool:
        return name in self.loaded

    def status_message(self, name: str) -> str:
        """Empty for an available model; otherwise one line for visitors saying why."""
        return self.unavailable.get(name, "")

    def status_detail(self, name: str) -> str:
        """Empty for an available model; otherwise the operator's detail (commands, no paths)."""
        return self.details.get(name, "")

    @property
    def input_guard(self):
        """The guard whose learned check runs on every request: the first loaded model (registry
        order, DavidNet first) with a fitted feature guard; None means cheap checks only."""
        for name in self.available_models:
            guard = self.loaded[name].guard
            if guard is not None and guard.learned_enabled:
                return guard
        return None

    def check_input(
        self, rgb: np.ndarray, model_input: np.ndarray, features: dict | None = None, *, gate=None
    ):
        """The OOD guard's answer to "is this a chest X-ray?" (`ood.OODResult`): warns, never blocks.

        Args:
            rgb: the decoded uint8 HxWx3 image at its own size.
            model_input: the same image resized for the models (uint8 224x224x3).
            features: {model name: guard features} already computed by the explainers (`_run`);
                the guard's model runs again only when its features are missing.
            gate: held while the guard's model runs (default: the models' lock).
        """
        from covid_xray import ood

        guard = self.input_guard
        if guard is None:
            return ood.check_image(rgb)
        known = (features or {}).get(guard.model_name)
        if known is not None:
            return guard.check(rgb, model_input, features=known)
        with self._lock if gate is None else gate:  # the learned check runs a model, like `_run`
            return guard.check(rgb, model_input)

    def predict(
        self,
        source,
        method: str | None = DEFAULT_METHOD,
        alpha: float = DEFAULT_ALPHA,
    ) -> PredictionResult:
        """Predict (and explain) one image with every model.

        Args:
            source: a file path, the file's bytes, or a uint8 RGB (or grayscale) array.
            method: one of `explain.SERVED_METHODS` (the CAMs and SmoothGrad), or None for
                probabilities only (the API's fast path).
            alpha: heatmap opacity in [0, 1].

        Raises:
            imaging.ImageDecodeError: the source is not a usable image.
            ValueError: unknown method or alpha outside [0, 1].
        """
        _check_settings(method, alpha)
        return self._predict(source, method, alpha, self._lock)

    def predict_many(
        self,
        sources,
        method: str | None = None,
        alpha: float = DEFAULT_ALPHA,
        *,
        workers: int = PREDICT_WORKERS,
    ):
        """`predict` every source, up to `workers` images at a time; yields, in the order of
        `sources`, `(source, result, error)`: the `PredictionResult`, or the input error
        (`imaging.ImageDecodeError`, `OSError`) that `predict` would raise for it, the other one None.

        The models' lock is held until the iteration ends (other callers wait as for one long
        request); iterate to the end or close the generator. Each image runs alone through the
        models' compiled functions, so the results are those of `predict`.

        Raises:
            ValueError: unknown method, alpha outside [0, 1] or fewer than one worker.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        _check_settings(method, alpha)
        if int(workers) < 1:
            raise ValueError(f"workers must be at least 1, got {workers}.")
        sources = iter(sources)

        def one(source):
            try:
                return source, self._predict(source, method, alpha, contextlib.nullcontext()), None
            except (imaging.ImageDecodeError, OSError) as exc:
                return source, None, exc

        with self._lock, ThreadPoolExecutor(int(workers), thread_name_prefix="predict") as pool:
            # A window of 2 x workers images: decoded images and overlays do not pile up.
            pending = deque(pool.submit(one, s) for s in itertools.islice(sources, 2 * int(workers)))
            while pending:
                done = pending.popleft().result()
                for source in itertools.islice(sources, 1):
                    pending.append(pool.submit(one, source))
                yield done

    def _predict(self, source, method: str | None, alpha: float, gate) -> PredictionResult:
        """`predict` with `gate` (a context manager) held around each model run."""
        from covid_xray.calibration import apply_temperature

        rgb = decode_source(source)
        shown = display_image(rgb)
        # The models see the full decoded image resized once, exactly like training/evaluation.
        model_input = preprocessing.resize_for_model(rgb)
        digest = hashlib.sha256(np.ascontiguousarray(model_input).tobytes()).hexdigest()

        predictions, features = {}, {}
        for name, spec in MODELS.items():
            if name not in self.loaded:
                predictions[name] = ModelPrediction(
                    name,
                    spec.display_name,
                    available=False,
                    message=self.status_message(name),
                    detail=self.status_detail(name),
                )
                continue
            raw, heatmap, features[name] = self._run(self.loaded[name], model_input, digest, method, gate)
            # The predicted class is the model's argmax; a temperature (> 0) cannot change it.
            index = int(np.argmax(raw))
            temperature = self.loaded[name].temperature
            probs = raw if temperature is None else apply_temperature(raw, temperature)
            overlay = None
            if heatmap is not None:
                from covid_xray.explain import render_overlay

                overlay = render_overlay(shown, heatmap, alpha=float(alpha), colorbar=True)
            predictions[name] = ModelPrediction(
                name,
                spec.display_name,
                available=True,
                probabilities={c: float(p) for c, p in zip(CLASS_NAMES, probs, strict=True)},
                predicted=CLASS_NAMES[index],
                confidence=float(probs[index]),
                method=method,
                heatmap=heatmap,
                overlay=overlay,
                raw_probabilities={c: float(p) for c, p in zip(CLASS_NAMES, raw, strict=True)},
                temperature=temperature,
            )
        return PredictionResult(
            image=shown,
            models=predictions,
            method=method,
            alpha=float(alpha),
            input_check=self.check_input(rgb, model_input, features, gate=gate),
        )

    def _run(
        self, loaded: LoadedModel, model_input: np.ndarray, digest: str, method: str | None, gate
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Probabilities, heatmap and OOD-guard features (None when the explainer has no feature
        layer, or for Score-CAM) for one model, from the cache when this image was seen (SmoothGrad
        included: its seeded map of an image never changes); `gate` is held while the model runs."""
        key = (loaded.name, method, digest)
        cached = self._cached(key)
        if cached is None:
            x = preprocessing.normalize(model_input, loaded.preprocessing)
            with gate:
                cached = self._cached(key)  # computed meanwhile by the caller we waited for?
                if cached is None:
                    probs, heatmap, features = loaded.explainer.analyse(x, method)
                    cached = (np.asarray(probs, np.float64), heatmap, features)
                    with self._cache_lock:
                        self._cache[key] = cached
                        while len(self._cache) > EXPLANATION_CACHE_SIZE:
                            self._cache.popitem(last=False)
        probs, heatmap, features = cached
        return probs, (None if method is None else heatmap), features

    def _cached(self, key: tuple) -> tuple | None:
        """The cached (probabilities, heatmap, features) for `key` = (model, method, image digest);
        for `method` None any cached explanation of the image (its probabilities are the same)."""
        name, method, digest = key
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is None and method is None:
                cached = next((v for k, v in self._cache.items() if k[0] == name and k[2] == digest), None)
            elif cached is not None:
                self._cache.move_to_end(key)
            return cached


def _check_settings(method: str | None, alpha: float) -> None:
    """ValueError for an unknown explanation method or an opacity outside [0, 1]."""
    from covid_xray.explain import SERVED_METHODS

    if method is not None and method not in SERVED_METHODS:
        raise ValueError(f"Unknown explanation method {method!r}; expected one of {SERVED_METHODS} or None.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
