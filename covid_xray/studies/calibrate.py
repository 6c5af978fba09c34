"""Temperature scaling fitted on the validation split, from the command line::

    python -m covid_xray.studies.calibrate fit --model davidnet [--data-dir D] [--checkpoint-dir C]
        [--reports-dir R]
    python -m covid_xray.studies.calibrate show --model davidnet [--reports-dir R]

`fit` rebuilds the validation split the checkpoint was trained with (seed, fraction and
protocol from its JSON sidecar), fits T (`covid_xray.calibration`), stores `{"temperature": T,
"fitted_on": "validation", ...}` under the sidecar's "calibration" key (the app then shows
calibrated probabilities) unless the sidecar already carries an out-of-fold temperature, and
writes `reports/<model>/calibration.json` (ECE, NLL and accuracy before and after, on validation,
the official test and the leakage-free test, the latter two read from the committed
`predictions.csv`) and `reports/<model>/reliability.png`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covid_xray import config
from covid_xray.calibration import (
    DEFAULT_BINS,
    PROB_FLOOR,
    SIDECAR_KEY,
    SPLIT_TITLES,
    CalibrationError,
    PaperProtocolError,
    _as_probs,
    _check_temperature,
    apply_temperature,
    calibration_metrics,
    decide_temperature,
    reliability_bins,
)
from covid_xray.config import CLASS_NAMES, EVALUATE_COMMAND
from covid_xray.report.calibration import _fmt, calibration_markdown, evaluated_checkpoint_sha256
from covid_xray.report.files import ReportError, read_predictions
from covid_xray.studies import _options

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
logger = logging.getLogger(__name__)


# Reliability diagrams: both axes run this far beyond [0, 1], so markers at 0 or 1 are not clipped.
PLOT_MARGIN = 0.04


def plot_reliability(
    splits: Mapping[str, tuple[Any, Any]],
    temperature: float,
    path: str | os.PathLike,
    *,
    title: str = "",
    n_bins: int = DEFAULT_BINS,
) -> Path:
    """Save reliability diagrams, one column per split: accuracy against confidence before and
    after temperature scaling (top), and how many images fall in each confidence bin (bottom).

    Args:
        splits: {title: (probabilities (N, K), labels (N,))}, raw (uncalibrated) probabilities.
    """
    fig = reliability_figure(splits, temperature, title=title, n_bins=n_bins)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No metadata: the file only changes when the numbers do.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def reliability_figure(
    splits: Mapping[str, tuple[Any, Any]], temperature: float, *, title: str = "", n_bins: int = DEFAULT_BINS
):
    """The matplotlib Figure `plot_reliability` saves. Both axes run PLOT_MARGIN beyond [0, 1],
    so a point at confidence or accuracy 1.0 (or 0.0) is drawn whole, not cut by the frame."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    temperature = _check_temperature(temperature)
    fig = Figure(figsize=(4.2 * max(len(splits), 1), 6.4), dpi=100)
    axes = fig.subplots(2, max(len(splits), 1), squeeze=False, gridspec_kw={"height_ratios": [3, 1.3]})
    width = 1.0 / n_bins
    for column, (name, (probs, labels)) in enumerate(splits.items()):
        top, bottom = axes[0, column], axes[1, column]
        top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        centers = None
        for offset, (label, q, style) in enumerate(
            (
                ("raw", _as_probs(probs), dict(color="tab:red", marker="o")),
                (
                    f"calibrated (T={temperature:.2f})",
                    apply_temperature(probs, temperature),
                    dict(color="tab:blue", marker="s"),
                ),
            )
        ):
            bins = reliability_bins(q, labels, n_bins)
            full = bins.counts > 0
            top.plot(
                bins.confidence[full],
                bins.accuracy[full],
                linewidth=1.5,
                label=f"{label}: ECE {bins.ece:.3f}",
                **style,
            )
            centers = bins.edges[:-1] + width / 2
            bottom.bar(
                centers + (offset - 0.5) * width * 0.45,
                bins.counts,
                width=width * 0.45,
                color=style["color"],
                alpha=0.75,
                label=label.split(":")[0],
            )
        top.set_xlim(-PLOT_MARGIN, 1 + PLOT_MARGIN)
        top.set_ylim(-PLOT_MARGIN, 1 + PLOT_MARGIN)
        top.set_xlabel("confidence (top class)")
        top.set_ylabel("accuracy")
        top.set_title(f"{name} (n={len(np.asarray(labels))})", fontsize=10)
        top.grid(alpha=0.3)
        top.legend(fontsize=7, loc="lower right")
        bottom.set_xlim(-PLOT_MARGIN, 1 + PLOT_MARGIN)  # aligned with the diagram above
        bottom.set_xlabel("confidence bin")
        bottom.set_ylabel("images")
        bottom.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def split_settings(metadata: Mapping[str, Any], name: str = "model") -> tuple[str, float, int]:
    """(protocol, val_fraction, seed) the checkpoint was trained with, from its JSON sidecar.

    Raises:
        PaperProtocolError: protocol "paper" (validated on test: fitting there would use test).
        CalibrationError: the sidecar does not record the split.
    """
    cfg = metadata.get("config") or {}
    if "paper" in (cfg.get("protocol"), metadata.get("protocol")):
        raise PaperProtocolError(
            f"The {name} checkpoint was trained with the 'paper' protocol, whose validation split is "
            "the test split; fitting a temperature there would tune on the test set. Calibrate a "
            "checkpoint trained with the default protocol (`python train.py --protocol default --install`)."
        )
    protocol = cfg.get("protocol") or metadata.get("protocol")
    recorded = {"protocol": protocol, "val_fraction": cfg.get("val_fraction"), "seed": cfg.get("seed")}
    missing = [key for key, value in recorded.items() if value is None]
    if missing:
        raise CalibrationError(
            f"The {name} checkpoint's JSON sidecar does not record {', '.join(missing)} of its training "
            "split, so its validation images cannot be rebuilt. Retrain it with `python train.py --install`."
        )
    if protocol not in config.PROTOCOLS:
        raise CalibrationError(f"Unknown protocol {protocol!r} in the {name} checkpoint's sidecar.")
    return str(protocol), float(cfg["val_fraction"]), int(cfg["seed"])


