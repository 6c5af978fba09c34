"""The dataset from the command line: download it, count it, audit it for leakage.

    python -m covid_xray.studies.data download [--dest D] [--link]
    python -m covid_xray.studies.data info [--data-dir D]
    python -m covid_xray.studies.data audit [--data-dir D] [--out F] [--threshold N]

`audit` writes `reports/audit.json` (`covid_xray.audit`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from covid_xray import config, imaging
from covid_xray.audit import audit
from covid_xray.config import CLASS_NAMES, SPLITS
from covid_xray.data import (
    NEAR_DUPLICATE_THRESHOLD,
    DatasetNotFoundError,
    DownloadError,
    dataset_manifest_hash,
    find_dataset_root,
    list_samples,
)
from covid_xray.studies import _options

logger = logging.getLogger(__name__)


def download_dataset(dest: str | os.PathLike | None = None, *, link: bool = False) -> Path:
    """Download the Kaggle dataset with kagglehub and copy (or symlink) it to `dest`.

    Args:
        dest: dataset root to create; default `config.DEFAULT_DATA_DIR`.
        link: symlink to kagglehub's cache instead of copying.

    Returns:
        The dataset root (holding train/ and test/).

    Raises:
        DownloadError: kagglehub missing, download failed, or `dest` exists but is no dataset.
    """
    dest = Path(dest).expanduser() if dest else config.DEFAULT_DATA_DIR
    if dest.exists():
        try:
            root = find_dataset_root(dest)
        except DatasetNotFoundError:
            raise DownloadError(
                f"{dest} already exists and is not the dataset; remove it or pick another --dest."
            ) from None
        logger.info("Dataset already present at %s", root)
        return root
    try:
        import kagglehub
    except ImportError:
        raise DownloadError("The download needs kagglehub: `pip install kagglehub`.") from None
    try:
        downloaded = Path(kagglehub.dataset_download(config.KAGGLE_DATASET))
    except Exception as exc:  # noqa: BLE001 - network, auth and API errors all end up here
        raise DownloadError(f"kagglehub could not download {config.KAGGLE_DATASET}: {exc}") from exc
    try:
        source = find_dataset_root(downloaded)
    except DatasetNotFoundError as exc:
        raise DownloadError(f"Unexpected layout in the download at {downloaded}: {exc}") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        dest.symlink_to(source.resolve(), target_is_directory=True)
    else:
        shutil.copytree(source, dest)
    return dest


def _cmd_download(args: argparse.Namespace) -> int:
    root = download_dataset(args.dest, link=args.link)
    samples = list_samples(root)
    print(f"Dataset ready at {root} ({len(samples)} images). Use it with:")
    print(f"export {config.DATA_ENV_VAR}={shlex.quote(str(Path(root).resolve()))}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    samples = list_samples(args.data_dir)
    counts = Counter((s.split, s.label) for s in samples)
    width = max(len(c) for c in CLASS_NAMES)
    print(f"Dataset: {find_dataset_root(config.resolve_data_dir(args.data_dir))}")
    print(f"{'split':<6} " + " ".join(f"{c:>{width}}" for c in CLASS_NAMES) + f" {'total':>6}")
    for split in SPLITS:
        row = [counts[(split, c)] for c in CLASS_NAMES]
        print(f"{split:<6} " + " ".join(f"{n:>{width}}" for n in row) + f" {sum(row):>6}")
    print(f"manifest sha256: {dataset_manifest_hash(samples)}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    report = audit(list_samples(args.data_dir), near_threshold=args.threshold)
    path = report.to_json(args.out)
    print(report.summary())
    print(f"Written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m covid_xray.studies.data`."""
    parser = argparse.ArgumentParser(prog=config.DATA_COMMAND, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="download the Kaggle dataset with kagglehub")
    p.add_argument(
        "--dest", default=None, help=f"dataset folder to create (default {config.DEFAULT_DATA_DIR})"
    )
    p.add_argument("--link", action="store_true", help="symlink to the kagglehub cache instead of copying")
    p.set_defaults(func=_cmd_download)
    p = sub.add_parser("info", help="image counts per split and class")
    _options.add(p, "data_dir")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("audit", help="exact and near duplicates within and across splits")
    _options.add(p, "data_dir")
    p.add_argument("--out", default=None, help="JSON report path (default <reports dir>/audit.json)")
    p.add_argument(
        "--threshold", type=int, default=NEAR_DUPLICATE_THRESHOLD, help="max phash Hamming distance"
    )
    p.set_defaults(func=_cmd_audit)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (DatasetNotFoundError, DownloadError, imaging.ImageDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
