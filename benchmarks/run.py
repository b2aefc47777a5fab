"""Benchmarks of ftsearch's engine, each reported as a ratio measured side by side in one run.

Usage:
    python benchmarks/run.py [--quick] [--only NAME ...]

Prints one Markdown table row per benchmark: name, what was measured, the ratio and its goal.
``--quick`` shortens every benchmark so that all of them finish in a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402

from benchmarks.decode_images import write_folder  # noqa: E402
from benchmarks.search_efficiency import bench_digits, bench_tabular, format_ratio, print_table  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _tiny_study(name: str, trials: int, concurrency: int, image_size: int, extra_space=None):
    from search.study import Study

    space = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}, "batch_size": 64}
    space.update(extra_space or {})
    return Study.from_dict(
        {
            "name": name,
            "model": {"name": "resnet10t", "image_size": image_size},
            "budget": {"trials": trials, "max_epochs": 1},
            "search": {"concurrency": concurrency, "scheduler": "none", "sampler": "random"},
            "resources": {"cpus": 1},
            "space": space,
        }
    )


def bench_training_step(quick: bool) -> dict:
    """Time a trial's training step against a bare timm loop on the same model, batch and threads."""
    import timm
    from timm.optim import create_optimizer_v2

    from search.data import load_dataset
    from search.study import DataSettings
    from search.devices import select_device
    from search.trainable import TrialSettings, _TrainingLoop
    from spaces.terms import resolve_config

    threads, batch, size = 1, 64, 32
    torch.set_num_threads(threads)
    dataset = load_dataset(DataSettings(), size, 3)
    # Only full batches: the digits training split has 19 of them.
    steps = min(10 if quick else 19, len(dataset.train_y) // batch)
    settings = TrialSettings("resnet10t", 3, 1, 0, threads, 0, {"resnet10t": ((0.5,) * 3, (0.5,) * 3)})
    config = resolve_config({"batch_size": batch, "lr": 1e-3, "weight_decay": 0.01, "label_smoothing": 0.0})

    def ftsearch_step_time() -> float:
        torch.manual_seed(0)
        model = timm.create_model("resnet10t", num_classes=10)
        loop = _TrainingLoop(model, config, dataset, settings, "resnet10t", select_device(0))
        loop.steps_per_epoch = steps
        started = time.perf_counter()
        loop.train_epoch(0)
        return (time.perf_counter() - started) / steps

    def bare_step_time() -> float:
        torch.manual_seed(0)
        model = timm.create_model("resnet10t", num_classes=10)
        optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.01)
        loss_fn = torch.nn.CrossEntropyLoss()
        images = (torch.from_numpy(dataset.train_x[: batch * steps]).float() / 255 - 0.5) / 0.5
        labels = torch.from_numpy(dataset.train_y[: batch * steps])
        model.train()
        started = time.perf_counter()
        for step in range(steps):
            x, y = images[step * batch : (step + 1) * batch], labels[step * batch : (step + 1) * batch]
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps

    ours, bare = [], []
    for _ in range(3 if quick else 5):  # interleaved, so drift in machine load hits both alike
        ours.append(ftsearch_step_time())
        bare.append(bare_step_time())
    ratio = statistics.median(ours) / statistics.median(bare)
    return {
        "name": "training step",
        "measured": (
            f"resnet10t {size} px, batch {batch}, {threads} thread: ftsearch "
            f"{statistics.median(ours) * 1000:.1f} ms vs bare timm loop {statistics.median(bare) * 1000:.1f} ms per step"
        ),
        "ratio": ratio,
        "goal": "<= 1.05",
    }


def _run_study(study, folder: Path):
    from search.runner import run

    started = time.perf_counter()
    result = run(study, run_dir=folder / study.name, progress=False)
    wall = time.perf_counter() - started
    return result, wall


