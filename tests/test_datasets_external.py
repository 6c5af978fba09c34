"""Labelled-folder discovery and the group CSV (issue #15, item 2)."""

from __future__ import annotations

import pytest

from covid_xray.datasets_external import (
    UNGROUPED,
    LabelledFolderError,
    class_for_folder,
    discover_labelled_folder,
    read_groups,
)


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("COVID-19", "Covid"),
        ("covid", "Covid"),
        ("covid19", "Covid"),
        ("Covid_19", "Covid"),
        ("SARS-CoV-2", "Covid"),
        ("normal", "Normal"),
        ("NORMAL", "Normal"),
        ("Healthy", "Normal"),
        ("Pneumonia-Viral", "Viral Pneumonia"),
        ("viral_pneumonia", "Viral Pneumonia"),
        ("Viral Pneumonia", "Viral Pneumonia"),
        ("pneumonia", None),
        ("bacterial", None),
        ("test", None),
    ],
)
def test_folder_names_map_case_insensitively(folder, label):
    assert class_for_folder(folder) == label


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")


def test_discovery_lists_images_by_class_and_skips_hidden_and_non_images(tmp_path):
    _touch(tmp_path / "normal" / "b.png")
    _touch(tmp_path / "normal" / "patient7" / "a.jpg")
    _touch(tmp_path / "normal" / "notes.txt")
    _touch(tmp_path / "normal" / ".hidden.png")
    _touch(tmp_path / "COVID-19" / "c.jpeg")
    (tmp_path / ".DS_Store").mkdir()
    images = discover_labelled_folder(tmp_path)
    assert [(im.relpath, im.label) for im in images] == [
        ("COVID-19/c.jpeg", "Covid"),
        ("normal/b.png", "Normal"),
        ("normal/patient7/a.jpg", "Normal"),
    ]
    assert [im.label_index for im in images] == [0, 1, 1]


def test_discovery_refuses_an_empty_or_missing_folder(tmp_path):
    with pytest.raises(LabelledFolderError, match="does not exist"):
        discover_labelled_folder(tmp_path / "nope")
    with pytest.raises(LabelledFolderError, match="no subfolder at all"):
        discover_labelled_folder(tmp_path)
    (tmp_path / "normal").mkdir()
    with pytest.raises(LabelledFolderError, match="No images"):
        discover_labelled_folder(tmp_path)


def test_groups_by_relpath_or_unique_name(tmp_path):
    _touch(tmp_path / "d" / "normal" / "x.png")
    _touch(tmp_path / "d" / "covid" / "x.png")
    _touch(tmp_path / "d" / "covid" / "y.png")
    images = discover_labelled_folder(tmp_path / "d")
    csv_path = tmp_path / "g.csv"
    csv_path.write_text("File,Group\ncovid/x.png,site A\ny.png,site B\n")
    assert read_groups(csv_path, images) == {
        "covid/x.png": "site A",
        "covid/y.png": "site B",
        "normal/x.png": UNGROUPED,
    }
    csv_path.write_text("file,group\nx.png,site A\n")  # x.png is in two folders: ambiguous
    with pytest.raises(LabelledFolderError, match="name no image"):
        read_groups(csv_path, images)
    csv_path.write_text("file,site\ncovid/x.png,A\n")
    with pytest.raises(LabelledFolderError, match="columns file,group"):
        read_groups(csv_path, images)
    csv_path.write_text("file,group\ncovid/x.png,A\ncovid/x.png,B\n")
    with pytest.raises(LabelledFolderError, match="two groups"):
        read_groups(csv_path, images)
