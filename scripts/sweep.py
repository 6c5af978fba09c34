#!/usr/bin/env python
"""Hyper-parameter sweep for DavidNet, selected on the VALIDATION split only.

Trains each configuration (and seed) into its own folder under --out, then prints a table of
validation loss/accuracy and the configuration with the lowest mean validation loss. The
test split is never read here: `python -m covid_xray.evaluate` is run once, on the winner.

    python scripts/sweep.py --out runs/sweep --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    "lr": ["1e-3", "3e-4"],
    "augment-epochs": ["0", "50"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "sweep"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--model", default="davidnet")
    parser.add_argument("--grid", type=json.loads, default=GRID,
                        help='JSON object of train.py flags to lists of values, e.g. \'{"lr": ["1e-3"], "batch-size": ["16"]}\'')
    args = parser.parse_args()
    grid = args.grid
    results = {}
    for values in itertools.product(*grid.values()):
        flags = [x for pair in zip([f"--{k}" for k in grid], values) for x in pair]
        name = "_".join(f"{k}={v}" for k, v in zip(grid, values))
        for seed in args.seeds:
            run = Path(args.out) / name / f"seed{seed}"
            meta_path = run / f"{args.model}.json"
            if not meta_path.exists():
                cmd = [sys.executable, str(ROOT / "train.py"), "--model", args.model, *flags, "--seed", str(seed),
                       "--checkpoint-dir", str(run), "--run-dir", str(run / "logs"), "--quiet"]
                subprocess.run(cmd, check=True, cwd=ROOT)
            meta = json.loads(meta_path.read_text())
            results.setdefault(name, []).append((meta["kept"]["val_loss"], meta["val_accuracy"]))
            print(f"{name} seed={seed}: val_loss={meta['kept']['val_loss']:.4f} val_acc={meta['val_accuracy']:.4f}", flush=True)
    print("\nconfiguration                          mean val_loss  mean val_acc")
    for name, rows in sorted(results.items(), key=lambda kv: np.mean([r[0] for r in kv[1]])):
        arr = np.asarray(rows)
        print(f"{name:38s} {arr[:, 0].mean():.4f}±{arr[:, 0].std():.4f}  {arr[:, 1].mean():.4f}")
    best = min(results, key=lambda k: np.mean([r[0] for r in results[k]]))
    print(f"\nselected on validation loss: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
