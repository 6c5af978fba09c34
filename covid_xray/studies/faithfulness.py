"""Are the heatmaps faithful? `python -m covid_xray.studies.faithfulness --model davidnet`.

Runs the deletion test and the border mass (`covid_xray.faithfulness`) on the test set
(official, and its leakage-free subset) with each CAM method, exactly as the app computes the
heatmaps (`inference.load_model`: checkpoint, recorded preprocessing, `explain.Explainer`), and
writes `reports/<model>/faithfulness.json` (config + results, deterministic given the seed) and
`faithfulness.png`. `covid_xray.report.faithfulness` reads them for the app.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covid_xray import config
from covid_xray.faithfulness import (
    BATCH_SIZE,
    BLUR_SIGMA,
    BORDER,
    DEFAULT_FILL,
    DEFAULT_KS,
    DEFAULT_SEED,
    FILLS,
    RANDOM_DRAWS,
    RANDOM_GRID,
    SUBSET_TITLES,
    SUBSETS,
    TIE_TOLERANCE,
    _check_fraction,
    _k_key,
    _num,
    border_mass,
    heatmap_deletion_drops,
    random_deletion_drops,
    summarize_border,
    summarize_deletion,
    uniform_border_mass,
)
from covid_xray.report.faithfulness import _fmt, _share, method_label
from covid_xray.studies import _options

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)


def command(name: str) -> str:
    """The command that (re)creates a model's faithfulness report."""
    return config.FAITHFULNESS_COMMAND.format(name=name)


class ModelNotTrainedError(RuntimeError):
    """The model has no checkpoint: nothing to score (the message names the command that fixes it)."""


def _select(samples: list, limit: int | None) -> list:
    """All samples, or `limit` of them evenly spread over the (class-sorted) list."""
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}.")
    picks = np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))
    return [samples[i] for i in picks]


