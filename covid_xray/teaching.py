"""See the shortcut, for one image: each model's most similar training films and its what-if probe.

`explore(runtime, source)` decodes the image once, then per loaded model looks up the k nearest
training films in the model's own feature space (`covid_xray.neighbours`) and re-runs the model
on masked copies (`covid_xray.probe`). The rest turns the result into what the page shows:
thumbnails with captions, one chart per model and a few sentences for a student.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covid_xray import preprocessing, report
from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES, MODELS

logger = logging.getLogger(__name__)

NEIGHBOURS_K = 5
# Bar colours per class in the probe chart (colour-blind-safe pairs of the Okabe-Ito palette).
CLASS_COLOURS = {"Covid": "#D55E00", "Normal": "#009E73", "Viral Pneumonia": "#0072B2"}
MASK_LABELS = {
    "none": "as uploaded",
    "border": "border masked",
    "below_lungs": "below lungs masked",
    "outside_chest": "outside chest masked",
    "chest": "only the border left",
}


@dataclass
class ModelShortcut:
    """One model's view of one image: its nearest training films and how masks move its answer."""

    name: str
    neighbours: list = field(default_factory=list)  # neighbours.Neighbour, nearest first
    probe: object | None = None  # probe.ProbeResult
    message: str = ""  # why a part is missing, for visitors


def explore(runtime, source, file: str | None = None) -> dict[str, ModelShortcut]:
    """Both tools for every loaded model, on one image (a path, bytes or an array); `file` is its
    dataset-relative name when it is a dataset image (so a copy in training is recognised; found
    from a path under the data root when not given).

    Raises:
        imaging.ImageDecodeError: the source is not a usable image.
    """
    from covid_xray import config
    from covid_xray.inference import decode_source

    if file is None and isinstance(source, str):
        root, path = config.resolve_data_dir(), Path(source).resolve()
        file = path.relative_to(root).as_posix() if path.is_relative_to(root) else None
    model_input = preprocessing.resize_for_model(decode_source(source))
    out = {}
    for name in MODELS:
        view = ModelShortcut(name)
        if not runtime.predictor.is_available(name):
            view.message = f"{MODELS[name].display_name} is not available on this server now."
            out[name] = view
            continue
        index, probe = runtime.indexes.get(name), runtime.probes.get(name)
        # The models' weights are shared with the serving path: one image at a time.
        with runtime.predictor.lock:
            if index is not None:
                view.neighbours = index.query_image(model_input, NEIGHBOURS_K, query_file=file)
            if probe is not None:
                view.probe = probe.run(model_input)
        if index is None:
            view.message = (
                "Similar training films are still being indexed; try again in a minute."
                if not runtime.finished
                else "Similar training films need the training images, which are not on this server."
            )
        out[name] = view
    return out


def neighbour_items(view: ModelShortcut) -> list[tuple[np.ndarray, str]]:
    """(thumbnail, caption) per neighbour, nearest first."""
    items = []
    for n in view.neighbours:
        try:
            items.append((report.load_thumbnail(n.file), n.caption()))
        except (OSError, report.ReportError, ValueError) as exc:
            logger.warning("Neighbour %s unavailable: %s", n.file, exc)
    return items


def probe_figure(view: ModelShortcut):
    """Grouped horizontal bars: each class's probability as uploaded and under each mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = view.probe
    if result is None:
        return None
    rows = [("none", result.probabilities)] + [(o.mask, o.probabilities) for o in result.outcomes]
    fig, ax = plt.subplots(figsize=(5.2, 3.0), dpi=100)
    height = 0.8 / len(CLASS_NAMES)
    for c_index, cls in enumerate(CLASS_NAMES):
        ys = [r_index + c_index * height for r_index in range(len(rows))]
        ax.barh(
            ys,
            [probs[cls] for _, probs in rows],
            height,
            color=CLASS_COLOURS[cls],
            label=CLASS_DISPLAY_NAMES[cls],
        )
    ax.set_yticks([r + 0.4 - height / 2 for r in range(len(rows))])
    labels = [MASK_LABELS.get(mask, mask) for mask, _ in rows]
    for i, (mask, _) in enumerate(rows):
        if mask != "none" and result.outcome(mask).flipped:
            labels[i] += " (flips)"
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


def summary_markdown(view: ModelShortcut) -> str:
    """Sentences for a student: what the nearest film is, and which masks flip the answer."""
    display = MODELS[view.name].display_name
    lines = []
    if view.neighbours:
        first = view.neighbours[0]
        same = sum(n.label == view.neighbours[0].label for n in view.neighbours)
        lines.append(
            f"**Nearest training film** for {display}: {CLASS_DISPLAY_NAMES[first.label]}, {first.age}, "
            f"from the {first.source}; {same} of the {len(view.neighbours)} nearest share its label."
        )
        if first.twin:
            lines.append(
                "This test image has a copy in the training set, and the copy is the nearest film: "
                "the model may answer from memory."
            )
    if view.probe is not None:
        sentences = view.probe.sentences()
        lines += sentences or [f"No mask changes {display}'s answer."]
    if view.message:
        lines.append(view.message)
    return "  \n".join(lines)


INTRO_MARKDOWN = (
    "**Why did the model answer that?** Two ways to find out. *Similar training films*: the five "
    "training images the model finds most alike, in its own features (cosine distance), with their "
    "label and whether they are a child's film: an adult's normal film among COVID-19 films, or a "
    "copy of this very image, explains a lot. *What-if probe*: the model again on copies of the image "
    "with parts covered by the image's own median grey (edges softened), a flat fill that adds no "
    "new edge or text, unlike black or a blur: if covering the border or the belly changes the "
    "answer, the model was reading those, not the lungs."
)
