"""CheXNet weights: the published Keras-2 layout, Keras 3 files, typed failures (`covid_xray.weights`);
fetch, install and the command line (`covid_xray.studies.weights`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from covid_xray import config
from covid_xray.hashing import sha256_file
from covid_xray.models import CHEXNET_BASE_PARAMS, CHEXNET_TRAINABLE_PARAMS, build_chexnet
from covid_xray.studies.weights import fetch, main
from covid_xray.weights import (
    FIX_COMMAND,
    FORMAT_KERAS2,
    FORMAT_KERAS3_ARCHIVE,
    FORMAT_KERAS3_WEIGHTS,
    WeightsError,
    WeightsNotFoundError,
    detect_format,
    fix_commands,
    load_chexnet_base_weights,
    missing_weights_message,
)
from tests.chexnet_fixtures import build_base, random_arrays, set_arrays, write_keras2_chexnet_weights


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _assert_base_equals(model: keras.Model, arrays: dict[str, list[np.ndarray]]) -> None:
    for name, expected in arrays.items():
        actual = model.get_layer(name).get_weights()
        assert len(actual) == len(expected), name
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_array_equal(a, e, err_msg=name)


def _scramble(base: keras.Model, seed: int) -> None:
    """Overwrite the base so a successful load cannot pass by leftovers of an earlier test."""
    set_arrays(base, random_arrays(base, seed))


@pytest.fixture(scope="module")
def base():
    return build_base()


@pytest.fixture(scope="module")
def keras2_file(tmp_path_factory, base):
    path = tmp_path_factory.mktemp("chexnet") / config.CHEXNET_WEIGHTS_FILENAME
    arrays = write_keras2_chexnet_weights(path, seed=0, base=base)
    return path, arrays


@pytest.fixture(scope="module")
def chexnet_model(keras2_file):
    path, _ = keras2_file
    return build_chexnet(weights=path)


@pytest.fixture(scope="module")
def donor_file(tmp_path_factory):
    """A Keras 3 ``save_weights`` file of a standalone base, with its own random values."""
    donor = build_base()
    arrays = random_arrays(donor, seed=11)
    set_arrays(donor, arrays)
    path = tmp_path_factory.mktemp("keras3") / "donor.weights.h5"
    donor.save_weights(path)
    return path, arrays


def _corrupt(src, dst, *, drop=None, reshape=None):
    """Copy a Keras-2 file, removing layer `drop` and/or giving the first array of `reshape` a bad shape."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        if drop is not None:
            del f[drop]
            names = [n for n in f.attrs["layer_names"] if n.decode() != drop]
            f.attrs["layer_names"] = np.array(names)
        if reshape is not None:
            group = f[reshape]
            first = group.attrs["weight_names"][0].decode()
            old = group[first][()]
            del group[first]
            group.create_dataset(first, data=np.zeros((old.shape[0] + 3,), np.float32))


# --- The published Keras-2 layout --------------------------------------------------------------
@pytest.mark.slow
def test_keras2_file_round_trips_every_base_parameter(base, keras2_file):
    path, arrays = keras2_file
    _scramble(base, seed=5)
    report = load_chexnet_base_weights(base, path)
    assert report.file_format == FORMAT_KERAS2 and report.keras_version == "2.1.6"
    assert report.loaded_params == CHEXNET_BASE_PARAMS == base.count_params() == 7_037_504
    # Every base layer with weights came from the file; the 14-finding head did not.
    assert set(report.loaded_layers) == {layer.name for layer in base.layers if layer.weights} == set(arrays)
    assert report.skipped_layers == ("predictions",)
    assert ("conv1/conv", "conv1_conv") in report.renamed_layers
    assert "predictions" in report.summary() and "7,037,504" in report.summary()
    _assert_base_equals(base, arrays)


@pytest.mark.slow
def test_keras2_full_model_file_and_reordered_batchnorm(base, tmp_path):
    # model.save() in Keras 2 nests the same layout under "model_weights"; names decide the order.
    path = tmp_path / "full.h5"
    arrays = write_keras2_chexnet_weights(path, seed=3, base=base, full_model=True)
    with h5py.File(path, "r+") as f:
        group = f["model_weights/conv1/bn"]
        group.attrs["weight_names"] = np.array(list(group.attrs["weight_names"])[::-1])
    _scramble(base, seed=6)
    report = load_chexnet_base_weights(base, path)
    assert report.loaded_params == CHEXNET_BASE_PARAMS
    _assert_base_equals(base, arrays)


