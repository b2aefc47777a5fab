"""Writers of small image folders and CSV files for the data tests (PIL, no downloads)."""

from pathlib import Path

import numpy as np
from PIL import Image

# One clearly different colour per class, so a tiny model can learn them in an epoch.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 200, 40)]


def class_image(label: int, index: int, size=(40, 32), mode="RGB") -> Image.Image:
    """Return a noisy image of class ``label`` with width and height ``size``."""
    rng = np.random.default_rng(1000 * label + index)
    width, height = size
    pixels = np.array(COLOURS[label], dtype=float) + rng.normal(0, 25, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image if mode == "RGB" else image.convert(mode)


def write_class_folders(root: Path, counts: dict[str, int], mode="RGB", suffix=".png") -> Path:
    """Write ``counts[name]`` images into ``root/name/`` for each class and return ``root``."""
    for label, (name, count) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            class_image(label, index, mode=mode).save(folder / f"{index:03d}{suffix}")
    return root


def write_truncated(path: Path) -> None:
    """Write the first half of a valid PNG."""
    class_image(0, 99).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def folder_study(path, **data_settings) -> dict:
    """Return a tiny study dict that reads the image folder ``path``, 20% each for val and test."""
    from tests.conftest import tiny_study_dict

    return tiny_study_dict(
        name="folder",
        data={"source": "folder", "path": str(path), "val_fraction": 0.2, "test_fraction": 0.2, **data_settings},
        space={"batch_size": 2},
    )
