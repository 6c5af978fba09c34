"""The command-line options the studies share, each defined once (flag, default, help)."""

from __future__ import annotations

import argparse

from covid_xray import config


def add(parser: argparse.ArgumentParser, *options: str) -> argparse.ArgumentParser:
    """Add the named shared options ("model", "data_dir", "checkpoint_dir", "reports_dir", and for
    the fold-run comparisons "reference" and "note")."""
    for option in options:
        _OPTIONS[option](parser)
    return parser


def _model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=sorted(config.MODELS), default="davidnet")


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help=f"dataset root (default ${config.DATA_ENV_VAR})")


def _checkpoint_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help=f"checkpoint folder (default ${config.CHECKPOINT_DIR_ENV_VAR} or checkpoints/)",
    )


def _reports_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reports-dir",
        default=None,
        help=f"reports folder (default ${config.REPORTS_DIR_ENV_VAR} or reports/)",
    )


def _reference(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", nargs="+", required=True, help="fold runs of the shipped recipe")


def _note(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--note", default=None, help="free text stored in the report (how the folds were run)"
    )


_OPTIONS = {
    "model": _model,
    "data_dir": _data_dir,
    "checkpoint_dir": _checkpoint_dir,
    "reports_dir": _reports_dir,
    "reference": _reference,
    "note": _note,
}
