"""The report's heatmap-faithfulness text, from `reports/<model>/faithfulness.json`
(`python -m covid_xray.studies.faithfulness`): deletion drops against random blobs and border
mass, per CAM method, in sentences; the app never recomputes them."""

from __future__ import annotations

import os
from pathlib import Path

from covid_xray import config
from covid_xray.faithfulness import SUBSET_TITLES, _k_key, border_band
from covid_xray.report.files import existing_model_file, read_report_json


def method_label(method: str) -> str:
    from covid_xray.inference import METHOD_DISPLAY_NAMES

    return METHOD_DISPLAY_NAMES.get(method, method)


def load_faithfulness(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """The saved report of a model, or None when it is missing or unreadable."""
    report = read_report_json(name, config.FAITHFULNESS_FILE, reports_dir)
    if not isinstance(report, dict) or not {"config", "results"} <= report.keys():
        return None
    return report


def faithfulness_image_path(name: str, reports_dir: str | os.PathLike | None = None) -> Path | None:
    """reports/<model>/faithfulness.png when it exists, else None."""
    return existing_model_file(name, config.FAITHFULNESS_PLOT_FILE, reports_dir)


def border_mass_summary(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """Border mass per method from the saved report, or None when there is none.

    Returns:
        {"border": 0.1, "uniform": 0.36, "n": 66, "methods": {"gradcam": {"mean", "median"}, ...},
        "leakage_free": {"n": 57, "methods": {...}}}: "methods" is the official test set.
    """
    report = load_faithfulness(name, reports_dir)
    if report is None:
        return None

    def methods(subset: dict) -> dict:
        return {
            m: {"mean": r["border_mass"]["mean"], "median": r["border_mass"]["median"]}
            for m, r in subset["methods"].items()
        }

    official, clean = report["results"]["official"], report["results"]["leakage_free"]
    return {
        "border": report["config"]["border"],
        "uniform": report["config"]["uniform_border_mass"],
        "n": official["n"],
        "methods": methods(official),
        "leakage_free": {"n": clean["n"], "methods": methods(clean)},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(row: dict) -> str:
    """'better', 'worse' or 'indistinguishable' from random: difference beyond 2 standard errors."""
    diff, se = row["difference"], row["difference_se"]
    if diff is None or se is None:
        return "indistinguishable"
    if diff > 2 * se:
        return "better"
    if diff < -2 * se:
        return "worse"
    return "indistinguishable"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _range(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.0%}" if round(100 * low) == round(100 * high) else f"{low:.0%} to {high:.0%}"


def _deletion_sentences(cfg: dict, subset: dict, pct: str, key: str) -> list[str]:
    """What the deletion test says at the largest k, per verdict group (see `_verdict`)."""
    rows = {method_label(m): subset["methods"][m]["deletion"][key] for m in cfg["methods"]}
    groups: dict[str, list[str]] = {"better": [], "indistinguishable": [], "worse": []}
    for label, row in rows.items():
        groups[_verdict(row)].append(label)
    sentences = []
    better = groups["better"]
    if better:
        diffs = ", ".join(f"{rows[m]['difference']:.3f}" for m in better)
        beats = [rows[m]["beats_random"] for m in better]
        loses = [rows[m]["loses_to_random"] for m in better]
        reading = (
            "These maps mostly point at pixels the model relies on"
            if min(beats) >= 0.75
            else "They point at pixels the model relies on for some images, not reliably for each"
        )
        sentences.append(
            f"On average, removing the {pct} most highlighted pixels lowers the predicted class's "
            f"probability more than removing random blobs for {_join(better)} (by {diffs}; beyond two "
            f"standard errors), but image by image the heatmap wins on {_range(beats)} of images and "
            f"loses on {_range(loses)}. {reading}."
        )
    weak = groups["indistinguishable"] + groups["worse"]
    if weak:
        how = "no better than, or worse than," if groups["worse"] else "no better than"
        sentences.append(
            f"{_join(weak)} {'is' if len(weak) == 1 else 'are'} {how} random at {pct}: "
            "do not read these maps as the model's reasons."
        )
    return sentences


def _border_sentences(cfg: dict, subset: dict) -> list[str]:
    """Border mass against a uniform map, per band (above, about equal, below)."""
    uniform = cfg["uniform_border_mass"]
    bands: dict[str, list[str]] = {"above": [], "about": [], "below": []}
    for method in cfg["methods"]:
        mean = subset["methods"][method]["border_mass"]["mean"]
        if mean is None:
            continue
        bands[border_band(mean, cfg["border"])].append(f"{method_label(method)} ({mean:.2f})")
    # {s}: verb ending, {its}: possessive, for one method or several.
    templates = {
        "above": "{who} put{s} more of {its} mass on the image border than a uniform map would ({u:.2f}): "
        "look for text markers and collimation edges, a shortcut rather than lung findings.",
        "about": "{who} put{s} about as much mass on the border as a uniform map ({u:.2f}); the lungs fill "
        "the centre, so a map focused on them would put clearly less there: the edges (markers, "
        "collimation) get their share of the attention.",
        "below": "{who} keep{s} most of {its} mass off the border (uniform map: {u:.2f}): on average not "
        "drawn to edge markers, though single images can be.",
    }
    sentences = []
    for band, template in templates.items():
        if bands[band]:
            one = len(bands[band]) == 1
            sentences.append(
                template.format(
                    who=_join(bands[band]), s="s" if one else "", its="its" if one else "their", u=uniform
                )
            )
    return sentences


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def faithfulness_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """A compact table of the saved faithfulness report and an honest reading of it (Markdown).

    A missing report gives a message with the command that creates it.
    """
    spec = config.get_model_spec(name)
    report = load_faithfulness(name, reports_dir)
    if report is None:
        return (
            f"No heatmap faithfulness report for {spec.display_name} yet ({config.FAITHFULNESS_FILE} is "
            "missing). Create it with (a trained checkpoint is needed):"
            f"\n\n```bash\n{config.FAITHFULNESS_COMMAND.format(name=name)}\n```"
        )
    cfg, official = report["config"], report["results"]["official"]
    clean = report["results"]["leakage_free"]
    keys = [_k_key(k) for k in cfg["ks"]]
    big = keys[-1]
    pct = [f"{100 * k:g}%" for k in cfg["ks"]]
    uniform = cfg["uniform_border_mass"]
    fill = "the image mean" if cfg["fill"] == "mean" else "a heavy blur of the image"
    intro = (
        f"**Are the heatmaps faithful?** {spec.display_name}, {SUBSET_TITLES['official']} "
        f"(n={official['n']}). Deletion: mean drop in the predicted class's probability when the "
        f"top k% of the heatmap is replaced by {fill}, vs random blobs of the same area (mean of "
        f"{cfg['random_draws']} draws). Border mass: share of the heatmap in the outer "
        f"{cfg['border']:.0%} of each side (a uniform map gives {uniform:.2f})."
    )
    drop_columns = " | ".join(f"drop at {p}: heatmap / random" for p in pct)
    lines = [
        intro,
        "",
        f"| method | {drop_columns} | wins / losses vs random at {pct[-1]} | border mass mean / median |",
        "|---|" + "---:|" * (len(keys) + 2),
    ]
    for method in cfg["methods"]:
        row = official["methods"][method]
        deletion, border = row["deletion"], row["border_mass"]
        cells = [f"{_fmt(deletion[k]['heatmap_drop'])} / {_fmt(official['random_drop'][k])}" for k in keys]
        cells.append(f"{_share(deletion[big]['beats_random'])} / {_share(deletion[big]['loses_to_random'])}")
        cells.append(f"{_fmt(border['mean'], 2)} / {_fmt(border['median'], 2)}")
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")

    sentences = _deletion_sentences(cfg, official, pct[-1], big) + _border_sentences(cfg, official)
    same = all(
        _verdict(official["methods"][m]["deletion"][big]) == _verdict(clean["methods"][m]["deletion"][big])
        for m in cfg["methods"]
    )
    clean_note = (
        f"The leakage-free subset (n={clean['n']}) gives the same deletion verdicts"
        if same
        else f"The leakage-free subset (n={clean['n']}) changes some deletion verdicts"
    )
    sentences.append(
        f"{clean_note} (see {config.FAITHFULNESS_FILE}). Deleted regions make unnatural images and confident "
        "predictions barely move, so these numbers show sensitivity, not medical reasoning."
    )
    lines += ["", " ".join(sentences)]
    if cfg.get("limit") is not None:
        lines += ["", f"*Computed on {cfg['n_images']} test images only (--limit {cfg['limit']}).*"]
    return "\n".join(lines)
