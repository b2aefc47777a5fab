"""Data sets, decoded once per study into uint8 arrays that every trial shares.

Images are stored as ``uint8`` arrays of shape (N, C, H, W) at the study's image size, so a
study decodes and resizes each image once. Ray's object store then hands the same memory to
every trial on a node without copying.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Dataset", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits as uint8 images (N, C, H, W) and int64 labels."""

    classes: tuple[str, ...]
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    # "image": uint8 (N, C, H, W) that the trainable normalizes; "features": float32, used as is.
    kind: str = "image"
    # What the data check changed or left out (conversions, skipped files), for `ftsearch validate`.
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def nbytes(self) -> int:
        arrays = (self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y)
        return sum(array.nbytes for array in arrays)

    def describe(self) -> str:
        """Return a one-line summary for logs."""
        if self.kind == "features":
            return (
                f"{self.num_classes} classes, {len(self.train_y)} train / {len(self.val_y)} "
                f"validation / {len(self.test_y)} test samples of {self.train_x.shape[1:]} features, "
                f"{self.nbytes / 2**20:.1f} MiB"
            )
        channels, height, width = self.train_x.shape[1:]
        return (
            f"{self.num_classes} classes, {len(self.train_y)} train / {len(self.val_y)} "
            f"validation / {len(self.test_y)} test images at {channels}x{height}x{width}, "
            f"{self.nbytes / 2**20:.1f} MiB"
        )


def load_dataset(data, image_size: int, in_chans: int, max_batch_size: int = 1) -> Dataset:
    """Decode, resize and split the study's data set (``data`` is its ``DataSettings``).

    ``max_batch_size`` is the largest training batch size of the space; a training split with
    fewer images is an error for image folders and CSV files.

    Raises:
        StudyError: when the data has problems (see ``search.images.load_images``).
    """
    if data.source in ("folder", "csv"):
        from search.images import load_images

        return load_images(data, image_size, in_chans, max_batch_size)
    if data.source != "digits":
        raise ValueError(f"data.source: unknown source {data.source!r}; valid sources: digits, folder, csv")
    from search.images import check_memory

    images, labels, classes = _load_digits()
    check_memory(len(labels), in_chans, image_size, data.max_memory_mb)
    images = _resize(images, image_size)
    images = _to_channels(images, in_chans)
    dataset = _split(images, labels, classes, data.val_fraction, data.test_fraction, data.seed)
    logger.info("Loaded %s: %s", data.source, dataset.describe())
    return dataset


def _load_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Return scikit-learn's bundled 8x8 digits as uint8 (N, 1, 8, 8) images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    classes = tuple(str(name) for name in digits.target_names)
    return images, digits.target.astype(np.int64), classes


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (N, C, H, W) images to (N, C, size, size) with bilinear interpolation."""
    if images.shape[-2:] == (size, size):
        return images
    import torch
    import torch.nn.functional as F

    resized = []
    for chunk in np.array_split(images, max(1, len(images) // 256)):
        tensor = torch.from_numpy(chunk).float()
        out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        resized.append(out.round_().clamp_(0, 255).to(torch.uint8).numpy())
    return np.concatenate(resized)


def _to_channels(images: np.ndarray, in_chans: int) -> np.ndarray:
    """Repeat a single grey channel to ``in_chans`` channels."""
    if images.shape[1] == in_chans:
        return np.ascontiguousarray(images)
    if images.shape[1] == 1:
        return np.ascontiguousarray(np.repeat(images, in_chans, axis=1))
    raise ValueError(f"cannot turn {images.shape[1]}-channel images into {in_chans} channels")


def _split(images, labels, classes, val_fraction, test_fraction, seed) -> Dataset:
    """Split stratified by class with a fixed seed."""
    from sklearn.model_selection import train_test_split

    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"data.val_fraction {val_fraction} + data.test_fraction {test_fraction} leave no "
            "training images; keep their sum below 1"
        )
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    val_share = val_fraction / (1.0 - test_fraction)
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=val_share, stratify=rest_y, random_state=seed
    )
    return Dataset(classes, train_x, train_y, val_x, val_y, test_x, test_y)
