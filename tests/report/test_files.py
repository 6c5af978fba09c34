"""The readers of what the studies wrote (`covid_xray.report.files`): one per format, cached per
file and mtime, strict about predictions.csv."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from covid_xray import config, report
from tests.app_fixtures import GALLERY_ROWS, write_predictions_csv


def test_predictions_are_parsed(reports_dir):
    rows = report.load_predictions("davidnet", reports_dir)
    assert len(rows) == len(GALLERY_ROWS)
    first = rows[1]
    assert (first.file, first.true, first.predicted, first.leaked) == (
        "test/Covid/COVID-00003b.jpg",
        "Covid",
        "Normal",
        True,
    )
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert first.caption() == "COVID-19 > Normal (80.0%)"
    assert report.load_predictions("davidnet", reports_dir / "nowhere") is None


def test_malformed_predictions_are_an_error(tmp_path):
    path = tmp_path / "davidnet" / "predictions.csv"
    path.parent.mkdir()
    path.write_text("file,true,predicted\ntest/Covid/0100.jpeg,Covid,Normal\n")
    with pytest.raises(report.ReportError, match="predictions.csv"):
        report.load_predictions("davidnet", tmp_path)


def test_reports_are_reread_when_the_file_changes(tmp_path):
    path = tmp_path / "davidnet" / "predictions.csv"
    write_predictions_csv(path, [("test/Covid/0100.jpeg", "Covid", "Normal", 0)])
    assert len(report.load_predictions("davidnet", tmp_path)) == 1
    write_predictions_csv(path, [("test/Covid/0100.jpeg", "Covid", "Normal", 0)] * 2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert len(report.load_predictions("davidnet", tmp_path)) == 2


def test_confusion_images_are_arrays(reports_dir, tmp_path):
    image = report.load_confusion_image("davidnet", "official", reports_dir)
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    assert report.load_confusion_image("davidnet", "official", tmp_path) is None


def test_committed_report_files():
    report.audit_markdown()
    assert report.load_audit() is not None
    assert isinstance(report.load_examples(), tuple)
    assert Path(config.EXAMPLES_FILE).exists()
