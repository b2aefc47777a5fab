"""Reading a run's results: the best trial, a table of trials, and the best study to rerun."""

from __future__ import annotations

import json
import math
from typing import Any

from search.factories import FACTORY_PARAMS
from search.storage import EPOCH_VALUES_ATTR, FAIL_REASON_ATTR, STOP_REASON_ATTR, trial_config
from search.study import Study

__all__ = ["best_summary", "best_trial", "best_study", "format_table", "trial_rows"]


def best_trial(optuna_study):
    """Return the best COMPLETE trial of ``optuna_study``, or None when none completed."""
    import optuna

    complete = [
        trial
        for trial in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if trial.values and math.isfinite(trial.values[0])
    ]
    if not complete:
        return None
    # With several objectives the best trial is the best in the first (validation) objective.
    maximize = optuna_study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return (max if maximize else min)(complete, key=lambda trial: trial.values[0])


def best_summary(study: Study, optuna_study) -> dict[str, Any] | None:
    """Return the best trial as plain data: number, value, metric, parameters, configuration."""
    trial = best_trial(optuna_study)
    if trial is None:
        return None
    summary = {
        "study": study.name,
        "trial": trial.number,
        "metric": study.objective.metric,
        "direction": study.objective.resolved_direction,
        "value": trial.values[0],
        "epochs": len(trial.intermediate_values) or len(trial.user_attrs.get(EPOCH_VALUES_ATTR, [])),
        "params": dict(trial.params),
        "config": trial_config(trial),
    }
    if len(study.objective.objectives) > 1:
        from search.pareto import pareto_front

        summary["objectives"] = [
            {"metric": metric, "direction": direction} for metric, direction in study.objective.objectives
        ]
        summary["pareto_front"] = pareto_front(study, optuna_study)
    return summary


def best_study(study: Study, config: dict[str, Any]) -> Study:
    """Return a study that trains exactly ``config`` once, with the same model, data and seed."""
    space: dict[str, Any] = {}
    for name, value in config.items():
        if value is None:
            continue
        if name == "head":
            options = {key: item for key, item in value.items() if key != "name"}
            space[name] = {"choices": {value["name"]: options}}
        elif name == FACTORY_PARAMS:
            space[name] = {key: {"value": item} if isinstance(item, dict) else item for key, item in value.items()}
        elif isinstance(value, dict):
            space[name] = {"value": value}
        else:
            space[name] = value
    search = {**study.to_dict()["search"], "sampler": "random", "scheduler": "none", "concurrency": 1}
    budget = {**study.to_dict()["budget"], "trials": 1, "time_limit": None}
    return study.replace(name=f"{study.name}-best", space=space, search=search, budget=budget, storage=None)


def trial_rows(optuna_study) -> list[dict[str, Any]]:
    """Return one row per trial: number, state, value, epochs, seconds, parameters, reason."""
    rows = []
    for trial in optuna_study.get_trials(deepcopy=False):
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        reason = trial.user_attrs.get(FAIL_REASON_ATTR) or trial.user_attrs.get(STOP_REASON_ATTR) or ""
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "value": trial.values[0] if trial.values else None,
                "values": list(trial.values) if trial.values else None,
                "epochs": len(trial.intermediate_values) or len(trial.user_attrs.get(EPOCH_VALUES_ATTR, [])),
                "seconds": seconds,
                "params": dict(trial.params),
                "reason": reason,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], metric: str, maximize: bool, limit: int = 20) -> str:
    """Return the rows as a text table, best values first, at most ``limit`` rows."""

    def sort_key(row):
        value = row["value"]
        if value is None or not math.isfinite(value):
            return (2, 0.0)
        return (0 if row["state"] == "COMPLETE" else 1, -value if maximize else value)

    shown = sorted(rows, key=sort_key)[:limit]
    header = ("trial", "state", metric, "epochs", "seconds", "parameters")
    lines = [header]
    for row in shown:
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
        params = ", ".join(f"{k}={_short(v)}" for k, v in row["params"].items())
        lines.append((str(row["trial"]), row["state"], value, str(row["epochs"]), seconds, params))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths)) + "  " + line[-1]
        for line in lines
    ]
    if len(rows) > len(shown):
        text.append(f"... {len(rows) - len(shown)} more trials")
    return "\n".join(text)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)