def evaluate_faithfulness(
    name: str,
    data_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    reports_dir: str | os.PathLike | None = None,
    *,
    methods: Sequence[str] | None = None,
    ks: Sequence[float] = DEFAULT_KS,
    fill: str = DEFAULT_FILL,
    seed: int = DEFAULT_SEED,
    limit: int | None = None,
    draws: int = RANDOM_DRAWS,
    grid: int = RANDOM_GRID,
    write: bool = True,
) -> dict:
    """Score one model's heatmaps on the test set; write faithfulness.json/.png; return the report.

    Raises:
        ModelNotTrainedError: the model has no checkpoint.
        checkpoints.CheckpointError: the checkpoint exists but cannot be loaded.
        data.DatasetNotFoundError: no dataset.
    """
    from covid_xray import data, inference
    from covid_xray.audit import audit_for, leaked_test_files
    from covid_xray.checkpoints import sha256_file
    from covid_xray.explain import METHODS
    from covid_xray.preprocessing import normalize

    spec = config.get_model_spec(name)
    methods = list(METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown or no methods {unknown or methods}; expected some of {METHODS}.")
    if fill not in FILLS:
        raise ValueError(f"Unknown fill {fill!r}; expected one of {FILLS}.")
    ks = [_check_fraction(k) for k in ks]
    reports = config.resolve_reports_dir(reports_dir)
    checkpoint = spec.checkpoint_path(checkpoint_dir)
    if not checkpoint.exists():
        message = inference.unavailable_message(name, checkpoint)
        detail = inference.unavailable_detail(name, checkpoint)
        raise ModelNotTrainedError(f"{message}\n{detail}\nThen score its heatmaps:\n    {command(name)}")

    all_samples = data.list_samples(data_dir)
    test = _select([s for s in all_samples if s.split == "test"], limit)
    leaked = leaked_test_files(audit_for(all_samples, reports))
    loaded = inference.load_model(name, checkpoint_dir)
    explainer, mode = loaded.explainer, loaded.preprocessing
    timings: dict[str, float] = {}

    start = time.perf_counter()
    images, _ = data.load_arrays(test)
    images = images.astype(np.float32)  # 0..255 pixels; deletion happens here, then `normalize`
    timings["load"] = time.perf_counter() - start

    model = explainer.model

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(normalize(batch, mode)))

    start = time.perf_counter()
    base_probs = np.concatenate(
        [predict_fn(images[i : i + BATCH_SIZE]) for i in range(0, len(images), BATCH_SIZE)]
    ).astype(np.float64)
    classes = base_probs.argmax(axis=1)
    base = base_probs[np.arange(len(images)), classes]
    random_drops = random_deletion_drops(
        predict_fn,
        images,
        classes,
        ks,
        fill,
        np.random.default_rng([seed, 0]),
        draws=draws,
        grid=grid,
        base=base,
    )
    timings["random"] = time.perf_counter() - start

    per_method: dict[str, dict] = {}
    for method in methods:
        start = time.perf_counter()
        heatmaps = [
            explainer.explain(normalize(image, mode), method, class_index=int(c))[1]
            for image, c in zip(images, classes, strict=True)
        ]
        explained = time.perf_counter()
        rng = np.random.default_rng([seed, 1 + METHODS.index(method)])
        drops = heatmap_deletion_drops(predict_fn, images, heatmaps, classes, ks, fill, rng, base=base)
        per_method[method] = {
            "drops": drops,
            "border": np.array([border_mass(h) for h in heatmaps]),
            "support": np.array([float(np.mean(h > 0)) for h in heatmaps]),
        }
        timings[method] = time.perf_counter() - start
        log.info(
            "%s %s: heatmaps %.1f s, deletion %.1f s",
            name,
            method,
            explained - start,
            timings[method] - (explained - start),
        )

    is_leaked = np.array([s.relpath in leaked for s in test])
    results = {}
    for subset in SUBSETS:
        keep = np.ones(len(test), bool) if subset == "official" else ~is_leaked
        results[subset] = {
            "n": int(keep.sum()),
            "random_drop": {
                _k_key(k): _num(random_drops[keep, j].mean()) if keep.any() else None
                for j, k in enumerate(ks)
            },
            "methods": {
                m: {
                    "deletion": summarize_deletion(r["drops"][keep], random_drops[keep], ks),
                    "border_mass": summarize_border(r["border"][keep]),
                    "support": _num(r["support"][keep].mean()) if keep.any() else None,
                }
                for m, r in per_method.items()
            },
        }
    report = {
        "model": name,
        "display_name": spec.display_name,
        "config": {
            "methods": methods,
            "ks": [float(k) for k in ks],
            "fill": fill,
            "blur_sigma_fraction": BLUR_SIGMA if fill == "blur" else None,
            "seed": int(seed),
            "random_draws": int(draws),
            "random_masks": f"blobs: top k of a uniform random {grid}x{grid} field, bilinear upsampling",
            "random_grid": int(grid),
            "tie_tolerance": TIE_TOLERANCE,
            "target": "the model's predicted class; score = its softmax probability",
            "border": BORDER,
            "uniform_border_mass": _num(uniform_border_mass(BORDER)),
            "n_images": len(test),
            "n_leakage_free": int((~is_leaked).sum()),
            "limit": limit,
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": sha256_file(checkpoint),
            "preprocessing": mode,
            "scorecam_max_n": int(explainer.scorecam_max_n),
            "command": _command_line(name, methods, fill, seed, limit),
        },
        "results": results,
        "images": [
            {
                "file": sample.relpath,
                "true": sample.label,
                "predicted": config.CLASS_NAMES[int(classes[i])],
                "probability": _num(base[i]),
                "leaked": bool(is_leaked[i]),
                "random_drop": [_num(v) for v in random_drops[i]],
                "methods": {
                    m: {"drop": [_num(v) for v in r["drops"][i]], "border_mass": _num(r["border"][i])}
                    for m, r in per_method.items()
                },
            }
            for i, sample in enumerate(test)
        ],
    }
    report["timings_s"] = {k: round(v, 1) for k, v in timings.items()}  # dropped before writing
    if write:
        out = spec.report_dir(reports)
        write_report(report, out / config.FAITHFULNESS_FILE)
        plot_faithfulness(report, out / config.FAITHFULNESS_PLOT_FILE)
    return report


def _command_line(name: str, methods: Sequence[str], fill: str, seed: int, limit: int | None) -> str:
    from covid_xray.explain import METHODS

    parts = [command(name)]
    if list(methods) != list(METHODS):
        parts.append("--methods " + " ".join(methods))
    if fill != DEFAULT_FILL:
        parts.append(f"--fill {fill}")
    if seed != DEFAULT_SEED:
        parts.append(f"--seed {seed}")
    if limit is not None:
        parts.append(f"--limit {limit}")
    return " ".join(parts)


def write_report(report: dict, path: Path) -> None:
    """faithfulness.json without run-dependent fields (timings), so the seed fixes its bytes."""
    from covid_xray.checkpoints import write_json

    write_json(path, {k: v for k, v in report.items() if k != "timings_s"})


