"""Getting the CheXNet base weights file, from the command line or first-start provisioning::

    python -m covid_xray.studies.weights check              # are the weights where the code looks?
    python -m covid_xray.studies.weights verify [PATH]      # load them into DenseNet121, print the count
    python -m covid_xray.studies.weights fetch --url URL [--sha256 HEX] [--dest PATH]
    python -m covid_xray.studies.weights fetch-kaggle [--dataset HANDLE] [--dest PATH]
    python -m covid_xray.studies.weights install FILE [--sha256 HEX] [--dest PATH]

Every way in checks the file (SHA-256 when given, and that it loads as a complete DenseNet121)
in a temporary file beside the target and moves it into place atomically. Loading the file into
a model: `covid_xray.weights`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from covid_xray import config
from covid_xray.downloads import DOWNLOAD_TIMEOUT_S, DownloadError, download
from covid_xray.hashing import sha256_file
from covid_xray.weights import (
    CHEXNET_KAGGLE_DATASET,
    CHEXNET_WEIGHTS_SHA256,
    CHEXNET_WEIGHTS_URL,
    FORMAT_DESCRIPTIONS,
    LoadReport,
    WeightsError,
    detect_format,
    load_chexnet_base_weights,
)

logger = logging.getLogger(__name__)



def verify_weights_file(path: str | os.PathLike | None = None) -> LoadReport:
    """Build a fresh DenseNet121 base and load `path` into it (a full structural check)."""
    import keras

    from covid_xray.models import build_densenet_base

    base = build_densenet_base(keras.Input(shape=config.INPUT_SHAPE, name="image"))
    return load_chexnet_base_weights(base, path)


def _check_hash(actual: str, expected: str | None, what: str) -> None:
    if expected is None:
        logger.warning("No --sha256 given for %s; its SHA-256 is %s (pin it next time).", what, actual)
    elif actual != expected.strip().lower():
        raise WeightsError(f"SHA-256 mismatch for {what}: expected {expected.strip().lower()}, got {actual}.")


def _atomic_target(dest: str | os.PathLike | None) -> tuple[Path, Path]:
    """Resolve dest and create a temporary file beside it (same filesystem: atomic rename)."""
    final = config.resolve_chexnet_weights(dest)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    return final, Path(tmp)


def fetch(
    url: str,
    sha256: str | None,
    dest: str | os.PathLike | None = None,
    *,
    verify_structure: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download the weights to a temporary file, check them, then move them into place atomically.

    Args:
        url: http(s) or file:// URL.
        sha256: expected hex digest; ``None`` skips the check (and logs the actual digest).
        dest: target path; ``None`` resolves $COVID_XRAY_CHEXNET_WEIGHTS, else the default.
        verify_structure: also require the file to load as a complete DenseNet121 base.
        timeout: network timeout in seconds.

    Returns:
        The final path.

    Raises:
        WeightsError: download failed, hash mismatch, or (with verify_structure) a bad file;
            the partial download is removed and `dest` is left untouched.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https", "file"):
        raise WeightsError(f"Unsupported URL scheme {scheme!r} in {url!r}; use https:// or file://.")
    final, tmp = _atomic_target(dest)
    try:
        try:  # the one download loop (first-start provisioning uses it too)
            digest = download(url, tmp, timeout=timeout, title="CheXNet weights")
        except DownloadError as exc:
            raise WeightsError(f"Could not download {url}: {exc}.") from exc
        _check_hash(digest, sha256, url)
        if verify_structure:
            verify_weights_file(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("CheXNet weights saved to %s", final)
    return final


def install(
    source: str | os.PathLike, dest: str | os.PathLike | None = None, sha256: str | None = None
) -> LoadReport:
    """Check a local weights file (hash, loads as a complete DenseNet121) and copy it into place.

    Raises:
        WeightsError: no such file, hash mismatch, or a file that does not fit DenseNet121.
    """
    source = Path(source).expanduser().resolve()
    if not source.is_file():
        raise WeightsError(f"No file to install at {source}.")
    _check_hash(sha256_file(source), sha256, str(source))
    report = verify_weights_file(source)
    final, tmp = _atomic_target(dest)
    try:
        if final != source:
            shutil.copyfile(source, tmp)
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("CheXNet weights installed at %s", final)
    return report


def fetch_from_kaggle(
    handle: str = CHEXNET_KAGGLE_DATASET, dest: str | os.PathLike | None = None
) -> LoadReport:
    """Download a Kaggle dataset holding the weights file (kagglehub) and install it.

    Raises:
        WeightsError: kagglehub missing, the download failed, no weights file in it, or the
            file does not load as a complete DenseNet121.
    """
    try:
        import kagglehub
    except ImportError as exc:
        raise WeightsError("kagglehub is not installed: run `pip install kagglehub` first.") from exc
    try:
        folder = Path(kagglehub.dataset_download(handle))
    except Exception as exc:  # network, auth and API errors all end here, for people.
        raise WeightsError(f"Could not download Kaggle dataset {handle}: {exc}") from exc
    candidates = sorted(folder.rglob(config.CHEXNET_WEIGHTS_FILENAME)) or sorted(folder.rglob("*.h5"))
    if not candidates:
        raise WeightsError(f"Kaggle dataset {handle} holds no .h5 weights file (looked in {folder}).")
    return install(candidates[0], dest)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=config.WEIGHTS_COMMAND, description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dest_help = (
        f"target path (default: ${config.CHEXNET_WEIGHTS_ENV_VAR}, else {config.DEFAULT_CHEXNET_WEIGHTS})"
    )

    p = sub.add_parser("fetch", help="download the weights, check the hash and that they load")
    p.add_argument("--url", default=CHEXNET_WEIGHTS_URL, required=CHEXNET_WEIGHTS_URL is None)
    p.add_argument("--sha256", default=CHEXNET_WEIGHTS_SHA256, help="expected SHA-256 (hex)")
    p.add_argument("--dest", help=dest_help)

    p = sub.add_parser(
        "fetch-kaggle", help="download the weights from a Kaggle mirror (kagglehub) and install them"
    )
    p.add_argument("--dataset", default=CHEXNET_KAGGLE_DATASET, help="Kaggle dataset handle")
    p.add_argument("--dest", help=dest_help)

    p = sub.add_parser("install", help="check a local copy of the weights and copy it into place")
    p.add_argument("source", help=f"path to {config.CHEXNET_WEIGHTS_FILENAME}")
    p.add_argument("--sha256", default=None, help="expected SHA-256 (hex)")
    p.add_argument("--dest", help=dest_help)

    p = sub.add_parser("verify", help="load the weights into DenseNet121 and print the parameter count")
    p.add_argument("path", nargs="?", help=dest_help)

    p = sub.add_parser("check", help="say whether the weights are present (exit 1 if not)")
    p.add_argument("path", nargs="?", help=dest_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 missing or bad weights)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "fetch":
            path = fetch(args.url, args.sha256, args.dest, verify_structure=True)
            print(f"CheXNet weights ready at {path} (sha256 {sha256_file(path)}).")
        elif args.command == "fetch-kaggle":
            report = fetch_from_kaggle(args.dataset, args.dest)
            print(f"CheXNet weights installed at {config.resolve_chexnet_weights(args.dest)}.")
            print(report.summary())
        elif args.command == "install":
            report = install(args.source, args.dest, args.sha256)
            print(f"CheXNet weights installed at {config.resolve_chexnet_weights(args.dest)}.")
            print(report.summary())
        elif args.command == "verify":
            report = verify_weights_file(args.path)
            print(report.summary())
            print(f"parameters: {report.loaded_params}")
        else:
            file_format, version = detect_format(args.path)
            path = config.resolve_chexnet_weights(args.path)
            version_text = f", Keras {version}" if version else ""
            print(f"CheXNet weights present: {path} ({FORMAT_DESCRIPTIONS[file_format]}{version_text}).")
    except WeightsError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
