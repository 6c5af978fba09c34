"""CheXNet base weights: load the published Keras-2 HDF5 file into a Keras 3 DenseNet121.

CheXNet is DenseNet121 trained on ChestX-ray14 (112,120 frontal chest X-rays, 14 findings). The
public Keras port (brucechou1983/CheXNet-Keras, release 0.3.0) ships a Keras-2 ``save_weights``
HDF5 file of DenseNet121 + a 14-unit sigmoid ``predictions`` head. Keras 3 cannot read it by
layer order, so this module maps it onto our base by layer name, checks every shape, and
refuses any incomplete file: a silently half-loaded base would still "work" but would no longer
be CheXNet, and every reported accuracy and Grad-CAM map would be wrong without a visible sign.

Accepted files (detected by content, not extension):

- Keras-2 HDF5 weights (``model.save_weights`` or ``model.save`` in Keras 2), as published;
- Keras 3 ``.weights.h5`` of the base or of a model that contains it (e.g. our CheXNet);
- Keras 3 ``.keras`` archives of such a model.

Getting the file (download, Kaggle mirror, a local copy) and its command line:
`covid_xray.studies.weights`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from covid_xray import config

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Configurable parameters.
# ---------------------------------------------------------------------------
# Project that publishes the weights; its README carries the download link.
CHEXNET_PROJECT_URL = "https://github.com/brucechou1983/CheXNet-Keras"
# Direct download link and SHA-256 of CHEXNET_WEIGHTS_FILENAME. No verified direct link or
# checksum is recorded in this repository, so none is guessed: `fix_commands` offers the
# `fetch --url` route only once these are set (after verifying them).
CHEXNET_WEIGHTS_URL: str | None = None
CHEXNET_WEIGHTS_SHA256: str | None = None
# A public Kaggle dataset that mirrors CHEXNET_WEIGHTS_FILENAME; `fetch-kaggle` downloads it with
# kagglehub and installs it only if it loads as a complete DenseNet121 (a mirror is checked, not trusted).
CHEXNET_KAGGLE_DATASET = "sinamhd9/chexnet-weights"
# The one command that fixes missing weights for a user with internet access.
FIX_COMMAND = config.WEIGHTS_FETCH_COMMAND
# Keras-2 layer groups that are not part of DenseNet121 (the 14-finding ChestX-ray14 head).
CHEXNET_HEAD_LAYERS = ("predictions",)

FORMAT_KERAS2 = "keras2-hdf5"
FORMAT_KERAS3_WEIGHTS = "keras3-weights-h5"
FORMAT_KERAS3_ARCHIVE = "keras3-archive"
FORMAT_DESCRIPTIONS = {
    FORMAT_KERAS2: "Keras-2 HDF5 weights",
    FORMAT_KERAS3_WEIGHTS: "Keras 3 .weights.h5",
    FORMAT_KERAS3_ARCHIVE: "Keras 3 .keras archive",
}
# Inside a .keras archive, the weights live in this member.
_ARCHIVE_WEIGHTS_MEMBER = "model.weights.h5"
# How many offending layers an error message lists before summarising the rest.
_MAX_LISTED = 12


class WeightsError(RuntimeError):
    """CheXNet weights are unreadable, incomplete or do not fit DenseNet121.

    Attributes:
        problems: one line per offending layer (missing, wrong shape, wrong count).
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()):
        super().__init__(message)
        self.problems = tuple(problems)


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No CheXNet weights file at the resolved path; the message says how to get one."""

    def __init__(self, path: str | os.PathLike):
        """`path`: where the weights were looked for (the message is built here, once)."""
        self.path = Path(path)
        super().__init__(missing_weights_message(self.path))
        self.filename = str(self.path)

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class LoadReport:
    """What `load_chexnet_base_weights` did.

    Attributes:
        path: the weights file.
        file_format: one of FORMAT_KERAS2, FORMAT_KERAS3_WEIGHTS, FORMAT_KERAS3_ARCHIVE.
        keras_version: Keras version recorded in the file, if any.
        loaded_layers: base layers that received weights (Keras 3 names).
        loaded_params: number of parameters set (7,037,504 for the full DenseNet121 base).
        skipped_layers: layers with weights in the file that are not part of the base
            (e.g. the 14-finding ``predictions`` head of the published file).
        renamed_layers: (file name, base name) pairs for Keras-2 names written with "/".
        matched_by: "name", or "position" for Keras 3 files that record no layer names.
    """

    path: Path
    file_format: str
    keras_version: str | None
    loaded_layers: tuple[str, ...]
    loaded_params: int
    skipped_layers: tuple[str, ...]
    renamed_layers: tuple[tuple[str, str], ...]
    matched_by: str = "name"

    def summary(self) -> str:
        """One human-readable line."""
        version = f", Keras {self.keras_version}" if self.keras_version else ""
        skipped = f"; skipped {', '.join(self.skipped_layers)}" if self.skipped_layers else ""
        return (
            f"Loaded {self.loaded_params:,} parameters into {len(self.loaded_layers)} DenseNet121 layers "
            f"from {self.path} ({FORMAT_DESCRIPTIONS[self.file_format]}{version}, matched by "
            f"{self.matched_by}){skipped}."
        )


# A layer's arrays as read from a file: (variable name or None when unknown, array).
_FileLayers = dict[str, list[tuple[str | None, np.ndarray]]]


# ---------------------------------------------------------------------------
# Messages.
# ---------------------------------------------------------------------------
def _dest_flag(path: Path) -> str:
    """`` --dest PATH`` when the fix must install somewhere other than where the code looks by default."""
    return "" if path == config.resolve_chexnet_weights() else f" --dest {shlex.quote(str(path))}"


def fix_commands(path: str | os.PathLike | None = None) -> list[str]:
    """Shell commands that put CheXNet weights at `path` (default: where the code looks), best first.

    For an operator's panel or a CLI; `missing_weights_message` names the first one.
    """
    path = config.resolve_chexnet_weights(path)
    dest = _dest_flag(path)
    commands = [f"{FIX_COMMAND}{dest}"]
    if CHEXNET_WEIGHTS_URL:
        sha = f" --sha256 {CHEXNET_WEIGHTS_SHA256}" if CHEXNET_WEIGHTS_SHA256 else ""
        commands.append(f"{config.WEIGHTS_COMMAND} fetch --url {CHEXNET_WEIGHTS_URL}{sha}{dest}")
    commands.append(f"{config.WEIGHTS_COMMAND} install /path/to/{config.CHEXNET_WEIGHTS_FILENAME}{dest}")
    return commands


def missing_weights_message(path: str | os.PathLike) -> str:
    """One paragraph for people: CheXNet weights are missing at `path`, what they are, and the fix.

    Used by `WeightsNotFoundError`, the CLIs and the app, so users read one wording everywhere;
    `fix_commands` gives the commands alone.
    """
    path = Path(path).expanduser().resolve()
    env = os.environ.get(config.CHEXNET_WEIGHTS_ENV_VAR)
    from_env = bool(env) and Path(env).expanduser().resolve() == path
    source = f" (set by ${config.CHEXNET_WEIGHTS_ENV_VAR})" if from_env else ""
    dest = _dest_flag(path)
    return (
        f"CheXNet weights are missing: no file at {path}{source}. CheXNet needs the published "
        f"DenseNet121 weights trained on ChestX-ray14 ({config.CHEXNET_WEIGHTS_FILENAME}, from "
        f"{CHEXNET_PROJECT_URL}). Get them with `{FIX_COMMAND}{dest}` (needs internet), or install a "
        f"copy you already have with `{config.WEIGHTS_COMMAND} install FILE{dest}`."
    )


def _format_problems(header: str, problems: list[str]) -> str:
    listed = problems[:_MAX_LISTED]
    more = len(problems) - len(listed)
    tail = [f"  ... and {more} more"] if more > 0 else []
    return "\n".join([header, *(f"  - {p}" for p in listed), *tail])


# ---------------------------------------------------------------------------
# Reading files.
# ---------------------------------------------------------------------------
def _decode(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_name_list(group: h5py.Group, name: str) -> list[str]:
    """Read a Keras-2 list-of-names attribute (possibly split into chunks ``name0, name1, ...``)."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        # Keras 2 split attributes above HDF5's 64 KB header limit into numbered chunks.
        chunks, i = [], 0
        while f"{name}{i}" in group.attrs:
            chunks.append(group.attrs[f"{name}{i}"])
            i += 1
    # Keras 2 stored an empty list as an empty float array: keep only the names.
    return [_decode(v) for chunk in chunks for v in np.atleast_1d(chunk) if isinstance(v, (bytes, str))]


