"""Users' images: an image folder or a CSV file, checked and decoded once per study.

``load_images`` finds the files (``search.image_files``), stops before decoding when the
decoded arrays would exceed ``data.max_memory_mb``, decodes every file once with Pillow in a
thread pool, reports bad files, splits the images and checks the splits. Every problem it
finds is raised as one ``StudyError`` before any trial starts.

Decoding rules, applied to every image:

- EXIF orientation is applied, then the shorter side is resized to ``image_size`` (bicubic)
  and the centre is cropped to ``image_size`` x ``image_size``.
- Palette images (mode P) and images with a transparent colour are converted to RGBA first.
  Images with an alpha channel are composited on white.
- For ``in_chans: 3`` grayscale is replicated to three channels, and other modes (CMYK,
  YCbCr, ...) are converted to RGB by Pillow. For ``in_chans: 1`` colour images are converted
  to grayscale with Pillow's ITU-R 601-2 luma transform.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.image_files import SPLITS, FileTable, list_csv, list_folder, name_list
from search.study import StudyError

logger = logging.getLogger(__name__)

__all__ = ["check_memory", "decode_images", "load_images"]

# Files per task given to the thread pool, and seconds between progress lines.
CHUNK_FILES = 64
PROGRESS_SECONDS = 10.0

# Bad-file kinds, in the order they are reported, with the words that describe them.
BAD_FILE_KINDS = {
    "missing": "not found",
    "empty": "empty (0 bytes)",
    "unreadable": "not an image file Pillow can read",
    "truncated": "truncated",
    "corrupt": "corrupt (decoding failed)",
}
# The conversion rule for each source mode, shown with the conversion counts in logs and `ftsearch validate`.
RGB_RULES = {
    "1": "grayscale, replicated",
    "L": "grayscale, replicated",
    "I": "grayscale, replicated",
    "I;16": "grayscale, replicated",
    "F": "grayscale, replicated",
    "LA": "grayscale with alpha, composited on white",
    "RGBA": "composited on white",
    "P": "palette, via RGBA",
    "PA": "palette, via RGBA",
}


@dataclass(frozen=True)
class DecodedImages:
    """Decoded images (one (C, H, W) array per file, None for bad files) and what decoding found."""

    arrays: list
    bad: dict[str, list[str]]
    conversions: Counter


def load_images(data, image_size: int, in_chans: int, max_batch_size: int):
    """Check and decode the folder or CSV file of ``data`` into a ``search.data.Dataset``.

    Raises:
        StudyError: listing every problem with the data.
    """
    from search.data import Dataset

    table = list_folder(Path(data.path)) if data.source == "folder" else list_csv(Path(data.path), data)
    _warn_ignored(table)
    check_memory(len(table.files), in_chans, image_size, data.max_memory_mb)
    decoded = decode_images(table, image_size, in_chans)
    notes = _bad_file_notes(decoded.bad, data.on_bad_file, table.root)
    notes += _conversion_notes(decoded.conversions, in_chans)
    keep = [index for index, array in enumerate(decoded.arrays) if array is not None]
    labels = np.array([table.files[index].label for index in keep], dtype=np.int64)
    given = [table.files[index].split for index in keep]
    splits = assign_splits(labels, given, table, data)
    _check_splits(splits, labels, table, max_batch_size)

    arrays = [decoded.arrays[index] for index in keep]
    decoded.arrays.clear()
    parts = {split: _stack(arrays, indices, in_chans, image_size) for split, indices in splits.items()}
    dataset = Dataset(
        table.classes,
        parts["train"],
        labels[splits["train"]],
        parts["val"],
        labels[splits["val"]],
        parts["test"],
        labels[splits["test"]],
        notes=tuple(notes),
    )
    logger.info("Loaded %s %s: %s", data.source, table.root, dataset.describe())
    return dataset


def check_memory(count: int, in_chans: int, image_size: int, max_memory_mb: float) -> None:
    """Raise StudyError when ``count`` decoded images would need more than ``max_memory_mb`` MiB."""
    needed = count * in_chans * image_size * image_size
    limit = max_memory_mb * 2**20
    if needed <= limit:
        return
    fitting_size = math.isqrt(int(limit // max(1, count * in_chans)))
    fitting_count = int(limit // (in_chans * image_size * image_size))
    raise StudyError(
        f"data.max_memory_mb: the decoded images need {needed / 2**20:.1f} MiB ({count} images x "
        f"{in_chans} channels x {image_size} x {image_size} bytes), more than data.max_memory_mb "
        f"{max_memory_mb:g}; lower model.image_size (at most {fitting_size} px fits), use at most "
        f"{fitting_count} images, or raise data.max_memory_mb if every node has that much memory"
    )


def decode_images(table: FileTable, image_size: int, in_chans: int, workers: int | None = None) -> DecodedImages:
    """Decode every file of ``table`` in a thread pool; Pillow releases the GIL while it decodes.

    ``workers`` is the number of threads, by default the number of CPUs up to 8.
    """
    files = table.files
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    logger.info(
        "Decoding %d images from %s at %dx%d with %d threads", len(files), table.root, image_size, image_size, workers
    )
    chunks = [files[start : start + CHUNK_FILES] for start in range(0, len(files), CHUNK_FILES)]
    arrays: list = []
    bad: dict[str, list[str]] = {}
    conversions: Counter = Counter()
    started = last_log = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda chunk: [_decode_file(f.path, image_size, in_chans) for f in chunk], chunks)
        for chunk, chunk_results in zip(chunks, results):
            for file, (array, mode, kind) in zip(chunk, chunk_results):
                arrays.append(array)
                if kind is not None:
                    bad.setdefault(kind, []).append(file.name)
                elif mode not in _unconverted_modes(in_chans):
                    conversions[mode] += 1
            now = time.monotonic()
            if now - last_log >= PROGRESS_SECONDS:
                last_log = now
                logger.info("Decoded %d of %d images (%.0f%%)", len(arrays), len(files), 100 * len(arrays) / len(files))
    logger.info("Decoded %d images in %.1f s", len(files), time.monotonic() - started)
    return DecodedImages(arrays, bad, conversions)


def _unconverted_modes(in_chans: int) -> tuple[str, ...]:
    return ("L",) if in_chans == 1 else ("RGB",)


def _decode_file(path: Path, image_size: int, in_chans: int):
    """Return (array or None, the file's image mode, bad-file kind or None)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return None, None, "empty"
    except FileNotFoundError:
        return None, None, "missing"
    try:
        with Image.open(path) as image:
            mode = image.mode
            image.draft(None, (image_size, image_size))  # JPEG only: decode at a reduced scale.
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _convert(image, in_chans)
            image = ImageOps.fit(image, (image_size, image_size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        return None, None, "unreadable"
    except OSError as error:
        if "truncated" in str(error):
            return None, None, "truncated"
        logger.debug("Failed to decode %s: %s", path, error)
        return None, None, "corrupt"
    except (SyntaxError, ValueError, Image.DecompressionBombError) as error:
        logger.debug("Failed to decode %s: %s", path, error)
        return None, None, "corrupt"
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array), mode, None


def _convert(image, in_chans: int):
    """Convert ``image`` to L or RGB by the rules in the module docstring."""
    from PIL import Image

    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # NOTE: Pillow clips 16-bit and float pixels to 0..255 here; it does not rescale them.
        image = image.convert("L")
    target = "L" if in_chans == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def assign_splits(labels: np.ndarray, given: list[str | None], table: FileTable, data) -> dict[str, np.ndarray]:
    """Return the image indices of each split: given splits as they are, missing ones carved from train.

    A missing test split takes ``data.test_fraction`` of the training images, then a missing
    validation split takes ``data.val_fraction`` of them, both stratified with ``data.seed``.
    """
    indices = np.arange(len(labels))
    if table.given_splits:
        given_array = np.array(given, dtype=object)
        splits = {split: indices[given_array == split] for split in SPLITS}
    else:
        splits = {"train": indices, "val": indices[:0], "test": indices[:0]}
    train_count = len(splits["train"])
    for split, fraction in (("test", data.test_fraction), ("val", data.val_fraction)):
        if split in table.given_splits:
            continue
        share = fraction * train_count / len(splits["train"]) if len(splits["train"]) else fraction
        splits["train"], splits[split] = _carve(splits["train"], labels, min(share, 0.9), data.seed, split)
    return splits


def _carve(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, split: str):
    from sklearn.model_selection import train_test_split

    try:
        rest, carved = train_test_split(indices, test_size=fraction, stratify=labels[indices], random_state=seed)
    except ValueError as error:
        raise StudyError(
            f"data: cannot carve the {split} split from {len(indices)} training images stratified by "
            f"class ({error}); add images to the smallest classes, raise data.{split}_fraction, or give "
            f"a {split} folder or CSV split"
        ) from None
    return np.sort(rest), np.sort(carved)


def _check_splits(splits: dict[str, np.ndarray], labels: np.ndarray, table: FileTable, max_batch_size: int) -> None:
    """Raise StudyError when a class is missing from a split or the train split is smaller than a batch."""
    problems = []
    for split in SPLITS:
        present = set(labels[splits[split]].tolist())
        missing = [name for index, name in enumerate(table.classes) if index not in present]
        if missing:
            problems.append(
                f"data: classes missing from the {split} split: {name_list(missing)}; every class "
                f"needs images in train, val and test (given splits: {', '.join(table.given_splits) or 'none'}); "
                "add images of these classes to that split, or remove the classes"
            )
    train_count = len(splits["train"])
    if train_count < max_batch_size:
        problems.append(
            f"data: the train split has {train_count} images, fewer than the largest batch_size "
            f"{max_batch_size} in the space; lower space.batch_size to at most {train_count} or add images"
        )
    if problems:
        raise StudyError(problems)


def _stack(arrays: list, indices: np.ndarray, in_chans: int, image_size: int) -> np.ndarray:
    """Copy the arrays at ``indices`` into one (N, C, H, W) array, releasing each source array."""
    out = np.empty((len(indices), in_chans, image_size, image_size), dtype=np.uint8)
    for row, index in enumerate(indices):
        out[row] = arrays[index]
        arrays[index] = None
    return out


def _warn_ignored(table: FileTable) -> None:
    if table.hidden:
        logger.warning(
            "Ignored %s (names starting with '.') in %s: %s",
            _count(len(table.hidden), "hidden file or folder", "hidden files and folders"),
            table.root,
            name_list(table.hidden),
        )
    if table.not_images:
        logger.warning(
            "Ignored %s in %s: %s",
            _count(len(table.not_images), "file that is not an image in a class folder", "files that are not images in a class folder"),
            table.root,
            name_list(table.not_images),
        )


def _count(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def _bad_file_notes(bad: dict[str, list[str]], on_bad_file: str, root: Path) -> list[str]:
    """Raise StudyError for bad files, or return a note on the skipped ones when the study skips them."""
    if not bad:
        return []
    kinds = [kind for kind in BAD_FILE_KINDS if kind in bad]
    if on_bad_file == "error":
        problems = []
        for kind in kinds:
            names = bad[kind]
            are = "is" if len(names) == 1 else "are"
            problems.append(
                f"data: {len(names)} image file{'s' if len(names) != 1 else ''} in {root} {are} "
                f"{BAD_FILE_KINDS[kind]}: {name_list(names)}; replace or remove them, or set "
                "data.on_bad_file: skip to leave them out"
            )
        raise StudyError(problems)
    total = sum(len(bad[kind]) for kind in kinds)
    parts = [f"{len(bad[kind])} {BAD_FILE_KINDS[kind]} ({name_list(bad[kind])})" for kind in kinds]
    note = f"skipped {_count(total, 'bad image file', 'bad image files')} (data.on_bad_file: skip): {'; '.join(parts)}"
    logger.warning("%s%s", note[0].upper(), note[1:])
    return [note]


def _conversion_notes(conversions: Counter, in_chans: int) -> list[str]:
    if not conversions:
        return []
    if in_chans == 1:
        parts = [f"{count} {mode}" for mode, count in sorted(conversions.items())]
        note = f"converted to grayscale (L): {', '.join(parts)}"
    else:
        parts = [
            f"{count} {mode} ({RGB_RULES.get(mode, 'converted by Pillow')})" for mode, count in sorted(conversions.items())
        ]
        note = f"converted to RGB: {', '.join(parts)}"
        if set(conversions) <= {"1", "L", "I", "I;16", "F"}:
            note += "; set model.in_chans: 1 to train on one channel"
    logger.info("%s%s", note[0].upper(), note[1:])
    return [note]