def _trial_spans(run_dir: Path) -> list[tuple[float, float]]:
    """Return each trial's (start, end) Unix time inside the trainable, as Ray Tune recorded it."""
    import json

    spans = []
    for result_file in sorted((run_dir / "tune").glob("trial_*/result.json")):
        lines = [line for line in result_file.read_text().splitlines() if line.strip()]
        if lines:
            last = json.loads(lines[-1])
            spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    return spans


def bench_engine_overhead(quick: bool, folder: Path) -> dict:
    """Study wall time over the ideal: total trial work divided by concurrency."""
    trials = 12 if quick else 40
    study = _tiny_study("overhead", trials, 2, image_size=16)
    result, wall = _run_study(study, folder)
    spans = _trial_spans(result.run_dir)
    work = [end - start for start, end in spans]
    ideal = sum(work) / 2
    # From the first trial's start to the last one's end: the overhead between trials alone.
    steady = max(end for _, end in spans) - min(start for start, _ in spans)
    return {
        "name": "engine overhead",
        "measured": (
            f"{trials} trials of {statistics.mean(work):.2f} s mean work, 2 concurrent: study "
            f"{wall:.1f} s (Ray start and data included) vs ideal {ideal:.1f} s; from the first "
            f"trial's start to the last one's end {steady:.1f} s ({steady / ideal:.2f} of ideal)"
        ),
        "ratio": wall / ideal,
        "goal": "<= 1.10",
    }


def bench_parallel_scaling(quick: bool, folder: Path) -> dict:
    """Throughput of 2 concurrent trials over 1 on this machine."""
    trials = 4 if quick else 8
    _, one = _run_study(_tiny_study("serial", trials, 1, image_size=32), folder)
    _, two = _run_study(_tiny_study("parallel", trials, 2, image_size=32), folder)
    return {
        "name": "parallel scaling",
        "measured": f"{trials} trials of 1 epoch at 32 px, 1 CPU each: 1 at a time {one:.1f} s, 2 at a time {two:.1f} s",
        "ratio": one / two,
        "goal": "close to 2 on 2 cores",
    }


def _suggest_seconds(storage, completed: int, asks: int) -> float:
    """Return the mean time of one ask + suggest on the digits space after ``completed`` trials."""
    from search.study import load_study

    space = load_study(Path(__file__).resolve().parents[1] / "studies" / "digits.yaml").space
    study = optuna.create_study(
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True),
        direction="maximize",
    )
    rng = np.random.default_rng(0)
    filler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(completed):
        trial = filler.ask()
        space.suggest(trial)
        filler.tell(trial, float(rng.random()))
    study.add_trials(filler.trials)
    started = time.perf_counter()
    for _ in range(asks):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, float(rng.random()))
    return (time.perf_counter() - started) / asks


def bench_sampler_scaling(quick: bool, folder: Path) -> list[dict]:
    """TPE suggest time at 1000 trials over 100, and SQLite storage over in-memory."""
    asks = 5 if quick else 20
    large = 300 if quick else 1000
    memory_small = _suggest_seconds(None, 100, asks)
    memory_large = _suggest_seconds(None, large, asks)
    sqlite_small = _suggest_seconds(f"sqlite:///{folder / 'scaling.db'}", 100, asks)
    return [
        {
            "name": "sampler scaling",
            "measured": (
                f"TPE ask + suggest on the digits space, in memory: {memory_small * 1000:.0f} ms at 100 "
                f"trials, {memory_large * 1000:.0f} ms at {large}"
            ),
            "ratio": memory_large / memory_small,
            "goal": "record",
        },
        {
            "name": "storage",
            "measured": (
                f"ask + suggest + tell at 100 trials: SQLite {sqlite_small * 1000:.0f} ms, in memory "
                f"{memory_small * 1000:.0f} ms"
            ),
            "ratio": sqlite_small / memory_small,
            "goal": "record",
        },
    ]


