"""The Pareto front of a study with several objectives, as plain data for tables and plots.

A trial is on the front when no other COMPLETE trial is at least as good in every objective
and better in one; Optuna's ``Study.best_trials`` computes it.
"""

from __future__ import annotations

from typing import Any

from search.storage import WEIGHTS_KEPT_ATTR, trial_config

__all__ = ["format_front", "pareto_front", "trial_points"]


def trial_points(study, optuna_study) -> list[dict[str, Any]]:
    """Return every COMPLETE trial as ``{trial, values: {metric: value}, on_front, config}``.

    The data behind a Pareto-front figure: each point with a flag for the front.
    """
    import optuna

    metrics = [metric for metric, _ in study.objective.objectives]
    front = {trial.number for trial in optuna_study.best_trials}
    points = []
    for trial in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        points.append(
            {
                "trial": trial.number,
                "values": dict(zip(metrics, trial.values)),
                "on_front": trial.number in front,
                "weights_kept": trial.user_attrs.get(WEIGHTS_KEPT_ATTR),
                "config": trial_config(trial),
            }
        )
    return points


def pareto_front(study, optuna_study) -> list[dict[str, Any]]:
    """Return the trials on the Pareto front, best first in the first objective."""
    points = [point for point in trial_points(study, optuna_study) if point["on_front"]]
    first, direction = study.objective.objectives[0]
    return sorted(points, key=lambda point: point["values"][first], reverse=direction == "maximize")


def format_front(study, front: list[dict[str, Any]]) -> str:
    """Return the front as a text table: trial, each objective, and the searched parameters."""
    metrics = [metric for metric, _ in study.objective.objectives]
    searched = [name for name in study.space if study.space[name].searched]
    header = ["trial", *metrics, *searched]
    rows = [header]
    for point in front:
        cells = [str(point["trial"])]
        cells += [_number(point["values"][metric]) for metric in metrics]
        cells += [_short(point["config"].get(name)) for name in searched]
        rows.append(cells)
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        options = ",".join(f"{key}={_short(item)}" for key, item in value.items() if key != "name")
        return f"{value.get('name', '')}({options})" if options else str(value.get("name", ""))
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
