"""The similar-films index of one model, built (or read from its cache) and timed::

    python -m covid_xray.studies.neighbours --model davidnet [--data-dir D] [--cache-dir C]

prints the lookup time and the leave-one-out 1-NN label agreement on the train folder
(`covid_xray.neighbours`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable

import numpy as np

from covid_xray import config, data, preprocessing
from covid_xray.neighbours import DEFAULT_CACHE_DIR, DEFAULT_K, NeighbourError, NeighbourIndex
from covid_xray.studies import _options


def time_lookup(index: NeighbourIndex, n: int = 200, k: int = DEFAULT_K, seed: int = 0) -> float:
    """Median milliseconds of one `query` (features already computed), over n queries of
    perturbed training features."""
    rng = np.random.default_rng(seed)
    scale = index.features.std(axis=0, keepdims=True) * 0.1
    picks = rng.integers(0, len(index), size=n)
    queries = index.features[picks] + rng.standard_normal((n, index.dim)).astype(np.float32) * scale
    times = []
    for q in queries:
        start = time.perf_counter()
        index.query(q, k)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def leave_one_out_agreement(index: NeighbourIndex) -> float:
    """Fraction of training images whose nearest OTHER training image has the same label."""
    d = 1.0 - index._unit @ index._unit.T
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    labels = np.array(index.labels)
    return float((labels[nearest] == labels).mean())


def main(argv: Iterable[str] | None = None) -> int:
    """Entry point of `python -m covid_xray.studies.neighbours`: build (or reuse) one model's index."""
    parser = argparse.ArgumentParser(prog=config.NEIGHBOURS_COMMAND, description=__doc__.split("\n\n")[0])
    _options.add(parser, "model", "data_dir", "checkpoint_dir")
    parser.add_argument("--cache-dir", default=None, help=f"feature cache (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--n", type=int, default=500, help="lookups timed")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from covid_xray.checkpoints import CheckpointError, load_checkpoint

    spec = config.get_model_spec(args.model)
    try:
        model, metadata = load_checkpoint(spec.checkpoint_path(args.checkpoint_dir))
        mode = preprocessing.checkpoint_mode(args.model, metadata)
        start = time.perf_counter()
        index = NeighbourIndex.build(
            model,
            None,
            data.list_samples(args.data_dir, "train"),
            mode,
            args.cache_dir,
            metadata.get("sha256"),
            model_name=args.model,
        )
        built = time.perf_counter() - start
    except (CheckpointError, data.DatasetNotFoundError, NeighbourError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    how = "read from cache" if index.from_cache else "computed"
    print(
        f"{spec.display_name}: {len(index)} training images, layer {index.feature_layer} "
        f"({index.dim}-d), features {how} in {built:.2f} s ({index.cache_path})"
    )
    print(f"lookup (k={DEFAULT_K}, features given): {time_lookup(index, args.n):.3f} ms median over {args.n}")
    print(f"leave-one-out 1-NN label agreement on train: {leave_one_out_agreement(index):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
