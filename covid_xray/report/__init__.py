"""What the app shows besides live predictions, read from the files the studies write
(`covid_xray.studies`), never recomputed:

- `files`: every reader (one per format, cached per file and mtime);
- `gallery`: the curated examples and the error gallery (thumbnails as arrays, never a path);
- `evaluation`: test metrics, cross-validation, labelled folders, the leakage audit, confounds;
- `calibration`: the served temperature, where it was fitted, its effect, the reliability figure;
- `faithfulness`: the heatmap deletion test and border mass, in sentences;
- `shortcuts`: what-if masks, nearest films, and the shortcut explainer of the report and About.

The names below are the package's API for the app (`from covid_xray import report`).
"""

from covid_xray.report.calibration import calibration_markdown, reliability_image_path
from covid_xray.report.evaluation import (
    CONFOUNDS_MARKDOWN,
    audit_markdown,
    cv_markdown,
    external_sets_markdown,
    history_image,
    history_image_path,
    metrics_markdown,
    plot_history,
    save_history_plot,
)
from covid_xray.report.faithfulness import faithfulness_image_path, faithfulness_markdown
from covid_xray.report.files import (
    KAGGLE_SET_KEY,
    ReportError,
    evaluated_sets,
    leaked_test_files,
    load_audit,
    load_confusion_image,
    load_history,
    load_metrics,
    load_png,
    load_predictions,
    stamp,
)
from covid_xray.report.gallery import (
    GALLERY_MODES,
    SUBSETS,
    THUMBNAIL_SIDE,
    data_available,
    example_gallery,
    film_sets,
    find_cases,
    gallery_items,
    gallery_status,
    load_examples,
    load_thumbnail,
    missing_data_message,
    resolve_dataset_file,
)
from covid_xray.report.shortcuts import shortcut_markdown, shortcuts_markdown

__all__ = [
    "CONFOUNDS_MARKDOWN",
    "GALLERY_MODES",
    "KAGGLE_SET_KEY",
    "ReportError",
    "SUBSETS",
    "THUMBNAIL_SIDE",
    "audit_markdown",
    "calibration_markdown",
    "cv_markdown",
    "data_available",
    "evaluated_sets",
    "example_gallery",
    "external_sets_markdown",
    "faithfulness_image_path",
    "faithfulness_markdown",
    "film_sets",
    "find_cases",
    "gallery_items",
    "gallery_status",
    "history_image",
    "history_image_path",
    "leaked_test_files",
    "load_audit",
    "load_confusion_image",
    "load_examples",
    "load_history",
    "load_metrics",
    "load_png",
    "load_predictions",
    "load_thumbnail",
    "metrics_markdown",
    "missing_data_message",
    "plot_history",
    "reliability_image_path",
    "resolve_dataset_file",
    "save_history_plot",
    "shortcut_markdown",
    "shortcuts_markdown",
    "stamp",
]
