"""The report's shortcut text: what a shortcut is, how this dataset invites one, and what the
committed measurements (heatmap border mass, what-if masks, nearest training films) say."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from covid_xray import config, probe
from covid_xray.config import MODELS, TEST_SUBSET_TITLES
from covid_xray.faithfulness import border_band
from covid_xray.report.evaluation import _fmt
from covid_xray.report.faithfulness import border_mass_summary
from covid_xray.report.files import load_audit, load_metrics, read_report_json


def _border_mass_sentence(name: str, reports_dir: str | os.PathLike | None) -> str:
    """What the Grad-CAM border mass of one model says (`faithfulness.border_band`, the rule every
    border-mass text uses), or that it has not been measured."""
    spec = MODELS[name]
    summary = border_mass_summary(name, reports_dir)
    gradcam = (summary or {}).get("methods", {}).get("gradcam")
    if not gradcam:
        return f"{spec.display_name}'s heatmaps have not been measured on this server yet."
    mass, uniform = float(gradcam["mean"]), float(summary["uniform"])
    border = float(summary["border"])
    reading = {"above": "more than the", "about": "about the same as the", "below": "less than the"}[
        border_band(mass, border)
    ]
    return (
        f"{spec.display_name}'s Grad-CAM puts {mass:.0%} of its heatmap in the outer {border:.0%} of the "
        f"image (mean over {summary['n']} test images), {reading} {uniform:.0%} a heatmap spread evenly "
        "over the image would put there."
    )


def shortcut_markdown(reports_dir: str | os.PathLike | None = None) -> str:
    """Two paragraphs for a radiology teacher: what this dataset invites a model to learn, with
    the measured official vs leakage-free accuracy and the heatmaps' border mass."""
    scores, evaluated = [], []
    for name, spec in MODELS.items():
        metrics = load_metrics(name, reports_dir)
        if metrics:
            evaluated.append(name)
        subsets = (metrics or {}).get("subsets") or {}
        official, clean = subsets.get("official") or {}, subsets.get("leakage_free") or {}
        if "accuracy" in official and "accuracy" in clean:
            scores.append(
                f"{spec.display_name} scores {_fmt(official['accuracy'], True)} on the official test set "
                f"and {_fmt(clean['accuracy'], True)} on the {clean.get('n', '?')} test images without a "
                "copy in training"
            )
    audit = load_audit(reports_dir) or {}
    leaked = audit.get("leaked_test_files")
    n_test = (audit.get("num_images") or {}).get("test")
    copies = (
        f"{len(leaked)} of the {n_test} test images have an exact or near copy in the training set"
        if isinstance(leaked, list) and n_test
        else "several test images have a copy in the training set"
    )
    first = (
        "**What this dataset invites a model to learn.** The Normal and Viral Pneumonia images come "
        "from a collection of children's chest X-rays (Kermany et al.), while most COVID-19 images are "
        "adults, collected from many hospitals and publications. A network can score well by "
        "recognising a child's chest, a hospital's markers and film, or how an image was cropped and "
        f"compressed: none of these is the disease. On top of that, {copies}: on those a model can be "
        "right from memory, so we also score the test set without them"
        + (": " + "; ".join(scores) + "." if scores else ".")
    )
    sentences = [_border_mass_sentence(name, reports_dir) for name in evaluated]
    second = (
        "**What the heatmaps add.** A model that read the lungs would put little heatmap weight on the "
        "image border, where text markers, rulers and collimation edges sit. "
        + " ".join(sentences)
        + ' Read a high score here as "can tell these collections apart", not "can diagnose COVID-19": '
        "trusting it would take adults with and without COVID-19 from the same hospitals and scanners."
    )
    return first + "\n\n" + second


def load_shortcuts(name: str, reports_dir: str | os.PathLike | None = None) -> dict | None:
    """`reports/<model>/shortcuts.json` (`studies.shortcuts`), or None when missing or unreadable."""
    return read_report_json(name, config.SHORTCUTS_FILE, reports_dir)


def _pct(rate: Mapping[str, Any]) -> str:
    if not rate["n"]:
        return "n/a"
    return f"{rate['count']}/{rate['n']} ({rate['rate']:.0%})"


def shortcuts_markdown(name: str, reports_dir: str | os.PathLike | None = None) -> str:
    """The Model report's section: flip rates per mask and subset, nearest-film agreement."""
    spec = config.MODELS.get(name)
    display = spec.display_name if spec else name
    report = load_shortcuts(name, reports_dir)
    if report is None:
        return (
            f"No shortcut report for {display} yet. Compute it with "
            f"`{config.SHORTCUTS_COMMAND.format(name=name)}` (needs the trained checkpoint and the dataset)."
        )
    subsets = [s for s in TEST_SUBSET_TITLES if s in report["subsets"]]
    head = " | ".join(f"{TEST_SUBSET_TITLES[s]} ({report['subsets'][s]['n']})" for s in subsets)
    lines = [
        f"**What-if masks across the test set ({display}).** How often hiding a region changes "
        "the answer; mean change of the originally predicted class's probability in brackets.",
        "",
        f"| mask | {head} |",
        "|---|" + "---|" * len(subsets),
    ]
    for mask in probe.MASKS:
        cells = []
        for s in subsets:
            m = report["subsets"][s]["masks"][mask.name]
            cells.append(f"{_pct(m['flips'])} [{m['mean_delta_predicted']:+.3f}]")
        lines.append(f"| {mask.description} | " + " | ".join(cells) + " |")
    cells = [_pct(report["subsets"][s]["any_mask_flips"]) for s in subsets]
    lines.append("| any of these masks | " + " | ".join(cells) + " |")
    lines.append("")
    for s in subsets:
        sub = report["subsets"][s]
        lines.append(
            f"- {TEST_SUBSET_TITLES[s]}: the nearest training film has the image's **predicted** "
            f"class for {_pct(sub['nearest_shares_predicted'])} and its **true** class for "
            f"{_pct(sub['nearest_shares_true'])}; for the misclassified images it has the "
            f"predicted class for {_pct(sub['errors_nearest_shares_predicted'])}."
        )
    leaked = report["leaked_nearest_is_twin"]
    if leaked["n"]:
        lines.append(
            f"- Leaked test images whose copy in train is their nearest training film: {_pct(leaked)}."
        )
    lines += [
        "",
        f"Masking: {report['fill']}. Nearest films: {report['distance']} of layer "
        f"`{report['feature_layer']}`, over {report['n_train']} training images. "
        f"Computed by `{report['command']}`.",
    ]
    return "\n".join(lines)
