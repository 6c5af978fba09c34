#!/usr/bin/env python
"""Re-save a checkpoint without optimizer state (same weights, same predictions, smaller file).

    python scripts/strip_checkpoint.py checkpoints/davidnet.keras
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from covid_xray.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402

for path in sys.argv[1:]:
    model, meta = load_checkpoint(path)
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "checkpoint")}
    record = save_checkpoint(model, path, meta)
    print(f"{path}: sha256 {record['sha256']}")
