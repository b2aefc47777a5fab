"""Measure what training-image augmentation costs a trial, against the plain tensor path.

Usage: python benchmarks/augment_cost.py [--model resnet10t] [--image-size 32] [--threads 1] [--repeats 3]

On the digits training split it times, per epoch, (a) building every training batch and
(b) a whole training epoch, for the plain path (normalization only) and for timm transforms of
growing weight. Each time is the median of ``--repeats`` epochs after one warm-up epoch. It
prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

VARIANTS = {
    "plain (no augmentation term)": {},
    "hflip 0.5": {"hflip": 0.5},
    "crop 0.5 + hflip": {"crop_scale_min": 0.5, "hflip": 0.5},
    "crop + hflip + color_jitter 0.4 + erasing 0.25": {
        "crop_scale_min": 0.5,
        "hflip": 0.5,
        "color_jitter": 0.4,
        "random_erasing_prob": 0.25,
    },
    "crop + hflip + RandAugment n2 m9 + erasing 0.25": {
        "crop_scale_min": 0.5,
        "hflip": 0.5,
        "randaugment_ops": 2,
        "randaugment_magnitude": 9,
        "random_erasing_prob": 0.25,
    },
}


def build_loop(model_name: str, image_size: int, terms: dict, data):
    from search.devices import select_device
    from search.model import build_model
    from search.preflight import IMAGENET_MEAN, IMAGENET_STD
    from search.trainable import TrialSettings, _TrainingLoop
    from spaces.terms import resolve_config

    config = resolve_config({"batch_size": 64, **terms})
    settings = TrialSettings(model_name, 3, 10, 0, 1, 0, {model_name: (IMAGENET_MEAN, IMAGENET_STD)})
    model, _ = build_model(model_name, data.num_classes, {})
    return _TrainingLoop(model, config, data, settings, model_name, select_device(0))


def time_batches(loop) -> float:
    order = np.arange(len(loop.data.train_y))
    started = time.perf_counter()
    for step in range(loop.steps_per_epoch):
        loop._train_batch(order[step * loop.batch_size : (step + 1) * loop.batch_size])
    return time.perf_counter() - started


def time_epoch(loop, epoch: int) -> float:
    started = time.perf_counter()
    loop.train_epoch(epoch)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as a trial with resources.cpus")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from search.data import load_dataset
    from search.study import DataSettings

    torch.set_num_threads(args.threads)
    data = load_dataset(DataSettings(), args.image_size, 3)
    print(
        f"{args.model} at {args.image_size} px, digits {len(data.train_y)} training images, batch 64, "
        f"{args.threads} torch thread(s), {platform.node()} ({os.cpu_count()} cores), median of {args.repeats}\n"
    )
    print("| variant | batches s/epoch | training s/epoch | epoch vs plain |")
    print("| --- | --- | --- | --- |")
    plain_epoch = None
    for name, terms in VARIANTS.items():
        loop = build_loop(args.model, args.image_size, terms, data)
        time_epoch(loop, 0)
        batches = statistics.median(time_batches(loop) for _ in range(args.repeats))
        epoch = statistics.median(time_epoch(loop, i + 1) for i in range(args.repeats))
        plain_epoch = plain_epoch or epoch
        print(f"| {name} | {batches:.3f} | {epoch:.2f} | {epoch / plain_epoch:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
