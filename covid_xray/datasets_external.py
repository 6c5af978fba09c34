"""A user's own labelled films: one subfolder per class, plus an optional per-image group CSV.

Layout (folder names matched case-insensitively, ignoring spaces, `-` and `_`)::

    DIR/COVID-19/<images>      (or covid, covid19, covid_19, sars-cov-2, ...)
    DIR/normal/<images>        (or healthy)
    DIR/Pneumonia-Viral/<images>  (or viral_pneumonia, viral, ...)

Images may sit in nested folders below a class folder (e.g. one per patient). A folder with
another name is refused: a plain "pneumonia" folder is ambiguous (bacterial or viral), and a
silently skipped folder would change the scores without anyone noticing.

Groups CSV: columns `file,group`; `file` is the image's path relative to DIR (forward
slashes, e.g. `normal/0001.png`) or its bare file name when that is unique in DIR.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from covid_xray.config import CLASS_DISPLAY_NAMES, CLASS_NAMES

# Normalised folder name (lower case, only letters and digits) -> class.
CLASS_ALIASES: dict[str, str] = {
    "covid": "Covid",
    "covid19": "Covid",
    "sarscov2": "Covid",
    "normal": "Normal",
    "healthy": "Normal",
    "viralpneumonia": "Viral Pneumonia",
    "pneumoniaviral": "Viral Pneumonia",
    "viral": "Viral Pneumonia",
}
# Spellings shown to people in the refusal message, per class.
ACCEPTED_NAMES: dict[str, tuple[str, ...]] = {
    "Covid": ("Covid", "COVID-19", "covid19", "covid_19", "SARS-CoV-2"),
    "Normal": ("Normal", "healthy"),
    "Viral Pneumonia": ("Viral Pneumonia", "viral_pneumonia", "Pneumonia-Viral", "viral"),
}
GROUPS_COLUMNS = ("file", "group")
UNGROUPED = "(no group)"


class LabelledFolderError(ValueError):
    """The labelled folder or its group CSV cannot be used as given (message for people)."""


@dataclass(frozen=True)
class LabelledImage:
    """One image of a labelled folder: its file, class and folder-relative path."""

    path: Path
    label: str
    relpath: str

    @property
    def label_index(self) -> int:
        return CLASS_NAMES.index(self.label)


def normalise_folder_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def class_for_folder(name: str) -> str | None:
    """The class a folder name stands for (`CLASS_NAMES` spelling), or None when unknown."""
    return CLASS_ALIASES.get(normalise_folder_name(name))


def accepted_names_text() -> str:
    return "; ".join(f"{CLASS_DISPLAY_NAMES[c]}: {', '.join(ACCEPTED_NAMES[c])}" for c in CLASS_NAMES)


def _is_image(path: Path) -> bool:
    from covid_xray.data import IMAGE_EXTENSIONS

    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def discover_labelled_folder(folder: str | os.PathLike) -> list[LabelledImage]:
    """List the images of `folder` (one subfolder per class), sorted by class then path.

    Raises:
        LabelledFolderError: the folder is missing, has no class subfolder, has a subfolder
            whose name is not a known class, or holds no image at all.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LabelledFolderError(f"Labelled folder {root} does not exist or is not a folder.")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in subfolders if class_for_folder(p.name) is None]
    if unknown or not subfolders:
        found = ", ".join(repr(n) for n in unknown) if unknown else "no subfolder at all"
        hint = ""
        if {normalise_folder_name(n) for n in unknown} & {"train", "test"}:
            hint = (
                " It looks like the Kaggle dataset root: its test split is evaluated by the same "
                "command without --name."
            )
        raise LabelledFolderError(
            f"Cannot evaluate {root}: it must hold one subfolder per class, and found {found}. "
            f"Accepted folder names (case, spaces, '-' and '_' do not matter): {accepted_names_text()}. "
            "Rename or move the other folders (a plain 'pneumonia' folder is ambiguous: bacterial "
            f"or viral).{hint}"
        )
    images: list[LabelledImage] = []
    for sub in subfolders:
        label = class_for_folder(sub.name)
        for path in sorted(sub.rglob("*")):
            if _is_image(path) and not any(part.startswith(".") for part in path.relative_to(root).parts):
                images.append(LabelledImage(path, label, path.relative_to(root).as_posix()))
    if not images:
        raise LabelledFolderError(
            f"No images in the class folders of {root} (looked for .png, .jpg, .dcm, ...)."
        )
    return sorted(images, key=lambda im: (im.label_index, im.relpath))


def read_groups(path: str | os.PathLike, images: list[LabelledImage]) -> dict[str, str]:
    """Map each image's relpath to its group from a `file,group` CSV (`UNGROUPED` if absent).

    Raises:
        LabelledFolderError: missing columns, a row naming no image of the folder (or an
            ambiguous bare file name), or one image given two groups.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise LabelledFolderError(f"Group file {path} does not exist.")
    by_relpath = {im.relpath: im.relpath for im in images}
    names = Counter(Path(im.relpath).name for im in images)
    by_name = {Path(im.relpath).name: im.relpath for im in images if names[Path(im.relpath).name] == 1}
    groups: dict[str, str] = {}
    unmatched: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        if not set(GROUPS_COLUMNS) <= set(columns):
            raise LabelledFolderError(
                f"Group file {path} must have the columns {','.join(GROUPS_COLUMNS)} "
                f"(found {','.join(reader.fieldnames or []) or 'none'})."
            )
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            key = row["file"].replace("\\", "/").removeprefix("./")
            relpath = by_relpath.get(key) or by_name.get(key)
            if relpath is None:
                unmatched.append(row["file"])
                continue
            if relpath in groups and groups[relpath] != row["group"]:
                raise LabelledFolderError(
                    f"Group file {path} gives {relpath} two groups ({groups[relpath]!r}, {row['group']!r})."
                )
            groups[relpath] = row["group"] or UNGROUPED
    if unmatched:
        shown = ", ".join(repr(u) for u in unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise LabelledFolderError(
            f"Group file {path}: {len(unmatched)} row(s) name no image of the folder ({shown}). Use the "
            "path relative to the folder (e.g. 'normal/0001.png'), or the bare file name when it is unique."
        )
    return {im.relpath: groups.get(im.relpath, UNGROUPED) for im in images}