@pytest.mark.slow
def test_build_chexnet_with_keras2_weights_is_flat_and_frozen(chexnet_model, keras2_file):
    _, arrays = keras2_file
    model = chexnet_model
    assert _count(model.trainable_weights) == CHEXNET_TRAINABLE_PARAMS == 65_795
    assert _count(model.non_trainable_weights) == CHEXNET_BASE_PARAMS == 7_037_504
    # One flat graph: Grad-CAM reaches DenseNet's last block by name.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert tuple(model.get_layer(config.MODELS["chexnet"].gradcam_layer).output.shape[1:]) == (7, 7, 1024)
    assert model.get_layer("relu") is not None and model.get_layer("conv5_block16_concat") is not None
    _assert_base_equals(model, arrays)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("drop", "reshape", "named"),
    [
        # An inner conv missing and a BatchNorm of the wrong width: both are named.
        ("conv3_block2_1_conv", "conv4_block1_1_bn", ["conv3_block2_1_conv", "conv4_block1_1_bn/gamma"]),
        # The stem conv is stored as nested groups "conv1/conv"; it is reported by its Keras 3 name.
        ("conv1/conv", None, ["conv1_conv"]),
    ],
)
def test_corrupted_file_names_the_layers_and_loads_nothing(base, keras2_file, tmp_path, drop, reshape, named):
    path, _ = keras2_file
    bad = tmp_path / "bad.h5"
    _corrupt(path, bad, drop=drop, reshape=reshape)
    _scramble(base, seed=7)
    before = base.get_layer("conv5_block16_2_conv").get_weights()[0].copy()
    with pytest.raises(WeightsError) as info:
        load_chexnet_base_weights(base, bad)
    message = str(info.value)
    for name in named:
        assert name in message
    assert len(info.value.problems) == len(named)
    if reshape:
        expected = tuple(base.get_layer(reshape).weights[0].shape)
        assert f"expected shape {expected}, the file has ({expected[0] + 3},)" in message
    # All or nothing: a bad file leaves the base untouched.
    np.testing.assert_array_equal(base.get_layer("conv5_block16_2_conv").get_weights()[0], before)


@pytest.mark.slow
def test_layer_listed_without_data_is_reported_as_damage(base, keras2_file, tmp_path):
    path, _ = keras2_file
    bad = tmp_path / "truncated.h5"
    shutil.copyfile(path, bad)
    with h5py.File(bad, "r+") as f:
        # Listed in layer_names but its group is gone, as in an interrupted copy.
        del f["conv2_block3_2_conv"]
    with pytest.raises(WeightsError, match="damaged: it lists layer 'conv2_block3_2_conv'"):
        load_chexnet_base_weights(base, bad)


def _assert_one_paragraph(message: str) -> None:
    """One paragraph for people: no line breaks, no sentence twice, no quoting debris."""
    assert "\n" not in message.strip()
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", message) if s.strip()]
    assert len(sentences) == len(set(sentences)), message
    assert message.count("CheXNet weights are missing") == 1
    assert not re.search(r"https:/[^/]", message) and "'\"'\"'" not in message


def test_missing_file_raises_with_the_fix_command(tmp_path, monkeypatch):
    monkeypatch.delenv(config.CHEXNET_WEIGHTS_ENV_VAR, raising=False)
    missing = tmp_path / "nowhere" / "chexnet.h5"
    with pytest.raises(WeightsNotFoundError) as info:
        # The file check comes before the model is touched, so any object serves as the base.
        load_chexnet_base_weights(None, missing)
    error = info.value
    assert isinstance(error, FileNotFoundError) and isinstance(error, WeightsError)
    assert error.path == missing
    message = str(error)
    assert message == missing_weights_message(missing)
    _assert_one_paragraph(message)
    assert f"no file at {missing}." in message
    # Not the default location: the fix must install exactly there.
    assert f"{FIX_COMMAND} --dest {missing}`" in message
    assert f"{config.WEIGHTS_COMMAND} install FILE --dest {missing}`" in message
    assert "https://github.com/brucechou1983/CheXNet-Keras" in message
    assert fix_commands(missing)[0] == f"{FIX_COMMAND} --dest {missing}"
    assert all(f"--dest {missing}" in command for command in fix_commands(missing))