def _test_predictions(path: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Raw probabilities, labels, leaked mask and files from a committed predictions.csv."""
    command = EVALUATE_COMMAND.format(name=name)
    try:
        rows = read_predictions(path)
    except ReportError as exc:
        raise CalibrationError(f"{exc} Rerun `{command}`.") from exc
    if rows is None:
        raise CalibrationError(f"No test predictions at {path}; run `{command}` first.")
    if not rows:
        raise CalibrationError(f"{path} holds no predictions; rerun `{command}`.")
    probs = np.array([[row.probabilities[c] for c in CLASS_NAMES] for row in rows], dtype=np.float64)
    labels = np.array([CLASS_NAMES.index(row.true) for row in rows], dtype=np.int64)
    leaked = np.array([row.leaked for row in rows], dtype=bool)
    return probs, labels, leaked, [row.file for row in rows]


def fit_model(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    reports_dir: str | os.PathLike | None = None,
    n_bins: int = DEFAULT_BINS,
) -> dict:
    """Fit T for a checkpoint on its validation split; update its sidecar, write the report and PNG.

    Returns:
        The calibration report (also written to `<reports>/<model>/calibration.json`).

    Raises:
        PaperProtocolError: the checkpoint's validation split is the test split.
        CalibrationError: missing/stale predictions.csv, or a dataset other than the training one.
        CheckpointError, DatasetNotFoundError: missing checkpoint or dataset.
    """
    from covid_xray import data
    from covid_xray.checkpoints import (
        CheckpointError,
        load_checkpoint,
        read_metadata,
        sha256_file,
        sidecar_path,
        write_json,
    )
    from covid_xray.preprocessing import checkpoint_mode
    from covid_xray.studies.evaluate import predict_samples

    spec = config.get_model_spec(name)
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    if not checkpoint.exists():
        raise CheckpointError(
            f"Checkpoint not found: {checkpoint}. Train it with "
            f"`{config.TRAIN_INSTALL_COMMAND.format(name=name)}`."
        )
    metadata = read_metadata(checkpoint)
    protocol, val_fraction, seed = split_settings(metadata, spec.display_name)

    # Test probabilities: exactly the committed evaluation of this very checkpoint.
    report_dir = spec.report_dir(reports_dir)
    predictions = report_dir / config.PREDICTIONS_FILE
    test_probs, test_labels, leaked, test_files = _test_predictions(predictions, name)
    evaluated = evaluated_checkpoint_sha256(name, reports_dir)
    current = sha256_file(checkpoint)
    if evaluated and evaluated != current:
        raise CalibrationError(
            f"{predictions} was written for another checkpoint (sha256 {evaluated[:12]}..., this one is "
            f"{current[:12]}...); rerun `{EVALUATE_COMMAND.format(name=name)}` first."
        )

    # Validation probabilities: the split the checkpoint was trained with, preprocessed as in evaluation.
    splits = data.make_splits(data_dir, protocol, val_fraction, seed)
    limited = bool((metadata.get("config") or {}).get("max_per_class"))
    recorded = metadata.get("dataset_manifest")
    if recorded and not limited:
        actual = data.dataset_manifest_hash([s for split in splits.values() for s in split])
        if actual != recorded:
            raise CalibrationError(
                f"The dataset at {config.resolve_data_dir(data_dir)} is not the one {spec.display_name} was "
                f"trained on (manifest {actual[:12]}... != {recorded[:12]}...), so its validation split "
                "cannot be rebuilt."
            )
    recorded_val = (metadata.get("split_sizes") or {}).get("val")
    if recorded_val is not None and not limited and recorded_val != len(splits["val"]):
        raise CalibrationError(
            f"The rebuilt validation split has {len(splits['val'])} images, {spec.display_name} was trained "
            f"with {recorded_val}: not the same split."
        )
    if sorted(test_files) != sorted(s.relpath for s in splits["test"]):
        raise CalibrationError(
            f"{predictions} does not list this dataset's test images; "
            f"rerun `{EVALUATE_COMMAND.format(name=name)}`."
        )
    model, metadata = load_checkpoint(checkpoint)
    mode = checkpoint_mode(name, metadata, protocol)
    val = splits["val"]
    val_probs = predict_samples(model, val, mode)
    val_labels = np.array([s.label_index for s in val], dtype=np.int64)

    fitted, applied, reason = decide_temperature(val_probs, val_labels)
    # The tables and the diagram show the fitted T's effect even when it is not applied (why not).
    temperature = fitted
    parts = {
        "validation": (val_probs, val_labels),
        "official": (test_probs, test_labels),
        "leakage_free": (test_probs[~leaked], test_labels[~leaked]),
    }
    report = {
        "model": name,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": current,
        "method": "temperature scaling of log-probabilities, T minimising validation NLL",
        "temperature": applied,
        "fitted_temperature": fitted,
        "applied": applied is not None,
        "reason": reason,
        "fitted_on": "validation",
        "split": {"protocol": protocol, "val_fraction": val_fraction, "seed": seed},
        "preprocessing": mode,
        "n_bins": n_bins,
        "prob_floor": PROB_FLOOR,
        "predictions_sha256": sha256_file(predictions),
        "splits": {key: calibration_metrics(p, y, temperature, n_bins) for key, (p, y) in parts.items()},
    }
    write_json(report_dir / config.CALIBRATION_FILE, report)
    plot_reliability(
        {SPLIT_TITLES[key]: parts[key] for key in ("validation", "official")},
        temperature,
        report_dir / config.RELIABILITY_FILE,
        title=f"{spec.display_name}: reliability before and after temperature scaling"
        + ("" if applied is not None else f" (T = {fitted:g} not applied)"),
        n_bins=n_bins,
    )
    validation = report["splits"]["validation"]
    metadata = dict(metadata)
    kept = metadata.get(SIDECAR_KEY) or {}
    if str(kept.get("fitted_on", "")).startswith("out-of-fold"):  # 251 OOF images beat 50 validation ones
        logger.info("The sidecar keeps its out-of-fold temperature T = %s.", kept.get("temperature"))
        return report
    metadata[SIDECAR_KEY] = {
        "temperature": applied,
        "fitted_temperature": fitted,
        "reason": reason,
        "fitted_on": "validation",
        "n_val": len(val),
        "split": report["split"],
        "val_nll": {"before": validation["before"]["nll"], "after": validation["after"]["nll"]},
        "val_ece": {"before": validation["before"]["ece"], "after": validation["after"]["ece"]},
    }
    write_json(sidecar_path(checkpoint), metadata)
    return report


def _cmd_fit(args: argparse.Namespace) -> int:
    report = fit_model(
        args.model,
        data_dir=args.data_dir,
        checkpoint_dir=args.checkpoint_dir,
        reports_dir=args.reports_dir,
        n_bins=args.bins,
    )
    print(
        f"{args.model}: T = {report['fitted_temperature']:.4f} "
        f"(fitted on {report['splits']['validation']['n']} "
        "validation images)" + ("" if report["applied"] else f"; {report['reason']}")
    )
    for key, sub in report["splits"].items():
        b, a = sub["before"], sub["after"]
        print(
            f"  {key:13s} n={sub['n']:3d} accuracy={_fmt(sub['accuracy'], 4)} "
            f"ECE {_fmt(b['ece'], 4)} -> {_fmt(a['ece'], 4)}  "
            f"NLL {_fmt(b['nll'], 4)} -> {_fmt(a['nll'], 4)}  "
            f"mean confidence {_fmt(b['mean_confidence'], 4)} -> {_fmt(a['mean_confidence'], 4)}"
        )
    from covid_xray.checkpoints import read_metadata

    spec = config.get_model_spec(args.model)
    report_dir = spec.report_dir(args.reports_dir)
    written = f"{report_dir / config.CALIBRATION_FILE}, {report_dir / config.RELIABILITY_FILE}"
    entry = read_metadata(spec.checkpoint_path(args.checkpoint_dir)).get(SIDECAR_KEY) or {}
    if str(entry.get("fitted_on", "")).startswith("out-of-fold"):
        print(
            f"wrote {written}; the checkpoint sidecar keeps its "
            f"{entry['fitted_on']} temperature T = {entry.get('temperature')}"
        )
    else:
        print(
            f"wrote {written} and the checkpoint sidecar's '{SIDECAR_KEY}' entry"
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    print(calibration_markdown(args.model, args.reports_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m covid_xray.studies.calibrate`."""
    parser = argparse.ArgumentParser(
        prog=f"{config.STUDIES}.calibrate",
        description="Temperature scaling fitted on the validation split.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _options.add(common, "model", "reports_dir")
    p = sub.add_parser(
        "fit", parents=[common], help="fit T; update the sidecar, write calibration.json + PNG"
    )
    _options.add(p, "data_dir", "checkpoint_dir")
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help="confidence bins of ECE and the plot")
    p.set_defaults(func=_cmd_fit)
    p = sub.add_parser("show", parents=[common], help="print the calibration table (markdown)")
    p.set_defaults(func=_cmd_show)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    errors: tuple[type[Exception], ...] = (CalibrationError,)
    if args.command == "fit":  # `show` reads JSON only: no TensorFlow import
        from covid_xray.checkpoints import CheckpointError
        from covid_xray.data import DatasetNotFoundError

        errors += (CheckpointError, DatasetNotFoundError)
    try:
        return args.func(args)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
