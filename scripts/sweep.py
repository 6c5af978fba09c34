#!/usr/bin/env python
"""Hyper-parameter sweep for DavidNet, scored by k-fold cross-validation of the TRAIN folder.

Each configuration is trained once per fold (and seed) with `train.py --cv-folds K --cv-fold i`,
whose run folder keeps the kept model's validation predictions. The K validation folds cover
the train folder once, so together they are out-of-fold (OOF) predictions for all 251 train
images: the score is OOF accuracy and log loss, a selection signal five times larger than
one 50-image validation split (which the shipped DavidNet classifies 100% correctly, so it
cannot rank configurations). The test split is never read here: `python -m covid_xray.studies.evaluate`
is run once, on the configuration this picks (lowest mean OOF log loss over seeds).

    python scripts/sweep.py --out runs/sweep --folds 5 --seeds 1 2 \\
        --grid '{"lr": ["1e-3", "3e-4"], "batch-size": ["16", "32"]}' --base "--patience 6"
    python scripts/sweep.py --out runs/sweep --configs configs.json --jobs 8   # named configurations

`--configs` takes a JSON file {name: {flag: value, ...}}; `--grid` the product of flag values.
Runs already in --out are reused, so an interrupted sweep resumes. Any Keras backend works
(e.g. KERAS_BACKEND=jax on a GPU machine without TensorFlow, with `--jobs` > 1).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from covid_xray.config import CLASS_NAMES  # noqa: E402

GRID = {
    "lr": ["1e-3", "3e-4"],
    "augment-epochs": ["0", "50"],
}


def configurations(args) -> dict[str, list[str]]:
    """{name: train.py flags} from --configs (named) or --grid (product)."""
    if args.configs:
        named = json.loads(Path(args.configs).read_text())
        # A value of true is a switch (e.g. "no-flip": true).
        return {
            name: [x for k, v in flags.items() for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]
            for name, flags in named.items()
        }
    grid = args.grid
    out = {}
    for values in itertools.product(*grid.values()):
        name = "_".join(f"{k}={v}" for k, v in zip(grid, values, strict=True))
        out[name] = [x for pair in zip([f"--{k}" for k in grid], values, strict=True) for x in pair]
    return out


def run_dir(out: Path, name: str, seed: int, fold: int | None) -> Path:
    return out / name / f"seed{seed}" / ("single" if fold is None else f"fold{fold}")


def train_once(args, name: str, flags: list[str], seed: int, fold: int | None) -> Path:
    """Train one (configuration, seed, fold) unless its run folder already holds the result."""
    run = run_dir(Path(args.out), name, seed, fold)
    if not (run / "logs" / "val_predictions.csv").exists():
        cv = [] if fold is None else ["--cv-folds", str(args.folds), "--cv-fold", str(fold)]
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            "--model",
            args.model,
            *shlex.split(args.base),
            *flags,
            *cv,
            "--seed",
            str(seed),
            "--checkpoint-dir",
            str(run),
            "--run-dir",
            str(run / "logs"),
            "--quiet",
        ]
        run.mkdir(parents=True, exist_ok=True)
        with (run / "train.log").open("w") as log:
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if not args.keep_checkpoints:
            (run / f"{args.model}.keras").unlink(missing_ok=True)
    print(f"done {name} seed={seed} fold={fold}", flush=True)
    return run


def score(runs: list[Path], model: str) -> dict:
    """OOF accuracy, log loss and per-class recall over the runs' validation predictions.

    "per_image" ({file: (log loss, correct)}) feeds the paired comparison; it is not saved.
    """
    rows, kept, backends = [], [], set()
    for run in runs:
        with (run / "logs" / "val_predictions.csv").open() as handle:
            rows += list(csv.DictReader(handle))
        meta = json.loads((run / f"{model}.json").read_text())
        kept.append(f"{meta['kept']['phase']}:{meta['kept']['epoch']}")
        backends.add(meta["versions"].get("keras_backend") or "tensorflow")
    truth = np.array([CLASS_NAMES.index(r["true"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASS_NAMES] for r in rows])
    pred = probs.argmax(axis=1)
    losses = -np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-7, 1.0))
    return {
        "per_image": {
            r["file"]: (float(loss), bool(p == t))
            for r, loss, p, t in zip(rows, losses, pred, truth, strict=True)
        },
        "n": len(rows),
        "accuracy": float(np.mean(pred == truth)),
        "log_loss": float(losses.mean()),
        "recall": {c: float(np.mean(pred[truth == i] == i)) for i, c in enumerate(CLASS_NAMES)},
        "kept": kept,
        "keras_backends": sorted(backends),
    }


def paired_difference(config: dict, reference: dict) -> dict:
    """Mean per-image difference (config - reference) in OOF log loss and accuracy, with standard errors.

    Both see the same images in the same folds (same seeds), so the paired difference removes
    the images' own difficulty; "better" means a lower log loss by more than two standard errors.
    """
    loss, correct = [], []
    for seed, run in config["seeds"].items():
        ref = reference["seeds"][seed]["per_image"]
        for file, (image_loss, c) in run["per_image"].items():
            loss.append(image_loss - ref[file][0])
            correct.append(float(c) - float(ref[file][1]))
    loss, correct = np.asarray(loss), np.asarray(correct)
    se = lambda d: float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")  # noqa: E731
    diff = {
        "log_loss": float(loss.mean()),
        "log_loss_se": se(loss),
        "accuracy": float(correct.mean()),
        "accuracy_se": se(correct),
    }
    diff["better"] = bool(diff["log_loss"] < -2 * diff["log_loss_se"])
    return diff


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "runs" / "sweep"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--model", default="davidnet")
    parser.add_argument(
        "--folds", type=int, default=5, help="k of the k-fold split of train (0 = one validation split)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    parser.add_argument("--base", default="", help="train.py flags shared by every configuration")
    parser.add_argument(
        "--grid",
        type=json.loads,
        default=GRID,
        help='JSON object of train.py flags to lists of values, e.g. {"lr": ["1e-3"], "batch-size": ["16"]}',
    )
    parser.add_argument(
        "--configs", help="JSON file of named configurations {name: {flag: value}} (instead of --grid)"
    )
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's .keras file")
    parser.add_argument(
        "--reference",
        help="configuration the others are compared with, image by image (default: the first one)",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="train nothing; score the configurations whose runs are all there (e.g. after a timeout)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print the results as a Markdown table")
    args = parser.parse_args()

    configs = configurations(args)
    folds = list(range(args.folds)) if args.folds > 1 else [None]
    # Seed-major order: an interrupted sweep has whole seeds of every configuration.
    jobs = [
        (name, flags, seed, fold) for seed in args.seeds for name, flags in configs.items() for fold in folds
    ]
    if not args.score_only:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(lambda job: train_once(args, *job), jobs))

    def complete(name: str, seed: int) -> bool:
        return all(
            (run_dir(Path(args.out), name, seed, f) / "logs" / "val_predictions.csv").exists() for f in folds
        )

    seeds = [seed for seed in args.seeds if all(complete(name, seed) for name in configs)]
    if not seeds:
        print("no seed has complete runs for every configuration", file=sys.stderr)
        return 1
    summary = {}
    for name in configs:
        per_seed = {
            seed: score([run_dir(Path(args.out), name, seed, f) for f in folds], args.model) for seed in seeds
        }
        acc = np.array([s["accuracy"] for s in per_seed.values()])
        loss = np.array([s["log_loss"] for s in per_seed.values()])
        summary[name] = {
            "flags": configs[name],
            "oof_accuracy_mean": float(acc.mean()),
            "oof_accuracy_std": float(acc.std()),
            "oof_log_loss_mean": float(loss.mean()),
            "oof_log_loss_std": float(loss.std()),
            "seeds": {str(k): v for k, v in per_seed.items()},
        }
    reference = args.reference or next(iter(configs))
    if reference not in summary:
        print(f"unknown --reference {reference!r}", file=sys.stderr)
        return 2
    for name in summary:
        summary[name]["vs_reference"] = paired_difference(summary[name], summary[reference])
    for entry in summary.values():
        for run in entry["seeds"].values():
            del run["per_image"]
    ranked = sorted(summary, key=lambda n: summary[n]["oof_log_loss_mean"])
    what = f"{args.folds}-fold OOF" if args.folds > 1 else "validation"
    print(
        f"\n{'configuration':24s} {what} log loss  accuracy        vs {reference}: d(log loss)  d(accuracy)"
        f"   recall " + "/".join(CLASS_NAMES)
    )
    for name in ranked:
        s, d = summary[name], summary[name]["vs_reference"]
        recall = "/".join(
            f"{np.mean([r['recall'][c] for r in s['seeds'].values()]):.2f}" for c in CLASS_NAMES
        )
        print(
            f"{name:24s} {s['oof_log_loss_mean']:.4f}±{s['oof_log_loss_std']:.4f}  "
            f"{s['oof_accuracy_mean']:.4f}±{s['oof_accuracy_std']:.4f}  "
            f"{d['log_loss']:+.4f}±{d['log_loss_se']:.4f}{' *' if d['better'] else '  '} "
            f"{d['accuracy']:+.4f}±{d['accuracy_se']:.4f}   {recall}"
        )
    best = ranked[0]
    print(
        f"\nlowest mean {what} log loss: {best}; "
        + (
            f"better than {reference} beyond two standard errors (*)"
            if summary[best]["vs_reference"]["better"]
            else f"not better than {reference} beyond two standard errors"
        )
    )
    out = Path(args.out) / "summary.json"
    out.write_text(
        json.dumps(
            {
                "folds": args.folds,
                "seeds": seeds,
                "base": args.base,
                "reference": reference,
                "selected": best,
                "selected_beats_reference": summary[best]["vs_reference"]["better"],
                "configurations": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    if args.markdown:
        print("\n" + markdown_table(summary, ranked, reference))
    return 0


def markdown_table(summary: dict, ranked: list[str], reference: str) -> str:
    """The README's table: one row per configuration, best (lowest OOF log loss) first."""
    lines = [
        f"| configuration | OOF log loss | OOF accuracy | vs `{reference}`: log loss "
        f"| vs `{reference}`: accuracy | recall " + " / ".join(CLASS_NAMES) + " |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in ranked:
        s, d = summary[name], summary[name]["vs_reference"]
        recall = " / ".join(
            f"{np.mean([r['recall'][c] for r in s['seeds'].values()]):.2f}" for c in CLASS_NAMES
        )
        versus = (
            ("n/a", "n/a")
            if name == reference
            else (
                f"{d['log_loss']:+.3f} ± {d['log_loss_se']:.3f}",
                f"{d['accuracy']:+.3f} ± {d['accuracy_se']:.3f}",
            )
        )
        lines.append(
            f"| `{name}` | {s['oof_log_loss_mean']:.3f} | {s['oof_accuracy_mean']:.3f} "
            f"| {versus[0]} | {versus[1]} | {recall} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
