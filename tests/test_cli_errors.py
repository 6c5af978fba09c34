"""Every command-line tool fails on a typical bad input with one clear paragraph, not a traceback.

Each case runs the tool's `main()` in-process and READS what it printed: no nested or repeated
message, no quoting debris, no blank line splitting it into several blocks, a non-zero exit code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from covid_xray import config


def assert_one_paragraph(text: str) -> None:
    """What a person reads after a failed command: one block of text that says one thing once."""
    text = text.strip()
    assert text, "the command failed without saying why"
    assert "Traceback" not in text
    assert "\n\n" not in text, f"several paragraphs:\n{text}"
    assert text.count("error:") <= 1, text
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 5]
    repeated = {s for s in sentences if sentences.count(s) > 1}
    assert not repeated, f"said twice: {repeated}"
    assert not re.search(r"https?:/[^/]", text), text
    assert "'\"'\"'" not in text and "passed explicitly" not in text, text


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """CheXNet weights configured to a path where there is no file."""
    missing = tmp_path / "weights" / "chexnet_base.h5"
    monkeypatch.setenv(config.CHEXNET_WEIGHTS_ENV_VAR, str(missing))
    return missing


def _train(argv):
    import train

    return train.main(argv)


def _module_main(name: str) -> Callable[[list[str]], int]:
    def run(argv):
        import importlib

        return importlib.import_module(f"covid_xray.{name}").main(argv)

    return run


# (id, runner, argv built from tmp_path, text that must appear in the message)
CASES = [
    (
        "train-chexnet-without-weights",
        _train,
        lambda tmp: ["--model", "chexnet", "--run-dir", str(tmp / "run"), "--quiet"],
        "CheXNet weights are missing: no file at {weights}",
    ),
    (
        "train-without-dataset",
        _train,
        lambda tmp: ["--data-dir", str(tmp / "no-data"), "--run-dir", str(tmp / "run"), "--quiet"],
        "Dataset folder {tmp}/no-data does not exist",
    ),
    ("weights-check", _module_main("studies.weights"), lambda tmp: ["check"], "no file at {weights}"),
    (
        "weights-install",
        _module_main("studies.weights"),
        lambda tmp: ["install", str(tmp / "absent.h5")],
        "No file to install at {tmp}/absent.h5",
    ),
    (
        "evaluate-chexnet-not-trained",
        _module_main("studies.evaluate"),
        lambda tmp: ["--model", "chexnet", "--checkpoint", str(tmp / "chexnet.keras")],
        "Checkpoint not found: {tmp}/chexnet.keras",
    ),
    (
        "calibration-fit-no-checkpoint",
        _module_main("studies.calibrate"),
        lambda tmp: ["fit", "--checkpoint-dir", str(tmp)],
        "Checkpoint not found: {tmp}/davidnet.keras",
    ),
    (
        "ood-fit-no-checkpoint",
        _module_main("studies.ood"),
        lambda tmp: ["fit", "--checkpoint-dir", str(tmp)],
        "Checkpoint not found: {tmp}/davidnet.keras",
    ),
    (
        "ood-measure-no-dataset",
        _module_main("studies.ood"),
        lambda tmp: ["measure", "--data-dir", str(tmp / "no-data"), "--out", str(tmp / "ood.json")],
        "Dataset folder {tmp}/no-data does not exist",
    ),
    (
        "predict-missing-file",
        _module_main("predict"),
        lambda tmp: ["--checkpoint-dir", str(tmp), str(tmp / "absent.jpg")],
        "No such file: {tmp}/absent.jpg",
    ),
    (
        "data-info-no-dataset",
        _module_main("studies.data"),
        lambda tmp: ["info", "--data-dir", str(tmp / "no-data")],
        "Dataset folder {tmp}/no-data does not exist",
    ),
]


@pytest.mark.parametrize(("runner", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_clear_paragraph(runner, argv, expected, tmp_path, no_weights, capsys):
    rc = runner(argv(tmp_path))
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert rc != 0, text
    assert_one_paragraph(text)
    assert expected.format(tmp=tmp_path, weights=no_weights) in text


def test_train_without_chexnet_weights_says_it_once_and_writes_nothing(tmp_path, no_weights, capsys):
    """The issue's case: the message once, the fix once, and no run folder left behind."""
    from covid_xray.weights import FIX_COMMAND, missing_weights_message

    rc = _train(["--model", "chexnet", "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == f"error: {missing_weights_message(no_weights)}"
    assert err.count(FIX_COMMAND) == 1 and err.count(str(no_weights)) == 1
    assert not (tmp_path / "run").exists()


def test_assert_one_paragraph_catches_the_old_garbled_message():
    """The checker fails on the message the issue quotes (so the cases above can fail)."""
    garbled = (
        "error: CheXNet weights are missing: no file at /x/CheXNet weights are missing: no file at /x/a.h5 "
        "(that path was passed explicitly).\nFix it with one command:\n\n    pip install kagglehub\n"
        "See https:/github.com/brucechou1983/CheXNet-Keras for the file'\"'\"'s SHA-256.\n"
        "Fix it with one command:"
    )
    with pytest.raises(AssertionError):
        assert_one_paragraph(garbled)
    for broken in (
        garbled.replace("\n\n", "\n"),
        "Traceback (most recent call last):",
        "a https:/b.org link",
    ):
        with pytest.raises(AssertionError):
            assert_one_paragraph(broken)
