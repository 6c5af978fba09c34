"""Across the test set: how often each what-if mask flips a model's answer, and how often the
nearest training film shares the image's predicted class versus its true class.

Command line::

    python -m covid_xray.studies.shortcuts --model davidnet [--data-dir D] [--checkpoint-dir C]
                                           [--reports-dir R] [--cache-dir K]

writes `reports/<model>/shortcuts.json` (sorted keys, rounded floats, no timestamps: a rerun on
the same checkpoint and data is byte-identical); `covid_xray.report.shortcuts` renders it for
the Model report.

Reading it: a mask outside the chest that flips many answers means the model reads the border
(text, markers, framing) rather than the lungs. A nearest training film that shares the
PREDICTED class more often than the TRUE class means the errors come from films that look
alike to the model (e.g. an adult normal film among adult COVID-19 films): the model's notion
of similarity, not a rare glitch. Probabilities are the raw softmax outputs (like
predictions.csv); the test split is only read, never used to fit anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config, data, neighbours, preprocessing, probe
from covid_xray.report.files import read_predictions
from covid_xray.report.shortcuts import shortcuts_markdown
from covid_xray.studies import _options

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DIGITS = 4


def _r(value: float) -> float:
    return round(float(value), DIGITS)


def _rate(count: int, n: int) -> dict[str, Any]:
    return {"count": int(count), "n": int(n), "rate": _r(count / n) if n else None}


def compute(
    model_name: str,
    model,
    mode: str,
    train_samples: Sequence[data.Sample],
    test_samples: Sequence[data.Sample],
    *,
    checkpoint_sha: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    twins: Mapping[str, frozenset[str]] | None = None,
    feature_layer: str | None = None,
    k: int = neighbours.DEFAULT_K,
) -> dict[str, Any]:
    """The shortcuts report of one model as a JSON-ready dict (see `write`).

    Args:
        model_name: registered name ("davidnet", "chexnet"); names the report.
        model: the loaded Keras classifier.
        mode: its preprocessing mode.
        train_samples, test_samples: the images indexed and the images probed.
        checkpoint_sha: the checkpoint's sha256 (cache key; None hashes the weights).
        cache_dir: the neighbour feature cache.
        twins: leaked test files' copies in train (default `neighbours.audit_twins()`); a test
            image with a copy is "leaked" and left out of the leakage-free subset.
        feature_layer: None: the model's `ModelSpec.feature_layer`.
    """
    spec = config.MODELS.get(model_name)
    display_name = spec.display_name if spec else model_name
    twins = neighbours.audit_twins() if twins is None else dict(twins)
    index = neighbours.NeighbourIndex.build(
        model,
        feature_layer,
        train_samples,
        mode,
        cache_dir,
        checkpoint_sha,
        model_name=model_name,
        twins=twins,
    )
    prober = probe.Probe(model, mode, name=model_name, display_name=display_name)
    images, _ = data.load_arrays(test_samples)
    features = index.extract(images)

    rows = []
    for sample, image, f in zip(test_samples, images, features, strict=True):
        result = prober.run(image)
        near = index.query(f, k, query_file=sample.relpath)
        predicted = result.predicted
        rows.append(
            {
                "file": sample.relpath,
                "true": sample.label,
                "predicted": predicted,
                "leaked": sample.relpath in twins,
                "probabilities": {c: _r(p) for c, p in result.probabilities.items()},
                "flipped_by": [o.mask for o in result.flips],
                "masks": {
                    o.mask: {"predicted": o.predicted, "delta_predicted": _r(o.delta[predicted])}
                    for o in result.outcomes
                },
                "nearest": {
                    "file": near[0].file,
                    "label": near[0].label,
                    "distance": _r(near[0].distance),
                    "twin": near[0].twin,
                },
                "k_shares_predicted": _r(sum(n.label == predicted for n in near) / len(near)),
                "k_shares_true": _r(sum(n.label == sample.label for n in near) / len(near)),
            }
        )

    subsets = {"official": rows, "leakage_free": [r for r in rows if not r["leaked"]]}
    summary = {name: _summary(subset) for name, subset in subsets.items()}
    leaked_rows = [r for r in rows if r["leaked"]]
    all_samples = [*train_samples, *test_samples]
    return {
        "format_version": FORMAT_VERSION,
        "model": model_name,
        "display_name": display_name,
        "model_sha256": index.checkpoint_sha,
        "dataset_manifest": data.dataset_manifest_hash(all_samples),
        "command": config.SHORTCUTS_COMMAND.format(name=model_name),
        "n_train": len(train_samples),
        "k": int(k),
        "feature_layer": index.feature_layer,
        "distance": "cosine distance of standardised features (training mean and std per unit)",
        "fill": probe.FILL_METHOD,
        "masks": {m.name: m.description for m in probe.MASKS},
        "mask_geometry": {
            "border_band": probe.BORDER_BAND,
            "corner": probe.CORNER,
            "below_lungs_from": probe.BELOW_LUNGS_FROM,
            "chest_box_top_left_bottom_right": list(probe.CHEST_BOX),
            "feather_sigma_px": probe.FEATHER_SIGMA,
        },
        "subsets": summary,
        "leaked_nearest_is_twin": _rate(sum(r["nearest"]["twin"] for r in leaked_rows), len(leaked_rows)),
        "images": sorted(rows, key=lambda r: r["file"]),
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    masks = {}
    for mask in probe.MASK_NAMES:
        flipped = [r for r in rows if mask in r["flipped_by"]]
        transitions = Counter(f"{r['predicted']} -> {r['masks'][mask]['predicted']}" for r in flipped)
        deltas = [r["masks"][mask]["delta_predicted"] for r in rows]
        masks[mask] = {
            "flips": _rate(len(flipped), n),
            "transitions": dict(sorted(transitions.items())),
            "mean_delta_predicted": _r(np.mean(deltas)) if deltas else None,
        }
    correct = [r for r in rows if r["predicted"] == r["true"]]
    wrong = [r for r in rows if r["predicted"] != r["true"]]
    return {
        "n": n,
        "accuracy": _rate(len(correct), n),
        "any_mask_flips": _rate(sum(bool(r["flipped_by"]) for r in rows), n),
        "masks": masks,
        "nearest_shares_predicted": _rate(sum(r["nearest"]["label"] == r["predicted"] for r in rows), n),
        "nearest_shares_true": _rate(sum(r["nearest"]["label"] == r["true"] for r in rows), n),
        "errors_nearest_shares_predicted": _rate(
            sum(r["nearest"]["label"] == r["predicted"] for r in wrong), len(wrong)
        ),
        "mean_k_shares_predicted": _r(np.mean([r["k_shares_predicted"] for r in rows])) if rows else None,
        "mean_k_shares_true": _r(np.mean([r["k_shares_true"] for r in rows])) if rows else None,
    }


def to_text(result: Mapping[str, Any]) -> str:
    """The report as its file content: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(result, indent=2, sort_keys=True) + "\n"