def test_missing_message_at_the_default_location_needs_no_dest(monkeypatch):
    monkeypatch.delenv(config.CHEXNET_WEIGHTS_ENV_VAR, raising=False)
    message = missing_weights_message(config.resolve_chexnet_weights())
    _assert_one_paragraph(message)
    assert "--dest" not in message and "passed explicitly" not in message
    assert f"`{FIX_COMMAND}`" in message


def test_missing_message_names_the_environment_variable(tmp_path, monkeypatch):
    target = tmp_path / "from_env.h5"
    monkeypatch.setenv(config.CHEXNET_WEIGHTS_ENV_VAR, str(target))
    message = missing_weights_message(config.resolve_chexnet_weights())
    _assert_one_paragraph(message)
    assert f"(set by ${config.CHEXNET_WEIGHTS_ENV_VAR})" in message
    # The fix command then installs exactly there without needing --dest.
    assert "--dest" not in message and not any("--dest" in c for c in fix_commands())


def test_paths_with_spaces_are_quoted_once(tmp_path, monkeypatch):
    monkeypatch.delenv(config.CHEXNET_WEIGHTS_ENV_VAR, raising=False)
    missing = tmp_path / "my weights" / "chexnet.h5"
    message = missing_weights_message(missing)
    _assert_one_paragraph(message)
    assert f"--dest '{missing}'`" in message and message.count("'") == 4


def test_unrecognised_files_are_refused(tmp_path):
    html = tmp_path / "weights.h5"
    html.write_text("<html>Sign in to continue</html>")
    with pytest.raises(WeightsError, match="neither HDF5 nor a .keras archive"):
        detect_format(html)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match="not Keras weights"):
        detect_format(other)


# --- Keras 3 files -----------------------------------------------------------------------------
@pytest.mark.slow
def test_keras3_weights_file_of_the_base(base, donor_file):
    path, arrays = donor_file
    _scramble(base, seed=8)
    report = load_chexnet_base_weights(base, path)
    assert report.file_format == FORMAT_KERAS3_WEIGHTS and report.matched_by == "name"
    assert report.loaded_params == CHEXNET_BASE_PARAMS and report.skipped_layers == ()
    _assert_base_equals(base, arrays)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_keras3_files_of_the_whole_chexnet_model(base, chexnet_model, tmp_path, suffix):
    path = tmp_path / f"chexnet{suffix}"
    if suffix == ".keras":
        chexnet_model.save(path)
    else:
        chexnet_model.save_weights(path)
    expected = {
        layer.name: chexnet_model.get_layer(layer.name).get_weights()
        for layer in base.layers
        if layer.weights
    }
    _scramble(base, seed=9)
    report = load_chexnet_base_weights(base, path)
    assert report.file_format == (FORMAT_KERAS3_ARCHIVE if suffix == ".keras" else FORMAT_KERAS3_WEIGHTS)
    assert report.loaded_params == CHEXNET_BASE_PARAMS
    # Our 3-class head is not part of DenseNet121: skipped and reported.
    assert {"head_dense", "predictions"} <= set(report.skipped_layers)
    _assert_base_equals(base, expected)


@pytest.mark.slow
def test_keras3_file_without_layer_names_is_matched_by_position(base, donor_file, tmp_path):
    path, arrays = donor_file
    stripped = tmp_path / "old.weights.h5"
    shutil.copyfile(path, stripped)
    with h5py.File(stripped, "r+") as f:
        # Older Keras 3 versions wrote no "name" attribute on the variable groups.
        f.visititems(lambda _, obj: obj.attrs.__delitem__("name") if "name" in obj.attrs else None)
    _scramble(base, seed=10)
    report = load_chexnet_base_weights(base, stripped)
    assert report.matched_by == "position" and report.loaded_params == CHEXNET_BASE_PARAMS
    _assert_base_equals(base, arrays)