def _has_name_list(group: h5py.Group, name: str) -> bool:
    return name in group.attrs or f"{name}0" in group.attrs


def keras2_to_keras3_name(name: str) -> str:
    """Keras 2's DenseNet named its stem ``conv1/conv``, ``conv1/bn``; Keras 3 uses ``_``."""
    return name.replace("/", "_")


def _keras2_root(f: h5py.File) -> h5py.Group | None:
    if _has_name_list(f, "layer_names"):
        return f
    # A Keras-2 full-model file (model.save) keeps the same layout under "model_weights".
    if "model_weights" in f and _has_name_list(f["model_weights"], "layer_names"):
        return f["model_weights"]
    return None


def _read_keras2(root: h5py.Group, source: Path) -> tuple[_FileLayers, dict[str, str]]:
    """Return arrays per layer (Keras 3 names) and {Keras 3 name: file name} for renamed layers."""
    backend = root.attrs.get("backend")
    if backend is not None and _decode(backend) != "tensorflow":
        # Theano/CNTK files store convolution kernels in another layout.
        raise WeightsError(
            f"{source} was saved with the {_decode(backend)!r} backend; only TensorFlow files are supported."
        )
    layers: _FileLayers = {}
    renamed: dict[str, str] = {}
    for file_name in _read_name_list(root, "layer_names"):
        if file_name not in root:
            raise WeightsError(
                f"{source} is damaged: it lists layer {file_name!r} but holds no group for it."
            )
        group = root[file_name]
        arrays = []
        for weight_name in _read_name_list(group, "weight_names"):
            if weight_name not in group:
                raise WeightsError(
                    f"{source} is damaged: layer {file_name!r} lists weight {weight_name!r} "
                    "but holds no data for it."
                )
            # "conv1/bn/gamma:0" -> "gamma": the variable's own name, used to check the order.
            variable = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
            arrays.append((variable, np.asarray(group[weight_name])))
        if not arrays:
            continue
        name = keras2_to_keras3_name(file_name)
        if name in layers:
            raise WeightsError(f"{source} holds two layers that map to {name!r}.")
        layers[name] = arrays
        if name != file_name:
            renamed[name] = file_name
    return layers, renamed


