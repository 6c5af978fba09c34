"""The shortcut explainer (`covid_xray.report.shortcuts`) quotes the committed numbers."""

from __future__ import annotations

from covid_xray import config, report


def test_shortcut_explainer_quotes_the_committed_numbers():
    """The two paragraphs read their numbers from the committed reports, never from the code."""
    from covid_xray.report.faithfulness import border_mass_summary

    text = report.shortcut_markdown()
    metrics = report.load_metrics("davidnet")
    official = metrics["subsets"]["official"]["accuracy"]
    clean = metrics["subsets"]["leakage_free"]
    assert f"{official:.1%} on the official test set" in text
    assert f"{clean['accuracy']:.1%} on the {clean['n']} test images" in text
    leaked = report.load_audit()["leaked_test_files"]
    assert f"{len(leaked)} of the 66 test images" in text
    mass = border_mass_summary("davidnet")["methods"]["gradcam"]["mean"]
    assert f"DavidNet's Grad-CAM puts {mass:.0%} of its heatmap" in text
    assert "children" in text and text.count("\n\n") == 1  # two paragraphs
    for name, spec in config.MODELS.items():
        metrics = report.load_metrics(name, config.REPORTS_DIR)
        if metrics is None:  # a model without committed numbers is not quoted at all
            assert spec.display_name not in text
        else:
            assert f"{metrics['subsets']['official']['accuracy']:.1%}" in text


def test_shortcut_explainer_without_reports_says_what_is_missing(tmp_path, reports_dir):
    # The fixture reports have metrics but no faithfulness file: the border-mass sentences say so,
    # for each model.
    text = report.shortcut_markdown(reports_dir)
    for name, spec in config.MODELS.items():
        assert f"{spec.display_name}'s heatmaps have not been measured on this server yet." in text
        official = report.load_metrics(name, reports_dir)["subsets"]["official"]["accuracy"]
        assert f"{official:.1%} on the official test set" in text
    empty = report.shortcut_markdown(tmp_path)
    assert "several test images have a copy" in empty and "official test set" not in empty
