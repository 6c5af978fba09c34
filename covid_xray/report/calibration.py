"""The report's calibration text and figure, from `reports/<model>/calibration.json` (validation
fit), `calibration_oof.json` (out-of-fold fit) and the served checkpoint's sidecar (the T the app
applies): which T is served, where it was fitted, ECE/NLL and confident errors before and after."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covid_xray import config
from covid_xray.calibration import NOTABLE_ECE_CHANGE, SIDECAR_KEY, SPLIT_TITLES, temperature_from_metadata
from covid_xray.report.files import load_metrics, read_json, read_report_json


def load_calibration(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/calibration.json`, or None when missing or unreadable."""
    return read_report_json(name, config.CALIBRATION_FILE, reports_dir)


def reliability_image_path(name: str, reports_dir: str | os.PathLike | None = None) -> Path | None:
    """The reliability diagram of the temperature the app serves: `calibration_oof.png` when the
    served checkpoint's T was fitted out of fold, else `reliability.png`; None when it is missing."""
    folder = config.get_model_spec(name).report_dir(reports_dir)
    oof = load_oof_calibration(name, reports_dir)
    served_oof = oof is not None and _served_out_of_fold(name, oof.get("temperature"))
    path = folder / (config.OOF_RELIABILITY_FILE if served_oof else config.RELIABILITY_FILE)
    return path if path.is_file() else None


