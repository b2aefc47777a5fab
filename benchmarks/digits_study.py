"""Time the shipped digits study end to end and print its best validation accuracy.

Usage: python benchmarks/digits_study.py [--study studies/digits.yaml] [--run-dir DIR]

The wall time covers everything `ftsearch run` does: validation, decoding the data, starting
Ray, every trial and the summary. It prints one Markdown table row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits.yaml")
    parser.add_argument("--run-dir", default=None, help="default: a new temporary folder")
    args = parser.parse_args()
    # Any study file works, such as studies/wine_mlp.yaml; its name names the Optuna study.
    name = yaml.safe_load(Path(args.study).read_text(encoding="utf-8"))["name"]
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="ftsearch-bench-")) / name

    command = [sys.executable, "-m", "search.cli", "run", args.study, "--run-dir", str(run_dir), "--no-progress"]
    started = time.perf_counter()
    completed = subprocess.run(command, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        print(f"ftsearch run failed with exit status {completed.returncode}", file=sys.stderr)
        return completed.returncode

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}")
    states = [trial.state.name for trial in study.trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in states)
    if len(study.directions) > 1:
        # Several objectives: Optuna keeps no intermediate values, ftsearch keeps them in epoch_values.
        epochs = sum(len(trial.user_attrs.get("epoch_values", [])) for trial in study.trials)
        front = study.best_trials
        pick = max if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else min
        first = pick(trial.values[0] for trial in front)
        best = f"Pareto front of {len(front)} trials, best first objective {first:.4f}"
    else:
        epochs = sum(len(trial.intermediate_values) for trial in study.trials)
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})"
    print(
        f"| {platform.node()} ({os.cpu_count()} cores) | {seconds:.0f} s | {best} | {len(states)} trials: "
        f"{counts} | {epochs} epochs |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
