#!/usr/bin/env python
"""Train DavidNet or CheXNet: `python train.py --model davidnet|chexnet [options]`.

Defaults are the paper's recipe; every hyper-parameter is a flag. Uses a GPU when present
(mixed precision there), several GPUs with `--strategy mirrored`, several hosts with
`--strategy multiworker` and TF_CONFIG.

Each run writes its checkpoint (<model>.keras + .json sidecar + history) and logs into its own
folder, runs/<model>-<time>/ (or --run-dir); it replaces the checkpoint the app serves only with
--install (into $COVID_XRAY_CHECKPOINT_DIR, else checkpoints/) or an explicit --checkpoint-dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import covid_xray  # noqa: F401  (first: quiets TensorFlow's start-up on machines without a GPU)


def build_parser() -> argparse.ArgumentParser:
    from covid_xray.config import MODELS, PROTOCOLS
    from covid_xray.training import STRATEGIES, TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default=d.model)
    p.add_argument(
        "--data-dir", default=None, help="dataset root (else $COVID_XRAY_DATA, else data/Covid19-dataset)"
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=d.protocol,
        help="'paper' selects the model on the TEST split as the paper did (optimistic; for comparison only)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="max epochs of the plain phase (0 = skip)")
    p.add_argument(
        "--augment-epochs",
        type=int,
        default=d.augment_epochs,
        help="max epochs of the augmented phase (0 = skip)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=float,
        default=None,
        help="Adam learning rate (default 0.01, or 1e-4 with --fine-tune)",
    )
    p.add_argument("--lr-factor", type=float, default=d.lr_factor, help="ReduceLROnPlateau factor")
    p.add_argument("--lr-patience", type=int, default=d.lr_patience, help="ReduceLROnPlateau patience")
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument(
        "--patience",
        dest="early_stopping_patience",
        type=int,
        default=d.early_stopping_patience,
        help="EarlyStopping patience (epochs without a lower validation loss)",
    )
    p.add_argument(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=d.class_weights,
        help="weight the loss by sklearn 'balanced' class weights",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=d.label_smoothing,
        help="cross-entropy label smoothing (not in the paper)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="decoupled weight decay of Adam (not in the paper)",
    )
    p.add_argument(
        "--swa-epochs",
        type=int,
        default=d.swa_epochs,
        help="> 0: weight averaging: each epoch's model is the mean of the phase's last N "
        "epochs' weights, judged on validation like any epoch (not in the paper)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="validation share of train (default protocol)",
    )
    p.add_argument(
        "--cv-folds",
        type=int,
        default=d.cv_folds,
        help="> 1: validate on one fold of a k-fold split of train instead (scripts/sweep.py --folds)",
    )
    p.add_argument("--cv-fold", type=int, default=d.cv_fold, help="which fold (0-based) with --cv-folds")
    p.add_argument(
        "--refit",
        action="store_true",
        help="fixed schedule: each phase runs exactly --epochs / --augment-epochs, nothing is chosen on "
        "validation; trains on all of train (with --cv-folds, the held-out fold is only predicted) "
        "(python -m covid_xray.studies.refit schedule gives the epochs; not in the paper)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--deterministic", action="store_true", help="enable TensorFlow op determinism (slower)")
    p.add_argument("--zoom", type=float, default=d.zoom, help="augmentation: max zoom fraction")
    p.add_argument(
        "--rotation",
        dest="rotation_degrees",
        type=float,
        default=d.rotation_degrees,
        help="augmentation: max rotation (degrees)",
    )
    p.add_argument("--shear", type=float, default=d.shear, help="augmentation: max shear")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=d.flip,
        help="augmentation: random horizontal flips",
    )
    p.add_argument(
        "--fine-tune", action="store_true", help="CheXNet: unfreeze DenseNet121 (full fine-tune, lower lr)"
    )
    p.add_argument(
        "--chexnet-weights",
        default=None,
        help="CheXNet base weights (else $COVID_XRAY_CHEXNET_WEIGHTS, else checkpoints/chexnet_base.h5)",
    )
    p.add_argument(
        "--feature-views",
        type=int,
        default=d.feature_views,
        help="CheXNet head: cached augmented views per image",
    )
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy, help="tf.distribute strategy")
    p.add_argument("--mixed-precision", choices=("auto", "on", "off"), default=d.mixed_precision)
    p.add_argument(
        "--logical-cpus",
        type=int,
        default=0,
        help="split the CPU into N logical devices (tests --strategy mirrored without GPUs)",
    )
    p.add_argument(
        "--max-per-class",
        type=int,
        default=0,
        help="use at most N images per class and split (quick smoke runs)",
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="save the checkpoint where the app loads it: --checkpoint-dir, else "
        "$COVID_XRAY_CHECKPOINT_DIR, else checkpoints/ (replaces the model there)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save the checkpoint in this folder instead of the run folder (installs it there)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="run folder: logs, validation predictions, and the checkpoint unless installed; "
        "None = runs/<model>-<time>",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from covid_xray.config import resolve_checkpoint_dir
    from covid_xray.data import DatasetNotFoundError
    from covid_xray.training import TrainConfig, train
    from covid_xray.weights import WeightsError

    values = vars(args).copy()
    values["verbose"] = 0 if values.pop("quiet") else 1
    installed = values.pop("install") or args.checkpoint_dir is not None
    values["checkpoint_dir"] = str(resolve_checkpoint_dir(args.checkpoint_dir)) if installed else None
    if values["learning_rate"] is None:
        values["learning_rate"] = 1e-4 if args.fine_tune else TrainConfig.learning_rate
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in values.items() if k in fields})
    except ValueError as exc:  # a combination argparse cannot check, e.g. --cv-fold 5 with --cv-folds 5
        parser.error(str(exc))
    try:
        result = train(cfg)
    except (DatasetNotFoundError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kept, val_acc = result.metadata["kept"], result.metadata["val_accuracy"]
    scores = "fixed schedule, nothing chosen" if kept["val_loss"] is None else f"val_loss {kept['val_loss']:.4f}"
    scores += "" if val_acc is None else f", val_accuracy {val_acc:.4f}"
    print(f"saved {result.checkpoint} (kept {kept['phase']} epoch {kept['epoch']}, {scores})")
    print(next_hint(cfg.model, result.checkpoint, result.run_dir, installed))
    return 0


def next_hint(model: str, checkpoint, run_dir, installed: bool) -> str:
    """The "next:" lines: evaluate the checkpoint just saved, naming its folder; how to serve it."""
    import shlex

    from covid_xray import config
    from covid_xray.config import resolve_checkpoint_dir

    serving = resolve_checkpoint_dir()
    command = f"{config.EVALUATE_COMMAND.format(name=model)} --checkpoint {shlex.quote(str(checkpoint))}"
    if checkpoint.parent != serving:  # keep reports/<model>/ for the served model
        command += f" --out {shlex.quote(str(checkpoint.parent / 'report'))}"
    lines = [f"next: {command}"]
    if not installed:
        lines.append(
            f"(saved in the run folder {run_dir}; the app still serves {serving / checkpoint.name}: "
            "rerun with --install to train straight into it)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
