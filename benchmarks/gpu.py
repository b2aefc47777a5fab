"""Measure a trial's GPU path: training throughput, model-FLOPs utilization and trial packing.

Usage:
    python benchmarks/gpu.py [--model resnet50] [--image-size 224] [--batch 128] [--steps 30]
                             [--peak-tflops 790] [--packing-trials 8] [--device cuda]

1. Throughput: the trial's own training loop (``search.trainable._TrainingLoop`` on the device
   that ``search.devices.select_device`` picks: bf16 autocast, channels-last, pinned memory)
   trains ``--model`` on random uint8 images for ``--steps`` steps after 5 warm-up steps. It
   prints images per second and the model-FLOPs utilization (MFU). MFU is the FLOPs of one
   training step times the steps per second, over ``--peak-tflops``. torch's
   ``FlopCounterMode`` counts the FLOPs on the first step. The default of 790 TFLOP/s is the
   bf16 peak that ftsearch's benchmark goal names; give the peak of the GPU you run on.
2. Packing: the same small study (resnet10t at 32 px on digits, 1 epoch per trial) runs
   ``--packing-trials`` trials with ``resources.gpus: 1`` (one trial on the GPU at a time) and
   with ``resources.gpus: 0.25`` (four at a time). It prints both wall times and their ratio.

``--device cpu`` runs both parts on the CPU with small settings, to check the script itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def measure_throughput(model_name: str, image_size: int, batch: int, steps: int, gpus: float) -> dict:
    """Train ``model_name`` through the trial's loop and return images/s and FLOPs per step."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from search.data import Dataset
    from search.devices import select_device
    from search.trainable import TrialSettings, _TrainingLoop
    from spaces.terms import resolve_config

    warmup = 5
    rng = np.random.default_rng(0)
    count = batch * (steps + warmup)
    images = rng.integers(0, 256, (count, 3, image_size, image_size), dtype=np.uint8)
    labels = rng.integers(0, 1000, count).astype(np.int64)
    classes = tuple(str(index) for index in range(1000))
    dataset = Dataset(classes, images, labels, images[:batch], labels[:batch], images[:0], labels[:0])
    settings = TrialSettings(model_name, 3, 1, 0, os.cpu_count() or 1, gpus, {model_name: ((0.5,) * 3, (0.5,) * 3)})
    config = resolve_config({"batch_size": batch, "lr": 1e-3, "weight_decay": 0.01})

    runtime = select_device(gpus)
    model = timm.create_model(model_name, num_classes=1000)
    runtime.prepare_model(model)
    loop = _TrainingLoop(model, config, dataset, settings, model_name, runtime)
    loop.model.train()

    def step(index: int) -> None:
        x, y = loop._train_batch(np.arange(index * batch, (index + 1) * batch))
        loop._train_step(x, y, 0, index)

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops_per_step = counter.get_total_flops()
    for index in range(1, warmup):
        step(index)
    if runtime.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for index in range(warmup, warmup + steps):
        step(index)
    if runtime.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"device": runtime.describe(), "images_per_s": batch * steps / seconds, "flops_per_step": flops_per_step,
            "steps_per_s": steps / seconds}


def measure_packing(trials: int, gpus_each: float, concurrency: int, folder: Path) -> float:
    """Run a small study of ``concurrency`` trials at once, ``gpus_each`` GPUs each; return its wall time."""
    from search.runner import run
    from search.study import Study

    study = Study.from_dict(
        {
            "name": f"packing_{concurrency}",
            "model": {"name": "resnet10t", "image_size": 32},
            "budget": {"trials": trials, "max_epochs": 1},
            "search": {"concurrency": concurrency, "scheduler": "none", "sampler": "random"},
            "resources": {"cpus": 1, "gpus": gpus_each},
            "space": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}, "batch_size": 64},
        }
    )
    started = time.perf_counter()
    run(study, run_dir=folder / study.name, progress=False)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224, help="training image size in px")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps after 5 warm-up steps")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's peak bf16 TFLOP/s for MFU")
    parser.add_argument("--packing-trials", type=int, default=8)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()

    cpu = args.device == "cpu"
    if cpu:
        args.model, args.image_size, args.batch, args.steps, args.packing_trials = "resnet10t", 32, 8, 3, 2
    elif not torch.cuda.is_available():
        print("no CUDA device is visible to torch; run with --device cpu to check the script", file=sys.stderr)
        return 1

    found = measure_throughput(args.model, args.image_size, args.batch, args.steps, 0 if cpu else 1)
    mfu = found["flops_per_step"] * found["steps_per_s"] / (args.peak_tflops * 1e12)
    name = "CPU" if cpu else torch.cuda.get_device_name(0)
    print(f"Machine: {platform.node()}, {name}, torch {torch.__version__}")
    print("\n| benchmark | measured | value |\n| --- | --- | --- |")
    print(
        f"| throughput | {args.model} at {args.image_size} px, batch {args.batch}, {found['device']}: "
        f"{found['flops_per_step'] / 1e9:.1f} GFLOP per step | {found['images_per_s']:.0f} images/s |"
    )
    print(f"| MFU | against {args.peak_tflops:g} TFLOP/s | {mfu:.1%} |")

    with tempfile.TemporaryDirectory(prefix="ftsearch-gpu-") as folder:
        # On the CPU check, two trials at once stand in for four on one GPU.
        one_at_a_time = measure_packing(args.packing_trials, 0 if cpu else 1, 1, Path(folder))
        packed = measure_packing(args.packing_trials, 0 if cpu else 0.25, 2 if cpu else 4, Path(folder))
    print(
        f"| packing | {args.packing_trials} trials of resnet10t at 32 px: one trial at a time {one_at_a_time:.1f} s, "
        f"{2 if cpu else 4} at a time {packed:.1f} s | {one_at_a_time / packed:.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