def _vars_groups(f: h5py.File) -> list[tuple[str, h5py.Group]]:
    found = []

    def visit(path, obj):
        if isinstance(obj, h5py.Group) and path.rsplit("/", 1)[-1] == "vars":
            found.append((path, obj))

    f.visititems(visit)
    return found


def _vars_arrays(group: h5py.Group) -> list[tuple[None, np.ndarray]]:
    return [(None, np.asarray(group[key])) for key in sorted(group.keys(), key=int)]


def _snake_case(class_name: str) -> str:
    """Keras 3's file key for a layer class (Conv2D -> conv2d, ZeroPadding2D -> zero_padding2d)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _positional_keys(base: keras.Model) -> dict[str, str]:
    """Keras 3 keys each layer by class name + counter in layer order: {layer name: key}."""
    used: dict[str, int] = {}
    keys = {}
    for layer in base.layers:
        stem = _snake_case(type(layer).__name__)
        used[stem] = used.get(stem, -1) + 1
        keys[layer.name] = stem if used[stem] == 0 else f"{stem}_{used[stem]}"
    return keys


def _read_keras3(f: h5py.File, base: keras.Model) -> tuple[_FileLayers, str]:
    """Read a Keras 3 weights store; match by recorded layer name, else by layer position."""
    # Layer variables live under ".../layers/<key>/vars"; skip optimizer and other state.
    groups = [(path, g) for path, g in _vars_groups(f) if len(g.keys()) and path.startswith("layers/")]
    if groups and all("name" in g.attrs for _, g in groups):
        layers: _FileLayers = {}
        for path, group in groups:
            name = _decode(group.attrs["name"])
            if name in layers:
                raise WeightsError(
                    f"The file holds two layers named {name!r} ({path}); cannot tell which is the base's."
                )
            layers[name] = _vars_arrays(group)
        return layers, "name"
    # Older Keras 3 files record no layer names: keys follow class name + position. Try every
    # "layers" container (the base itself, or a model holding it) and keep the best fit; the
    # shape check afterwards still rejects anything that does not fit exactly.
    keys = _positional_keys(base)
    containers: list[str] = []

    def visit(path, obj):
        if isinstance(obj, h5py.Group) and path.rsplit("/", 1)[-1] == "layers":
            containers.append(path[: -len("layers")].rstrip("/"))

    f.visititems(visit)
    best: _FileLayers = {}
    for prefix in dict.fromkeys(containers):
        candidate = {}
        for layer_name, key in keys.items():
            path = "/".join(p for p in (prefix, "layers", key, "vars") if p)
            if path in f and len(f[path].keys()):
                candidate[layer_name] = _vars_arrays(f[path])
        if len(candidate) > len(best):
            best = candidate
    logger.warning("The weights file records no layer names; matched DenseNet121 layers by position.")
    return best, "position"


@contextmanager
def _open_store(path: Path) -> Iterator[tuple[str, h5py.File]]:
    """Open a weights file as HDF5 and tell its format (by content, not extension)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if _ARCHIVE_WEIGHTS_MEMBER not in archive.namelist():
                raise WeightsError(
                    f"{path} is a zip archive without {_ARCHIVE_WEIGHTS_MEMBER}: not a Keras 3 model file."
                )
            data = archive.read(_ARCHIVE_WEIGHTS_MEMBER)
        with h5py.File(io.BytesIO(data), "r") as f:
            yield FORMAT_KERAS3_ARCHIVE, f
        return
    if not h5py.is_hdf5(path):
        raise WeightsError(
            f"{path} is neither HDF5 nor a .keras archive (a truncated download or an HTML error page?). "
            "Delete it and fetch the weights again."
        )
    with h5py.File(path, "r") as f:
        if _keras2_root(f) is not None:
            yield FORMAT_KERAS2, f
        elif "layers" in f or "vars" in f:
            yield FORMAT_KERAS3_WEIGHTS, f
        else:
            raise WeightsError(
                f"{path} is an HDF5 file but not Keras weights (no 'layer_names', no 'layers')."
            )


