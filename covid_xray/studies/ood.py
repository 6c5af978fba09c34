"""The input guard, fitted and measured (`covid_xray.ood` holds the guard itself)::

    python -m covid_xray.studies.ood fit --model davidnet [--data-dir D] [--checkpoint-dir C]
    python -m covid_xray.studies.ood measure --model davidnet [--data-dir D] [--out reports/ood.json]

`fit` writes `checkpoints/ood_<model>.json` (class means and covariance from every train-folder
image; threshold from their out-of-fold distances; the test split is never read); `measure`
prints the false-alarm rate on real chest X-rays (the train folder out of fold, the 66 official
test images, the curated examples, all 317 together) and the hit rate on a synthesised set of
non-X-ray images (`covid_xray.synthetic`), and writes `reports/ood.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config, imaging, ood, preprocessing
from covid_xray.config import DECODE_DRAFT_SIZE
from covid_xray.ood import (
    CV_FOLDS,
    CV_SEED,
    DEFAULT_THRESHOLD_QUANTILE,
    LEARNED_FLAG,
    FeatureExtractor,
    FeatureGuard,
    Guard,
    GuardError,
    _checkpoint_sha,
    cheap_checks,
    feature_layer_name,
    guard_path,
    load_guard,
    out_of_fold_scores,
    train_folds,
)
from covid_xray.studies import _options
from covid_xray.synthetic import NON_XRAY_CATEGORIES, corpus_cases, synthetic_non_xrays

logger = logging.getLogger(__name__)


def _protocol(metadata: dict) -> str:
    """The protocol the checkpoint was trained with (recorded in its info; the guard never needs
    the validation split: it is fitted on the whole train folder, out of fold)."""
    cfg = metadata.get("config") or {}
    return str(cfg.get("protocol") or metadata.get("protocol") or "default")


def fit_guard(
    model_name: str,
    checkpoint_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    quantile: float = DEFAULT_THRESHOLD_QUANTILE,
    layer: str | None = None,
    out: str | os.PathLike | None = None,
) -> tuple[FeatureGuard, Path]:
    """Fit the learned check of a trained checkpoint and save `checkpoints/ood_<model>.json`.

    Class means and covariance come from every image of the train folder; the threshold is
    the `quantile` of their out-of-fold distances (`FeatureGuard.fit_out_of_fold` over
    `train_folds`). The test split is never read.

    Args:
        layer: feature layer (default `feature_layer_name(model)`); convolutional outputs are
            global-average pooled.

    Raises:
        CheckpointError: missing or corrupted checkpoint.
        DatasetNotFoundError: no dataset.
        GuardError: no usable feature layer.
    """
    from covid_xray import data

    model, metadata, checkpoint, mode = _load_model(model_name, checkpoint_dir)
    spec = config.get_model_spec(model_name)
    layer = layer or feature_layer_name(model, model_name)
    if layer not in {lay.name for lay in model.layers}:
        raise GuardError(f"{spec.display_name} has no layer named {layer!r}.")
    extractor = FeatureExtractor(model, layer)
    samples = data.list_samples(data_dir, "train")
    t0 = time.perf_counter()
    images, labels = data.load_arrays(samples)
    features = extractor(images, mode=mode)
    logger.info(
        "Features of %d train-folder images from layer %r (%d-d) in %.1f s",
        len(features),
        layer,
        features.shape[1],
        time.perf_counter() - t0,
    )
    guard = FeatureGuard.fit_out_of_fold(
        features,
        labels,
        train_folds(samples),
        quantile=quantile,
        model_name=model_name,
        model_sha256=_checkpoint_sha(checkpoint, metadata),
        feature_layer=layer,
        preprocessing=mode,
        info={
            "checkpoint": checkpoint.name,
            "fitted_on": "train folder",
            "cv": {"folds": CV_FOLDS, "seed": CV_SEED, "duplicate_aware": True},
            "model_protocol": _protocol(metadata),
            "dataset_manifest": data.dataset_manifest_hash(samples),
        },
    )
    path = guard.save(Path(out) if out else guard_path(model_name, checkpoint_dir))
    return guard, path


def _load_model(model_name: str, checkpoint_dir) -> tuple[Any, dict, Path, str]:
    """(model, sidecar, checkpoint path, preprocessing mode) of a trained checkpoint."""
    from covid_xray.checkpoints import load_checkpoint

    spec = config.get_model_spec(model_name)
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    model, metadata = load_checkpoint(checkpoint)
    return model, metadata, checkpoint, preprocessing.checkpoint_mode(model_name, metadata)


def _example_files() -> set[str]:
    """Dataset-relative files of the app's curated examples (examples/examples.csv)."""
    import csv

    if not config.EXAMPLES_FILE.exists():
        return set()
    with config.EXAMPLES_FILE.open(newline="", encoding="utf-8") as handle:
        return {row["file"] for row in csv.DictReader(handle)}