# --- fetch and the CLI -------------------------------------------------------------------------
def test_fetch_file_url_checks_the_hash(tmp_path):
    source = tmp_path / "published.h5"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    good = sha256_file(source)
    dest = tmp_path / "out" / "chexnet.h5"

    assert fetch(source.as_uri(), good.upper(), dest) == dest
    assert dest.read_bytes() == source.read_bytes()

    other = tmp_path / "out" / "second.h5"
    with pytest.raises(WeightsError, match="SHA-256 mismatch") as info:
        fetch(source.as_uri(), "0" * 64, other)
    assert good in str(info.value)
    # Nothing left behind: no target, no partial download.
    assert not other.exists()
    assert sorted(p.name for p in other.parent.iterdir()) == ["chexnet.h5"]


def test_fetch_reports_unreachable_sources(tmp_path):
    with pytest.raises(WeightsError, match="Could not download"):
        fetch((tmp_path / "absent.h5").as_uri(), None, tmp_path / "dest.h5")
    with pytest.raises(WeightsError, match="Unsupported URL scheme"):
        fetch("ftp://example.org/w.h5", None, tmp_path / "dest.h5")
    assert not (tmp_path / "dest.h5").exists()


def test_cli_check_fails_with_the_message_when_missing(tmp_path, monkeypatch):
    missing = tmp_path / "absent" / "chexnet.h5"
    env = {**os.environ, config.CHEXNET_WEIGHTS_ENV_VAR: str(missing), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "covid_xray.studies.weights", "check"],
        cwd=config.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    monkeypatch.setenv(config.CHEXNET_WEIGHTS_ENV_VAR, str(missing))
    assert result.stderr.strip() == missing_weights_message(missing)
    assert FIX_COMMAND in result.stderr


@pytest.mark.slow
def test_cli_check_install_and_verify(keras2_file, tmp_path, monkeypatch, capsys):
    path, _ = keras2_file
    dest = tmp_path / "installed" / "chexnet_base.h5"
    monkeypatch.setenv(config.CHEXNET_WEIGHTS_ENV_VAR, str(dest))
    assert main(["check"]) == 1
    assert main(["install", str(path), "--sha256", sha256_file(path)]) == 0
    assert sha256_file(dest) == sha256_file(path)
    capsys.readouterr()
    assert main(["check"]) == 0
    assert "Keras-2 HDF5 weights, Keras 2.1.6" in capsys.readouterr().out
    assert main(["verify"]) == 0
    assert f"parameters: {CHEXNET_BASE_PARAMS}" in capsys.readouterr().out
    # A wrong checksum refuses the install and leaves the installed file alone.
    assert main(["install", str(path), "--sha256", "f" * 64, "--dest", str(tmp_path / "x.h5")]) == 1
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow
def test_fetch_from_kaggle_installs_a_checked_mirror(tmp_path, monkeypatch, keras2_file):
    """The one-command fix: a (fake, offline) kagglehub download is verified, then installed."""
    import types

    from covid_xray.studies.weights import fetch_from_kaggle
    from covid_xray.weights import FIX_COMMAND as ONE_COMMAND
    from covid_xray.weights import missing_weights_message

    path, _ = keras2_file
    mirror = tmp_path / "kaggle" / "versions" / "1"
    mirror.mkdir(parents=True)
    shutil.copyfile(path, mirror / config.CHEXNET_WEIGHTS_FILENAME)
    fake = types.SimpleNamespace(dataset_download=lambda handle: str(tmp_path / "kaggle"))
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    dest = tmp_path / "installed.h5"
    report = fetch_from_kaggle(dest=dest)
    assert dest.exists() and report.loaded_params == CHEXNET_BASE_PARAMS
    assert ONE_COMMAND in missing_weights_message(tmp_path / "absent.h5")


def test_fetch_from_kaggle_without_an_h5_is_refused(tmp_path, monkeypatch):
    import types

    from covid_xray.studies.weights import fetch_from_kaggle
    from covid_xray.weights import WeightsError

    (tmp_path / "empty").mkdir()
    fake = types.SimpleNamespace(dataset_download=lambda h: str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    with pytest.raises(WeightsError, match="no .h5"):
        fetch_from_kaggle(dest=tmp_path / "x.h5")