def _short_trial_study(trials: int, concurrency: int):
    """Build a study of trials with almost no work: one epoch of a one-layer MLP on the wine data."""
    from search.study import Study

    studies = Path(__file__).resolve().parents[1] / "studies"
    return Study.from_dict(
        {
            "name": "short",
            "model": {"factory": "tabular:build_mlp"},
            "data": {"factory": "tabular:load_wine"},
            "budget": {"trials": trials, "max_epochs": 1},
            "search": {"concurrency": concurrency, "scheduler": "none", "sampler": "tpe", "seed": 0},
            "resources": {"cpus": 1},
            "space": {
                "factory_params": {"depth": 1, "width": 16},
                "lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
                "batch_size": 64,
            },
        },
        source=studies / "short.yaml",
    )


def _plain_objective_work(lr: float) -> float:
    """Train the short trial's MLP for one epoch outside ftsearch and return its validation accuracy."""
    studies = str(Path(__file__).resolve().parents[1] / "studies")
    if studies not in sys.path:
        sys.path.insert(0, studies)
    import tabular

    from search.study import DataSettings

    splits = tabular.load_wine(DataSettings(val_fraction=0.25, test_fraction=0.15, seed=0))
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(train_x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    x, y = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(train_y)
    for start in range(0, len(y), 64):
        loss = torch.nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = model(torch.as_tensor(val_x, dtype=torch.float32)).argmax(dim=1)
    return float((predicted == torch.as_tensor(val_y)).float().mean())


def _plain_ray_tune(trials: int, concurrency: int, folder: Path) -> float:
    """Return the wall time of the same trials through plain Ray Tune with OptunaSearch, Ray start included."""
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.runner import _listen_on_loopback_only, _quiet_tune_output

    def trainable(config):
        tune.report({"val_accuracy": _plain_objective_work(config["lr"])})

    started = time.perf_counter()
    _listen_on_loopback_only()
    ray.init(include_dashboard=False, num_cpus=os.cpu_count(), log_to_driver=False)
    try:
        searcher = OptunaSearch(
            {"lr": tune.loguniform(1.0e-4, 3.0e-2)},
            metric="val_accuracy",
            mode="max",
            sampler=optuna.samplers.TPESampler(seed=0),
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
                num_samples=trials,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name="plain", storage_path=str(folder / "plain_ray"), verbose=0),
        )
        with _quiet_tune_output():
            tuner.fit()
    finally:
        ray.shutdown()
    return time.perf_counter() - started


def bench_short_trials(quick: bool, folder: Path) -> list[dict]:
    """Time short trials through ftsearch against plain Optuna and plain Ray Tune with OptunaSearch."""
    trials, concurrency = (30 if quick else 100), 2

    started = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda trial: _plain_objective_work(trial.suggest_float("lr", 1.0e-4, 3.0e-2, log=True)), trials)
    plain_optuna = time.perf_counter() - started

    plain_ray = _plain_ray_tune(trials, concurrency, folder)
    _, ours = _run_study(_short_trial_study(trials, concurrency), folder)
    return [
        {
            "name": "short trials vs Optuna",
            "measured": (
                f"{trials} trials of one MLP epoch on wine: ftsearch {ours:.1f} s ({concurrency} concurrent, "
                f"Ray start included) vs optuna.optimize {plain_optuna:.1f} s (in process, 1 at a time)"
            ),
            "ratio": ours / plain_optuna,
            "goal": "<= 3",
        },
        {
            "name": "short trials vs Ray Tune",
            "measured": (
                f"the same {trials} trials: ftsearch {ours:.1f} s vs plain Ray Tune with OptunaSearch "
                f"{plain_ray:.1f} s ({concurrency} concurrent, Ray start included)"
            ),
            "ratio": ours / plain_ray,
            "goal": "record",
        },
    ]


def bench_data_sharing(quick: bool, folder: Path) -> list[dict]:
    """Time an epoch on the study's decoded images against one that decodes the JPEG files again.

    The second is what a trial does with a torchvision ``ImageFolder`` and a ``DataLoader``, the
    usual fine-tuning loop: every epoch opens, decodes and resizes each file. The ratio depends
    on how a file's decode time compares with the model's training time per image, so it is
    measured for small and for large files.
    """
    count = 256 if quick else 768
    sizes = ((640, 480),) if quick else ((400, 300), (1024, 768))
    return [_data_sharing_row(folder / f"jpeg{width}", count, width, height, 2 if quick else 3) for width, height in sizes]


