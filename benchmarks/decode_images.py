"""Time decoding an image folder into the study's uint8 arrays, with 1 thread and with more.

Usage: python benchmarks/decode_images.py [--images 2000] [--width 400] [--height 300] [--size 64]

Writes a temporary folder of random-noise JPEG files (quality 90) in 4 class folders, then
decodes it with ``search.images.decode_images`` at ``--size`` px, once per thread count. It
prints Markdown table rows: threads, images, seconds, images per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from search.image_files import list_folder
from search.images import decode_images


def write_folder(root: Path, count: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / f"class{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        # Smooth noise compresses like a photograph more than white noise does.
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
        image.save(folder / f"{index:06d}.jpg", quality=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--height", type=int, default=300)
    parser.add_argument("--size", type=int, default=64, help="decoded image size in px")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ftsearch-decode-") as folder:
        root = Path(folder)
        write_folder(root, args.images, args.width, args.height)
        table = list_folder(root)
        cpus = os.cpu_count() or 1
        print(f"{platform.processor() or platform.machine()}, {cpus} CPUs; {args.width}x{args.height} JPEG -> {args.size} px")
        print("| threads | images | seconds | images/s |")
        print("| --- | --- | --- | --- |")
        for workers in sorted({1, min(8, cpus)}):
            started = time.perf_counter()
            decode_images(table, args.size, 3, workers=workers)
            seconds = time.perf_counter() - started
            print(f"| {workers} | {args.images} | {seconds:.2f} | {args.images / seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