def _train_out_of_fold_rows(guard: Guard, samples: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows like `_score_rows` for the train folder: cheap checks as usual, the learned check with
    each image's OUT-OF-FOLD distance (the guard itself was fitted on these images)."""
    from covid_xray import data

    rows = []
    for s in samples:
        flags, _, _ = cheap_checks(imaging.load_image(s.path, draft_size=DECODE_DRAFT_SIZE))
        rows.append(
            {"category": "train", "name": s.relpath, "note": s.label, "cheap": bool(flags), "flags": flags}
        )
    distances: list[float | None] = [None] * len(rows)
    if guard.learned_enabled:
        images, labels = data.load_arrays(samples)
        distances = out_of_fold_scores(guard.features(images), labels, train_folds(samples)).tolist()
    for row, distance in zip(rows, distances, strict=True):
        learned = distance is not None and distance > guard.feature_guard.threshold
        row["flags"] = [*row["flags"], *([LEARNED_FLAG] if learned else [])]
        row.update(
            learned=learned,
            flagged=bool(row["flags"]),
            mahalanobis=None if distance is None else round(distance, 3),
        )
    return rows


def _rate(flags: Sequence[bool]) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def _score_rows(guard: Guard, items: Sequence[tuple[str, str, Any, str]]) -> list[dict[str, Any]]:
    """Run the guard on (category, name, source, note) items; one row per item."""
    rows = []
    for category, name, source, note in items:
        rgb = imaging.load_image(source, draft_size=DECODE_DRAFT_SIZE)
        result = guard.check(rgb, preprocessing.resize_for_model(rgb))
        cheap = [f for f in result.flags if f != LEARNED_FLAG]
        rows.append(
            {
                "category": category,
                "name": name,
                "note": note,
                "size": f"{rgb.shape[1]}x{rgb.shape[0]}",
                "flagged": not result.is_xray_likely,
                "cheap": bool(cheap),
                "learned": LEARNED_FLAG in result.flags,
                "flags": result.flags,
                "mahalanobis": round(result.scores["mahalanobis"], 3)
                if "mahalanobis" in result.scores
                else None,
            }
        )
    return rows


def _rates(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "combined": _rate([r["flagged"] for r in rows]),
        "cheap_only": _rate([r["cheap"] for r in rows]),
        "learned_only": _rate([r["learned"] for r in rows]),
    }


def measure(
    model_name: str,
    checkpoint_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """False-alarm rate on the official test split and hit rate on the synthesised non-X-ray set.

    Raises:
        CheckpointError: the model's checkpoint is missing or corrupted.
        DatasetNotFoundError: no dataset.
    """
    from covid_xray import data
    from covid_xray.checkpoints import load_checkpoint

    spec = config.get_model_spec(model_name)
    model, metadata = load_checkpoint(spec.checkpoint_path(checkpoint_dir))
    guard = load_guard(model_name, checkpoint_dir, model=model, metadata=metadata)
    if guard is None:  # only when the checkpoint is unloadable, which load_checkpoint ruled out
        raise GuardError(f"Could not build the OOD guard of {spec.display_name}.")

    test = data.list_samples(data_dir, "test")
    test_rows = _score_rows(guard, [("test", s.relpath, s.path, s.label) for s in test])
    train_rows = _train_out_of_fold_rows(guard, data.list_samples(data_dir, "train"))
    examples = _example_files()
    example_rows = [r for r in test_rows if r["name"] in examples]
    from covid_xray.audit import audit_for, leaked_test_files

    leaked = leaked_test_files(audit_for(data.list_samples(data_dir)))
    clean_rows = [r for r in test_rows if r["name"] not in leaked]

    items: list[tuple[str, str, Any, str]] = [
        (c.category, c.name, c.content, c.note) for c in synthetic_non_xrays(seed)
    ]
    with tempfile.TemporaryDirectory(prefix="ood-corpus-") as tmp:
        corpus_non_xray, corpus_chest = corpus_cases(Path(tmp))
        items += [("corpus", name, path.read_bytes(), note) for name, path, note in corpus_non_xray]
        chest_items = [
            ("corpus_chest_like", name, path.read_bytes(), note) for name, path, note in corpus_chest
        ]
    ood_rows = _score_rows(guard, items)
    chest_rows = _score_rows(guard, chest_items)

    fg = guard.feature_guard
    return {
        "model": model_name,
        "model_sha256": metadata.get("sha256", ""),
        "learned_check": guard.learned_enabled,
        "learned_check_disabled_reason": guard.disabled_reason,
        "feature_layer": fg.feature_layer if fg else None,
        "threshold": fg.threshold if fg else None,
        "threshold_quantile": fg.info.get("threshold_quantile") if fg else None,
        "val_scores": fg.info.get("val_scores") if fg else None,
        "test_false_alarm": {
            "official": _rates(test_rows),
            "leakage_free": _rates(clean_rows),
            "flagged_files": [
                {"file": r["name"], "flags": r["flags"], "mahalanobis": r["mahalanobis"]}
                for r in test_rows
                if r["flagged"]
            ],
        },
        "real_xray_false_alarm": {
            "train_out_of_fold": _rates(train_rows),
            "official_test": _rates(test_rows),
            "curated_examples": _rates(example_rows),
            "all_real": _rates([*train_rows, *test_rows]),
            "flagged_train_files": [
                {"file": r["name"], "flags": r["flags"], "mahalanobis": r["mahalanobis"]}
                for r in train_rows
                if r["flagged"]
            ],
        },
        "non_xray_hit_rate": {
            "overall": _rates(ood_rows),
            "per_category": {
                c: _rates([r for r in ood_rows if r["category"] == c])
                for c in NON_XRAY_CATEGORIES
                if any(r["category"] == c for r in ood_rows)
            },
        },
        "corpus_chest_like_flagged": _rates(chest_rows),
        "non_xray_cases": ood_rows,
        "corpus_chest_like_cases": chest_rows,
        "settings": {
            "colour_spread_max": ood.COLOUR_SPREAD_MAX,
            "saturation_max": ood.SATURATION_MAX,
            "colourful_fraction_max": ood.COLOURFUL_FRACTION_MAX,
            "uniform_std_max": ood.UNIFORM_STD_MAX,
            "dark_fraction_max": ood.DARK_FRACTION_MAX,
            "bright_fraction_max": ood.BRIGHT_FRACTION_MAX,
            "grey_levels_min": ood.GREY_LEVELS_MIN,
            "top_level_fraction_max": ood.TOP_LEVEL_FRACTION_MAX,
            "neighbour_correlation_min": ood.NEIGHBOUR_CORRELATION_MIN,
            "plane_fit_r2_max": ood.PLANE_FIT_R2_MAX,
            "aspect_ratio_range": [ood.ASPECT_RATIO_MIN, ood.ASPECT_RATIO_MAX],
            "synthetic_seed": seed,
        },
    }


def _fmt(rate: float | None) -> str:
    return "   n/a" if rate is None else f"{rate:6.1%}"


def format_table(result: dict[str, Any]) -> str:
    """The measurement as a plain-text table."""
    lines = [
        f"OOD guard of {result['model']}: learned check "
        + (
            f"on (layer {result['feature_layer']}, threshold {result['threshold']:.2f})"
            if result["learned_check"]
            else f"OFF ({result['learned_check_disabled_reason']})"
        ),
        f"{'set':34s} {'n':>4s} {'combined':>9s} {'cheap':>7s} {'learned':>8s}",
    ]

    def row(label: str, rates: dict[str, Any]) -> None:
        lines.append(
            f"{label:34s} {rates['n']:4d} {_fmt(rates['combined']):>9s} "
            f"{_fmt(rates['cheap_only']):>7s} {_fmt(rates['learned_only']):>8s}"
        )

    real = result["real_xray_false_alarm"]
    row("false alarms: train, out of fold", real["train_out_of_fold"])
    row("false alarms: official test", result["test_false_alarm"]["official"])
    row("false alarms: leakage-free test", result["test_false_alarm"]["leakage_free"])
    row("false alarms: curated examples", real["curated_examples"])
    row("false alarms: all real X-rays", real["all_real"])
    row("hits: all non-X-ray inputs", result["non_xray_hit_rate"]["overall"])
    for category, rates in result["non_xray_hit_rate"]["per_category"].items():
        row(f"  hits: {category}", rates)
    row("flagged: corpus chest-like (info)", result["corpus_chest_like_flagged"])
    return "\n".join(lines)


def write_report(result: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Merge one model's measurement into `reports/ood.json` (other models' entries kept)."""
    path = Path(path) if path else config.resolve_reports_dir() / config.OOD_REPORT_FILE
    report: dict[str, Any] = {}
    if path.exists():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            logger.warning("Overwriting unreadable %s", path)
    report.setdefault("models", {})[result["model"]] = result
    report["description"] = (
        f"OOD guard measurement ({config.OOD_COMMAND} measure): fraction of real chest X-rays "
        "flagged (false alarms: the train folder with out-of-fold feature distances, the official "
        "and leakage-free test, the curated examples, all real images together) and of synthesised "
        "non-X-ray inputs flagged (hits), for the cheap checks, the learned feature-distance check, "
        "and both combined."
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _cmd_fit(args: argparse.Namespace) -> int:
    guard, path = fit_guard(
        args.model, args.checkpoint_dir, args.data_dir, quantile=args.quantile, layer=args.layer, out=args.out
    )
    info = guard.info
    oof = info["out_of_fold_scores"]
    print(
        f"{args.model}: layer {guard.feature_layer} ({guard.dim}-d), {info['n_train']} train-folder images, "
        f"shrinkage {info['shrinkage']:.3f}"
    )
    print(
        f"  out-of-fold distances ({info['folds']} folds) median {oof['median']:.2f}, max {oof['max']:.2f}; "
        f"threshold (quantile {args.quantile}) = {guard.threshold:.3f}, above it: "
        f"{info['out_of_fold_flagged']} of {info['n_train']}; written to {path}"
    )
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    result = measure(args.model, args.checkpoint_dir, args.data_dir, seed=args.seed)
    print(format_table(result))
    path = write_report(result, args.out)
    print(f"Written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m covid_xray.studies.ood`."""
    parser = argparse.ArgumentParser(prog=config.OOD_COMMAND, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _options.add(common, "model", "data_dir", "checkpoint_dir")
    p = sub.add_parser(
        "fit", parents=[common], help="fit the learned check; writes checkpoints/ood_<model>.json"
    )
    p.add_argument(
        "--quantile",
        type=float,
        default=DEFAULT_THRESHOLD_QUANTILE,
        help="quantile of the train folder's out-of-fold distances that sets the threshold",
    )
    p.add_argument(
        "--layer", default=None, help="feature layer (default: conv3 / head_flatten; conv maps are pooled)"
    )
    p.add_argument("--out", default=None, help="guard JSON path (default <checkpoint dir>/ood_<model>.json)")
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser(
        "measure", parents=[common], help="false alarms on test, hits on synthesised non-X-rays"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthesised non-X-ray set")
    p.add_argument("--out", default=None, help="report path (default <reports dir>/ood.json)")
    p.set_defaults(func=_cmd_measure)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from covid_xray.checkpoints import CheckpointError
    from covid_xray.data import DatasetNotFoundError

    try:
        return args.func(args)
    except (CheckpointError, DatasetNotFoundError, GuardError, imaging.ImageDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