def _data_sharing_row(root: Path, count: int, width: int, height: int, repeats: int) -> dict:
    import timm
    import torchvision
    from torchvision import transforms

    from search.data import Dataset
    from search.devices import select_device
    from search.image_files import list_folder
    from search.images import decode_images
    from search.trainable import TrialSettings, _TrainingLoop
    from spaces.terms import resolve_config

    size, batch, threads = 32, 64, 1
    write_folder(root, count, width, height)
    torch.set_num_threads(threads)
    mean, std = (0.5,) * 3, (0.5,) * 3

    table = list_folder(root)
    images = np.stack(decode_images(table, size, 3, workers=threads).arrays)
    labels = np.array([file.label for file in table.files], dtype=np.int64)
    dataset = Dataset(table.classes, images, labels, images[:batch], labels[:batch], images[:0], labels[:0])
    settings = TrialSettings("resnet10t", 3, 1, 0, threads, 0, {"resnet10t": (mean, std)})
    config = resolve_config({"batch_size": batch, "lr": 1e-3, "weight_decay": 0.01})

    def shared_epoch() -> float:
        torch.manual_seed(0)
        model = timm.create_model("resnet10t", num_classes=4)
        loop = _TrainingLoop(model, config, dataset, settings, "resnet10t", select_device(0))
        started = time.perf_counter()
        loop.train_epoch(0)
        return time.perf_counter() - started

    def decoding_epoch() -> float:
        torch.manual_seed(0)
        model = timm.create_model("resnet10t", num_classes=4)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        transform = transforms.Compose(
            [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(mean, std)]
        )
        loader = torch.utils.data.DataLoader(
            torchvision.datasets.ImageFolder(str(root), transform=transform), batch_size=batch, shuffle=True
        )
        model.train()
        started = time.perf_counter()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    shared, decoding = [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        shared.append(shared_epoch())
        decoding.append(decoding_epoch())
    return {
        "name": f"data sharing, {width}x{height}",
        "measured": (
            f"one epoch of resnet10t at {size} px on {count} {width}x{height} JPEG files, batch {batch}, "
            f"{threads} thread: decoded once by the study {statistics.median(shared):.2f} s vs decoded in "
            f"the epoch by ImageFolder + DataLoader {statistics.median(decoding):.2f} s"
        ),
        "ratio": statistics.median(shared) / statistics.median(decoding),
        "goal": "<= 0.3",
    }


def bench_search_efficiency(quick: bool, folder: Path) -> list[dict]:
    """Compare TPE with random search: trials on tabular benchmarks, epochs with ASHA on digits.

    benchmarks/search_efficiency.py describes both measurements and runs the full version.
    """
    return [*bench_tabular(quick), bench_digits(quick, folder)]

BENCHMARKS = (
    "training_step",
    "engine_overhead",
    "short_trials",
    "data_sharing",
    "parallel_scaling",
    "sampler_scaling",
    "search_efficiency",
)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run ftsearch's benchmarks and print Markdown rows.")
    parser.add_argument("--quick", action="store_true", help="short versions of every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    args = parser.parse_args()
    chosen = args.only or BENCHMARKS
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftsearch-bench-") as folder:
        folder = Path(folder)
        for name in chosen:
            started = time.perf_counter()
            if name == "training_step":
                found = bench_training_step(args.quick)
            else:
                found = globals()[f"bench_{name}"](args.quick, folder)
            for row in found if isinstance(found, list) else [found]:
                row["seconds"] = time.perf_counter() - started
                rows.append(row)
                ratio = format_ratio(row["ratio"])
                print(f"{row['name']}: ratio {ratio} ({row['measured']})", file=sys.stderr, flush=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