def plot_faithfulness(report: dict, path: Path) -> None:
    """Deletion curves (drop vs k, each method vs random) and border-mass bars, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, official = report["config"], report["results"]["official"]
    ks = [100 * k for k in cfg["ks"]]
    keys = [_k_key(k) for k in cfg["ks"]]
    colors = plt.get_cmap("tab10").colors
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)

    for index, method in enumerate(cfg["methods"]):
        deletion = official["methods"][method]["deletion"]
        left.plot(
            ks,
            [deletion[k]["heatmap_drop"] for k in keys],
            "o-",
            color=colors[index],
            label=method_label(method),
        )
    left.plot(
        ks,
        [official["random_drop"][k] for k in keys],
        "s--",
        color="0.35",
        label=f"random blobs (mean of {cfg['random_draws']})",
    )
    left.axhline(0.0, color="0.8", linewidth=0.8)
    left.set_xticks(ks)
    left.set_xlabel("pixels removed (% of image, most highlighted first)")
    left.set_ylabel("mean drop in predicted-class probability")
    left.set_title(
        f"Deletion test, {SUBSET_TITLES['official']} (n={official['n']}, fill: {cfg['fill']})", fontsize=10
    )
    left.legend(fontsize=8)

    width = 0.38
    positions = np.arange(len(cfg["methods"]))
    for offset, subset in ((-width / 2, "official"), (width / 2, "leakage_free")):
        sub = report["results"][subset]
        values = [sub["methods"][m]["border_mass"]["mean"] or 0.0 for m in cfg["methods"]]
        bars = right.bar(
            positions + offset,
            values,
            width,
            label=f"{SUBSET_TITLES[subset]} (n={sub['n']})",
            color="tab:blue" if subset == "official" else "tab:orange",
        )
        right.bar_label(bars, fmt="%.2f", fontsize=8)
    right.axhline(
        cfg["uniform_border_mass"],
        color="0.3",
        linestyle="--",
        linewidth=1,
        label=f"uniform map ({cfg['uniform_border_mass']:.2f})",
    )
    right.set_xticks(positions, [method_label(m) for m in cfg["methods"]])
    right.set_ylim(0, 1)
    right.set_ylabel(f"mean heatmap mass in the outer {cfg['border']:.0%} border")
    right.set_title("Border mass (text markers, collimation edges)", fontsize=10)
    right.legend(fontsize=8, loc="upper left")

    fig.suptitle(f"{report['display_name']}: are the heatmaps faithful?", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _print_table(report: dict) -> None:
    cfg = report["config"]
    keys = [_k_key(k) for k in cfg["ks"]]
    for subset in SUBSETS:
        sub = report["results"][subset]
        print(
            f"\n{report['display_name']}, {SUBSET_TITLES[subset]} (n={sub['n']}), "
            f"fill={cfg['fill']}, seed={cfg['seed']}: drop heatmap / random / difference +- se / beats"
        )
        ks_header = " ".join(f"{'k=' + format(100 * float(k), 'g') + '%':>32s}" for k in keys)
        print(f"{'method':11s} {ks_header} {'border mean/median':>19s}")
        for method in cfg["methods"]:
            row = sub["methods"][method]
            cells = []
            for k in keys:
                d = row["deletion"][k]
                cell = f"{_fmt(d['heatmap_drop'])}/{_fmt(d['random_drop'])}/{_fmt(d['difference'])}"
                cells.append(f"{cell}+-{_fmt(d['difference_se'])}/{_share(d['beats_random'])}")
            border = row["border_mass"]
            print(
                f"{method_label(method):11s} "
                + " ".join(f"{c:>32s}" for c in cells)
                + f" {_fmt(border['mean']):>9s}/{_fmt(border['median'])}"
            )
    print(f"\n(border mass of a uniform map: {cfg['uniform_border_mass']:.2f})")


def main(argv: list[str] | None = None) -> int:
    from covid_xray.explain import METHODS

    parser = argparse.ArgumentParser(
        prog=f"{config.STUDIES}.faithfulness",
        description="Are the heatmaps faithful? Deletion test and border mass on the test set.",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        choices=sorted(config.MODELS),
        default=list(config.MODELS),
        help="models to score (default: all; those without a checkpoint are skipped)",
    )
    _options.add(parser, "data_dir", "checkpoint_dir", "reports_dir")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--fill",
        choices=FILLS,
        default=DEFAULT_FILL,
        help="what removed pixels become: the image mean or a heavy Gaussian blur",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--limit", type=int, default=None, help="score only N test images (evenly spread)")
    parser.add_argument("--draws", type=int, default=RANDOM_DRAWS, help="random masks per image and k")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from covid_xray.checkpoints import CheckpointError
    from covid_xray.data import DatasetNotFoundError

    status = 0
    for name in args.model:
        start = time.perf_counter()
        try:
            report = evaluate_faithfulness(
                name,
                args.data_dir,
                args.checkpoint_dir,
                args.reports_dir,
                methods=args.methods,
                fill=args.fill,
                seed=args.seed,
                limit=args.limit,
                draws=args.draws,
            )
        except ModelNotTrainedError as exc:
            print(f"Skipping {config.MODELS[name].display_name}: {exc}")
            continue
        except (CheckpointError, DatasetNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        _print_table(report)
        out = config.get_model_spec(name).report_dir(args.reports_dir)
        print(
            f"Wrote {out / config.FAITHFULNESS_FILE} and {out / config.FAITHFULNESS_PLOT_FILE} in "
            f"{time.perf_counter() - start:.1f} s "
            f"(stages, s: {report['timings_s']})"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
