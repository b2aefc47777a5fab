"""Finding users' image files: an image folder of class folders, or a CSV file of path and label.

An image folder contains one sub-folder per class, either directly or inside ``train/``, ``val/``
and ``test/`` split folders. That layout requires ``train/``, and a missing ``val/`` or
``test/`` is carved from ``train/``. Class folders may nest; every file below one belongs to
that class. Names starting with '.' (``.DS_Store``, ``.ipynb_checkpoints``) are ignored, and so
are files without an image file extension that Pillow knows.

A CSV file has a header row, a path column and a label column, and optionally a split column
(train, val or test). Paths are relative to the CSV file's folder unless absolute.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from search.study import StudyError

__all__ = ["SPLITS", "FileTable", "ImageFile", "list_csv", "list_folder", "name_list"]

SPLITS = ("train", "val", "test")
SHOWN_NAMES = 5


@dataclass(frozen=True)
class ImageFile:
    """One image: its path, its name in messages, its class index and its given split (or None)."""

    path: Path
    name: str
    label: int
    split: str | None = None


@dataclass
class FileTable:
    """The image files of a data set, its classes, its given splits and the ignored files."""

    root: Path
    classes: tuple[str, ...]
    files: list[ImageFile]
    given_splits: tuple[str, ...] = ()
    hidden: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)


def name_list(names: list[str], shown: int = SHOWN_NAMES) -> str:
    """Return the first ``shown`` names joined with commas, and how many more there are."""
    text = ", ".join(names[:shown])
    if len(names) > shown:
        text += f" and {len(names) - shown} more"
    return text


def _image_extensions() -> frozenset[str]:
    from PIL import Image

    Image.init()
    return frozenset(extension.lower() for extension in Image.registered_extensions())


def _hidden(name: str) -> bool:
    return name.startswith(".")


def list_folder(root: Path) -> FileTable:
    """List the images of an image folder.

    Raises:
        StudyError: when the folder is missing, contains no class folders, mixes split folders
            with class folders, has empty class folders, or has a class missing from a split.
    """
    if not root.exists():
        raise StudyError(
            f"data.path: folder {str(root)!r} not found; give the folder that contains one sub-folder "
            "per class (a relative path is read from the study file's folder)"
        )
    if not root.is_dir():
        raise StudyError(
            f"data.path: {str(root)!r} is not a folder; data.source folder reads a folder of class "
            "folders (for a CSV file set data.source: csv)"
        )
    table = FileTable(root, (), [])
    folders = _sub_folders(root, "", table)
    split_folders = [name for name in folders if name in SPLITS]
    if split_folders:
        _check_split_layout(root, folders, split_folders)
        layout = {split: _sub_folders(root / split, split, table) for split in SPLITS if split in folders}
    else:
        layout = {None: folders}
    problems = _check_class_folders(root, layout)
    if problems:
        raise StudyError(problems)
    classes = sorted({name for names in layout.values() for name in names})
    table.classes = tuple(classes)
    table.given_splits = tuple(split for split in SPLITS if split in layout)
    extensions = _image_extensions()
    empty = []
    for split, names in layout.items():
        for class_name in names:
            prefix = f"{split}/{class_name}" if split else class_name
            count = _add_class_files(root / prefix, prefix, classes.index(class_name), split, extensions, table)
            if count == 0:
                empty.append(prefix)
    if empty:
        raise StudyError(
            f"data.path: {len(empty)} class folder{'s' if len(empty) != 1 else ''} in {root} "
            f"{'has' if len(empty) == 1 else 'have'} no image files: {name_list(empty)}; add images "
            "or remove the folders"
        )
    return table


def _sub_folders(folder: Path, prefix: str, table: FileTable) -> list[str]:
    """Return the sorted names of ``folder``'s visible sub-folders, noting hidden and loose entries."""
    names = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        shown = f"{prefix}/{entry.name}" if prefix else entry.name
        if _hidden(entry.name):
            table.hidden.append(shown)
        elif entry.is_dir():
            names.append(entry.name)
        else:
            # A file beside the class folders belongs to no class.
            table.not_images.append(shown)
    return names


def _check_split_layout(root: Path, folders: list[str], split_folders: list[str]) -> None:
    others = [name for name in folders if name not in SPLITS]
    problems = []
    if others:
        problems.append(
            f"data.path: {root} mixes split folders ({', '.join(split_folders)}) with other folders "
            f"({name_list(others)}); put the class folders inside train/, val/ and test/, or use "
            "class folders only and let data.val_fraction and data.test_fraction split them"
        )
    if "train" not in split_folders:
        problems.append(
            f"data.path: {root} has {', '.join(split_folders)} but no train folder; add train/ "
            "with one sub-folder per class"
        )
    if problems:
        raise StudyError(problems)


