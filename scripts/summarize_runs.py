#!/usr/bin/env python
"""Print a Markdown table of training runs: validation (used for selection) and test (reported).

    python scripts/summarize_runs.py runs/reproduce

Each run folder holds `<model>.json` (from train.py) and `report/metrics.json` (from evaluate).
Seed runs (`seed*`) also get a mean ± standard deviation row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(run: Path) -> dict | None:
    metas = [p for p in run.glob("*.json") if not p.name.startswith("ood_")]
    metrics = run / "report" / "metrics.json"
    if not metas or not metrics.exists():
        return None
    meta, m = json.loads(metas[0].read_text()), json.loads(metrics.read_text())
    return {
        "run": run.name,
        "protocol": meta["protocol"],
        "lr": meta["config"]["learning_rate"],
        "kept": f"{meta['kept']['phase']} {meta['kept']['epoch']}",
        "val_loss": meta["kept"]["val_loss"],
        "val_acc": meta["val_accuracy"],
        "official": m["subsets"]["official"]["accuracy"],
        "clean": m["subsets"]["leakage_free"]["accuracy"],
        "official_f1": m["subsets"]["official"]["macro_f1"],
        "clean_f1": m["subsets"]["leakage_free"]["macro_f1"],
    }


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce")
    rows = [r for r in (load(p) for p in sorted(root.iterdir()) if p.is_dir()) if r]
    print(
        "| run | protocol | lr | epoch kept | val loss | val acc | official acc | leakage-free acc "
        "| official macro-F1 | leakage-free macro-F1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['protocol']} | {r['lr']:g} | {r['kept']} | {r['val_loss']:.4f} "
            f"| {r['val_acc']:.3f} | {r['official']:.3f} | {r['clean']:.3f} | {r['official_f1']:.3f} "
            f"| {r['clean_f1']:.3f} |"
        )
    seeds = [r for r in rows if r["run"].startswith("seed")]
    if len(seeds) > 1:
        def ms(key):
            v = np.array([r[key] for r in seeds])
            return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"
        print(
            f"| mean ± sd over {len(seeds)} seeds | default | | | | {ms('val_acc')} | {ms('official')} "
            f"| {ms('clean')} | {ms('official_f1')} | {ms('clean_f1')} |"
        )
        best = min(seeds, key=lambda r: r["val_loss"])
        print(f"\nlowest validation loss (the one to ship): {best['run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