def _served_out_of_fold(name: str, temperature: Any) -> bool:
    """Whether the served checkpoint's sidecar carries this out-of-fold temperature."""
    sidecar = _sidecar(name)
    entry = sidecar.get(SIDECAR_KEY) if isinstance(sidecar.get(SIDECAR_KEY), dict) else {}
    return str(entry.get("fitted_on", "")).startswith("out-of-fold") and (
        temperature_from_metadata(sidecar) == temperature
    )


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def load_oof_calibration(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/calibration_oof.json` (`studies.oof_calibrate`), or None (missing, unreadable)."""
    report = read_report_json(name, config.OOF_CALIBRATION_FILE, reports_dir)
    return report if isinstance(report, dict) and isinstance(report.get("sets"), dict) else None


def _sidecar(name: str) -> dict:
    """The served checkpoint's JSON sidecar ({} when none or unreadable); JSON only, no TensorFlow."""
    return read_json(config.get_model_spec(name).checkpoint_path().with_suffix(".json")) or {}


def _confident(scores: Mapping[str, Any]) -> str:
    errors, confident = scores.get("errors"), scores.get("confident_errors")
    if not isinstance(errors, int) or not isinstance(confident, int):
        return "n/a"
    return f"{confident}/{errors}" + (f" ({confident / errors:.0%})" if errors else "")


def _oof_markdown(name: str, oof: dict, validation: dict | None) -> str:
    """The Model report's calibration section when an out-of-fold temperature was fitted."""
    spec = config.get_model_spec(name)
    temperature = oof.get("temperature")
    sidecar = _sidecar(name)
    served = temperature_from_metadata(sidecar)
    applied = _served_out_of_fold(name, temperature)
    sets = oof["sets"]
    fitted = sets.get("oof") or {}
    folds = {f.get("folds") for f in oof.get("fold_models") or [] if isinstance(f, dict)} - {None}
    k = f"{folds.pop()}-fold " if len(folds) == 1 else ""
    where = (
        f"fitted on the {oof.get('n_oof', fitted.get('n', '?'))} out-of-fold predictions "
        f"({(fitted.get('before') or {}).get('errors', '?')} errors) of a {k}cross-validation of the shipped "
        "recipe"
    )
    threshold = (fitted.get("before") or {}).get("threshold", 0.9)
    if applied:
        head = (
            f"**{spec.display_name}: calibrated confidence.** The app and API divide its logits by the "
            f"temperature T = {_fmt(temperature, 4)}, {where}; the test split was not used to fit."
        )
    else:
        head = (
            f"**{spec.display_name}: out-of-fold temperature not applied.** "
            f"T = {_fmt(temperature, 4)}, {where}"
            + (
                f"; apply it with `{config.OOF_APPLY_COMMAND.format(name=name)}`."
                if oof.get("helps_on_every_test_set")
                else "; it does not lower NLL and ECE on every test set, so the app serves "
                + ("raw probabilities." if served is None else f"its sidecar's T = {served:g}.")
            )
        )
    lines = [
        head,
        "",
        "| | n | errors | ECE before → after | NLL before → after | "
        f"errors with confidence ≥ {threshold:g}, before → after |",
        "|---|---:|---:|---|---|---|",
    ]
    titles = {"oof": "Out-of-fold train (fitted on)", **config.TEST_SUBSET_TITLES}
    for key, title in titles.items():
        sub = sets.get(key)
        if not isinstance(sub, dict):
            continue
        before, after = sub.get("before") or {}, sub.get("after") or {}
        lines.append(
            f"| {title} | {sub.get('n', '?')} | {before.get('errors', '?')} | "
            f"{_fmt(before.get('ece'))} → {_fmt(after.get('ece'))} | "
            f"{_fmt(before.get('nll'))} → {_fmt(after.get('nll'))} | "
            f"{_confident(before)} → {_confident(after)} |"
        )
    lines.append("")
    if isinstance(temperature, (int, float)) and temperature > 1:
        lines.append(
            "T > 1: out of fold the raw model was overconfident; scaling softens its probabilities. "
            "The predicted class never changes. ECE is the average gap between confidence and accuracy, "
            "NLL the log loss; lower is better for both."
        )
    elif isinstance(temperature, (int, float)):
        lines.append(
            "T <= 1: out of fold the raw model was not overconfident; the predicted class never changes."
        )
    n_test = (sets.get("official") or {}).get("n")
    if isinstance(n_test, int) and n_test > 0:
        lines.append(
            f"With {n_test} test images one image weighs {1 / n_test:.3f} in ECE and one error moves the "
            "confident share a lot: read small changes as noise."
        )
    if validation is not None and validation.get("applied") is False:
        n_val = ((validation.get("splits") or {}).get("validation") or {}).get("n", "?")
        lines.append(
            f"Earlier, a temperature fitted on the {n_val}-image validation split "
            f"(T = {_fmt(validation.get('fitted_temperature'), 2)}) was not applied: that split has no "
            "error, so its log loss only keeps falling as the model is made more confident. The out-of-fold "
            "predictions "
            "do have errors, which is why T is fitted there."
        )
    evaluated = evaluated_checkpoint_sha256(name)
    if applied and evaluated and sidecar.get("sha256") not in (None, evaluated):
        lines.append(
            "**Out of date:** the served checkpoint is not the evaluated one this temperature was checked "
            "on; "
            f"rerun `{config.EVALUATE_COMMAND.format(name=name)}` and the out-of-fold fit."
        )
    return "\n".join(lines)


def calibration_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """A short table for people: ECE and NLL before -> after per split, T, and what it means.

    With an out-of-fold report (calibration_oof.json) that section comes first: the T the app
    applies (read from the checkpoint sidecar), where it was fitted, and the share of errors made
    with confidence >= 0.9 before and after on each test set; the validation fit is context.
    """
    spec = config.get_model_spec(name)
    report = load_calibration(name, reports_dir)
    oof = load_oof_calibration(name, reports_dir)
    if oof is not None:
        return _oof_markdown(name, oof, report)
    if report is None or not isinstance(report.get("splits"), dict):
        return (
            f"**{spec.display_name}: no calibration yet.** Its probabilities are the raw softmax outputs. "
            "Fit a temperature on the validation split with "
            f"`{config.CALIBRATION_FIT_COMMAND.format(name=name)}`."
        )
    temperature = report.get("temperature")
    splits = report["splits"]
    n_val = (splits.get("validation") or {}).get("n", "?")
    if report.get("applied") is False:
        fitted = report.get("fitted_temperature")
        lines = [
            f"**{spec.display_name}: calibration {report.get('reason') or 'not applied.'}**",
            "",
            f"What the fitted T = {_fmt(fitted, 4)} would do (fitted on the validation split, n={n_val}; "
            "the test split was not used to fit):",
            "",
            "| | n | accuracy | ECE raw → with T | NLL raw → with T |",
            "|---|---:|---:|---|---|",
        ]
    else:
        lines = [
            f"**{spec.display_name}: calibrated confidence.** "
            f"Temperature T = {_fmt(temperature, 2)}, fitted on "
            f"the validation split (n={n_val}); the test split was not used to fit.",
            "",
            "| | n | accuracy | ECE before → after | NLL before → after |",
            "|---|---:|---:|---|---|",
        ]
    for key, title in SPLIT_TITLES.items():
        sub = splits.get(key)
        if not isinstance(sub, dict):
            continue
        before, after = sub.get("before") or {}, sub.get("after") or {}
        accuracy = sub.get("accuracy")
        lines.append(
            f"| {title} | {sub.get('n', '?')} | "
            f"{f'{accuracy:.1%}' if isinstance(accuracy, (int, float)) else 'n/a'} | "
            f"{_fmt(before.get('ece'))} → {_fmt(after.get('ece'))} | "
            f"{_fmt(before.get('nll'))} → {_fmt(after.get('nll'))} |"
        )
    lines.append("")
    if report.get("applied") is False:
        lines.append(
            "A validation split that the model gets entirely right says nothing about how wrong its "
            "confidence is elsewhere; calibrating it honestly needs held-out images with errors "
            "(e.g. out-of-fold predictions from cross-validation)."
        )
    elif isinstance(temperature, (int, float)) and abs(temperature - 1) < 0.05:
        meaning = "T is close to 1: the raw probabilities were already about as well calibrated as T allows."
    elif isinstance(temperature, (int, float)) and temperature > 1:
        meaning = "T > 1: the raw model was overconfident on validation; scaling softens its probabilities."
    else:
        meaning = "T < 1: the raw model was underconfident on validation; scaling sharpens its probabilities."
    if report.get("applied") is not False:
        lines.append(
            f"{meaning} The predicted class never changes. ECE is the average gap between confidence and "
            "accuracy, NLL the log loss; lower is better for both."
        )
    for key in ("official", "leakage_free"):
        sub = splits.get(key) or {}
        ece_before = (sub.get("before") or {}).get("ece")
        ece_after = (sub.get("after") or {}).get("ece")
        if not (isinstance(ece_before, (int, float)) and isinstance(ece_after, (int, float))):
            continue
        if ece_after > ece_before + NOTABLE_ECE_CHANGE:
            lines.append(
                f"On the {SPLIT_TITLES[key].lower()} set the ECE "
                f"{'would go' if report.get('applied') is False else 'went'} up "
                f"({ece_before:.3f} → {ece_after:.3f}): a temperature fitted on {n_val} validation "
                "images does not carry over there."
            )
    n_test = (splits.get("official") or {}).get("n")
    if isinstance(n_test, int) and n_test > 0:
        lines.append(
            f"With {n_test} test images one image weighs {1 / n_test:.3f} in ECE: "
            "read small changes as noise."
        )
    evaluated = evaluated_checkpoint_sha256(name, reports_dir)
    if evaluated and report.get("checkpoint_sha256") and evaluated != report["checkpoint_sha256"]:
        lines.append(
            f"**Out of date:** this calibration is for another checkpoint than the evaluated one; rerun "
            f"`{config.CALIBRATION_FIT_COMMAND.format(name=name)}`."
        )
    return "\n".join(lines)


def evaluated_checkpoint_sha256(name: str, reports_dir: str | os.PathLike | None = None) -> str | None:
    """The checkpoint sha256 the model's metrics.json records (None when unknown)."""
    value = (load_metrics(name, reports_dir) or {}).get("checkpoint_sha256")
    return value if isinstance(value, str) else None