def _check_class_folders(root: Path, layout: dict[str | None, list[str]]) -> list[str]:
    problems = []
    for split, names in layout.items():
        if not names:
            where = root / split if split else root
            problems.append(
                f"data.path: no class folders in {where}; put the images of each class in their "
                f"own sub-folder, such as {where / 'cat' / '1.jpg'}"
            )
    if problems:
        return problems
    classes = sorted({name for names in layout.values() for name in names})
    if len(classes) < 2:
        problems.append(
            f"data.path: only one class ({', '.join(classes)}) in {root}; a classifier needs at "
            "least 2 class folders"
        )
    for split, names in layout.items():
        missing = [name for name in classes if name not in names]
        if missing:
            having = [other for other in layout if other != split and set(missing) & set(layout[other])]
            problems.append(
                f"data.path: classes missing from the {split} split: {name_list(missing)} (found in "
                f"{', '.join(having)}); add {split}/<class> folders with images, or remove these "
                "classes from every split"
            )
    return problems


def _add_class_files(folder: Path, prefix: str, label: int, split, extensions, table: FileTable) -> int:
    """Add every image file below ``folder`` to ``table`` and return how many were added."""
    count = 0
    for current, dirs, files in os.walk(folder):
        relative = Path(current).relative_to(folder).as_posix()
        base = prefix if relative == "." else f"{prefix}/{relative}"
        for name in sorted(dirs):
            if _hidden(name):
                table.hidden.append(f"{base}/{name}")
        dirs[:] = sorted(name for name in dirs if not _hidden(name))
        for name in sorted(files):
            shown = f"{base}/{name}"
            if _hidden(name):
                table.hidden.append(shown)
            elif Path(name).suffix.lower() not in extensions:
                table.not_images.append(shown)
            else:
                table.files.append(ImageFile(Path(current) / name, shown, label, split))
                count += 1
    return count


def list_csv(path: Path, data) -> FileTable:
    """List the images of a CSV file of path and label (and optionally split) columns.

    Raises:
        StudyError: when the file is missing or unreadable, a column is missing, or rows have
            an empty path or label or an unknown split.
    """
    rows, columns = _read_csv(path)
    path_column = data.path_column or "path"
    label_column = data.label_column or "label"
    problems = []
    for key, column in (("path_column", path_column), ("label_column", label_column), ("split_column", data.split_column)):
        if column is not None and column not in columns:
            problems.append(
                f"data.{key}: column {column!r} not found in {path} (columns: {', '.join(columns)}); "
                f"set data.{key} to one of its columns"
            )
    if problems:
        raise StudyError(problems)
    if not rows:
        raise StudyError(f"data.path: {path} has a header but no rows; add one row per image")

    blank, bad_splits = [], []
    entries = []
    for line, row in enumerate(rows, start=2):
        image, label = (row.get(path_column) or "").strip(), (row.get(label_column) or "").strip()
        split = (row.get(data.split_column) or "").strip() if data.split_column else None
        if not image or not label:
            blank.append(f"line {line}")
        elif split is not None and split not in SPLITS:
            bad_splits.append(f"line {line} ({split!r})")
        else:
            entries.append((image, label, split))
    if blank:
        problems.append(
            f"data.path: {len(blank)} row{'s' if len(blank) != 1 else ''} of {path} with an empty "
            f"{path_column} or {label_column}: {name_list(blank)}; fill them in or remove them"
        )
    if bad_splits:
        problems.append(
            f"data.split_column: {len(bad_splits)} rows of {path} with an unknown split: "
            f"{name_list(bad_splits)}; valid splits: {', '.join(SPLITS)}"
        )
    labels = sorted({label for _, label, _ in entries}, key=_label_order)
    given = tuple(split for split in SPLITS if any(entry[2] == split for entry in entries))
    if entries and len(labels) < 2:
        problems.append(f"data.label_column: only one label ({labels[0]}) in {path}; a classifier needs at least 2 classes")
    if data.split_column and entries and "train" not in given:
        problems.append(
            f"data.split_column: no row of {path} is in the train split; mark the training rows train"
        )
    if problems:
        raise StudyError(problems)

    index = {label: position for position, label in enumerate(labels)}
    files = []
    for image, label, split in entries:
        file_path = Path(image).expanduser()
        if not file_path.is_absolute():
            file_path = path.parent / file_path
        files.append(ImageFile(file_path, image, index[label], split))
    return FileTable(path, tuple(labels), files, given_splits=given)


def _read_csv(path: Path) -> tuple[list[dict], list[str]]:
    if path.is_dir():
        raise StudyError(
            f"data.path: {str(path)!r} is a folder; data.source csv reads a CSV file (for a folder "
            "of class folders set data.source: folder)"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise StudyError(
            f"data.path: CSV file {str(path)!r} not found; give the CSV file of path and label "
            "columns (a relative path is read from the study file's folder)"
        ) from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise StudyError(f"data.path: cannot read {path} as a UTF-8 CSV file ({error}); save it as UTF-8 CSV") from None
    if not columns:
        raise StudyError(f"data.path: {path} is empty; write a header row (such as path,label) and one row per image")
    return rows, columns


def _label_order(label: str):
    """Sort integer labels by value (2 before 10) and other labels as text, integers first."""
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)