def report_path(name: str, reports_dir: str | os.PathLike | None = None) -> Path:
    """`reports/<model>/shortcuts.json` (unregistered names: `<reports dir>/<name>/`)."""
    spec = config.MODELS.get(name)
    base = spec.report_dir(reports_dir) if spec else config.resolve_reports_dir(reports_dir) / name
    return base / config.SHORTCUTS_FILE


def write(result: Mapping[str, Any], reports_dir: str | os.PathLike | None = None) -> Path:
    """Write `reports/<model>/shortcuts.json`; return its path."""
    path = report_path(result["model"], reports_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_text(result), encoding="utf-8")
    return path


def _check_against_predictions(result: Mapping[str, Any], reports_dir) -> str | None:
    """ "predicted classes agree with predictions.csv on n/N", or None without the file."""
    path = report_path(result["model"], reports_dir).with_name(config.PREDICTIONS_FILE)
    rows = read_predictions(path)
    if rows is None:
        return None
    expected = {row.file: row.predicted for row in rows}
    rows = [r for r in result["images"] if r["file"] in expected]
    same = sum(expected[r["file"]] == r["predicted"] for r in rows)
    return f"predicted classes agree with {path.name} on {same}/{len(rows)} images"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m covid_xray.studies.shortcuts`."""
    parser = argparse.ArgumentParser(
        prog=f"{config.STUDIES}.shortcuts", description=__doc__.split("\n\n")[0]
    )
    _options.add(parser, "model", "data_dir", "checkpoint_dir", "reports_dir")
    parser.add_argument(
        "--cache-dir", default=None, help=f"neighbour feature cache (default {neighbours.DEFAULT_CACHE_DIR})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from covid_xray.checkpoints import CheckpointError, load_checkpoint

    spec = config.get_model_spec(args.model)
    checkpoint = spec.checkpoint_path(args.checkpoint_dir)
    try:
        model, metadata = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        print(f"error: {spec.display_name} cannot be probed without its checkpoint. {exc}", file=sys.stderr)
        return 2
    mode = preprocessing.checkpoint_mode(args.model, metadata)
    try:
        result = compute(
            args.model,
            model,
            mode,
            data.list_samples(args.data_dir, "train"),
            data.list_samples(args.data_dir, "test"),
            checkpoint_sha=metadata.get("sha256"),
            cache_dir=args.cache_dir,
        )
    except data.DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = write(result, args.reports_dir)
    check = _check_against_predictions(result, args.reports_dir)
    print(shortcuts_markdown(args.model, args.reports_dir))
    if check:
        print(check)
    print(f"Written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