def require_chexnet_weights(path: str | os.PathLike | None = None) -> Path:
    """Resolve the weights path (argument, $COVID_XRAY_CHEXNET_WEIGHTS, default) and require a file there.

    Raises:
        WeightsNotFoundError: nothing there; the message says how to get the weights.
        WeightsError: the path is not a regular file.
    """
    resolved = config.resolve_chexnet_weights(path)
    if not resolved.exists():
        raise WeightsNotFoundError(resolved)
    if not resolved.is_file():
        raise WeightsError(f"{resolved} is not a file; expected {config.CHEXNET_WEIGHTS_FILENAME}.")
    return resolved


def detect_format(path: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """Return (format, Keras version recorded in the file or None) without building a model.

    Raises:
        WeightsNotFoundError: no file at the resolved path.
        WeightsError: the file is not a recognised weights file.
    """
    resolved = require_chexnet_weights(path)
    with _open_store(resolved) as (file_format, f):
        version = None
        if file_format == FORMAT_KERAS2:
            raw = f.attrs.get("keras_version", _keras2_root(f).attrs.get("keras_version"))
            version = _decode(raw) if raw is not None else None
        return file_format, version


# ---------------------------------------------------------------------------
# Loading into the base.
# ---------------------------------------------------------------------------
def _match_layer(layer, arrays: list[tuple[str | None, np.ndarray]]) -> tuple[list[np.ndarray], list[str]]:
    """Order a file layer's arrays like `layer.weights`; return (arrays, problems)."""
    expected = [w.name for w in layer.weights]
    file_names = [name for name, _ in arrays]
    if len(arrays) != len(expected):
        return [], [
            f"{layer.name}: the file has {len(arrays)} arrays {file_names}, DenseNet121 expects "
            f"{len(expected)} {expected}"
        ]
    if None not in file_names and file_names != expected and sorted(file_names) == sorted(expected):
        by_name = dict(arrays)
        arrays = [(name, by_name[name]) for name in expected]
    problems = []
    for variable, (_, value) in zip(layer.weights, arrays, strict=True):
        if tuple(value.shape) != tuple(variable.shape):
            problems.append(
                f"{layer.name}/{variable.name}: expected shape {tuple(variable.shape)}, "
                f"the file has {tuple(value.shape)}"
            )
    return [value for _, value in arrays], problems


def load_chexnet_base_weights(base: keras.Model, path: str | os.PathLike | None = None) -> LoadReport:
    """Load CheXNet weights into a Keras 3 DenseNet121 base (``include_top=False``), all or nothing.

    Every base layer with weights must be in the file with exactly the right shapes; file layers
    that are not part of the base (the published 14-finding ``predictions`` head) are skipped and
    reported. Nothing is assigned unless the whole base fits.

    Args:
        base: the DenseNet121 base, ``keras.applications.DenseNet121(include_top=False,
            weights=None, ...)``, before any head is added.
        path: weights file; ``None`` resolves $COVID_XRAY_CHEXNET_WEIGHTS, else the default.

    Returns:
        A `LoadReport`; ``loaded_params`` equals the base's parameter count (7,037,504).

    Raises:
        WeightsNotFoundError: no file at the resolved path (message says how to get one).
        WeightsError: unreadable file, or any base layer missing / of the wrong shape.
    """
    resolved = require_chexnet_weights(path)
    keras_version = None
    with _open_store(resolved) as (file_format, f):
        if file_format == FORMAT_KERAS2:
            root = _keras2_root(f)
            file_layers, renamed = _read_keras2(root, resolved)
            raw = f.attrs.get("keras_version", root.attrs.get("keras_version"))
            keras_version = _decode(raw) if raw is not None else None
            matched_by = "name"
        else:
            file_layers, matched_by = _read_keras3(f, base)
            renamed = {}

    weighted = [layer for layer in base.layers if layer.weights]
    missing = [layer.name for layer in weighted if layer.name not in file_layers]
    problems = [f"{name}: missing from the file" for name in missing]
    assignments = []
    for layer in weighted:
        if layer.name in file_layers:
            values, layer_problems = _match_layer(layer, file_layers[layer.name])
            problems += layer_problems
            assignments.append((layer, values))
    if problems:
        hint = ""
        if len(missing) == len(weighted):
            hint = "\nNo layer matched: this does not look like DenseNet121 weights."
        raise WeightsError(
            _format_problems(
                f"{resolved} does not fit DenseNet121 ({len(problems)} problem(s)); nothing was loaded:",
                problems,
            )
            + hint,
            problems=tuple(problems),
        )

    # All checks passed: only now touch the model, so a bad file never leaves a half-loaded base.
    for layer, values in assignments:
        layer.set_weights(values)
    loaded_params = int(sum(value.size for _, values in assignments for value in values))
    base_names = {layer.name for layer in base.layers}
    report = LoadReport(
        path=resolved,
        file_format=file_format,
        keras_version=keras_version,
        loaded_layers=tuple(layer.name for layer, _ in assignments),
        loaded_params=loaded_params,
        skipped_layers=tuple(name for name in file_layers if name not in base_names),
        renamed_layers=tuple((renamed[name], name) for name in renamed if name in base_names),
        matched_by=matched_by,
    )
    unexpected = [name for name in report.skipped_layers if name not in CHEXNET_HEAD_LAYERS]
    if file_format == FORMAT_KERAS2 and unexpected:
        logger.warning("The weights file holds layers that are not DenseNet121 (ignored): %s", unexpected)
    logger.info(report.summary())
    return report
