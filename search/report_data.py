"""The data behind every report figure, computed from a stored Optuna study as plain values.

Each function returns a dict that a test can check and ``search.report`` draws. When a figure
cannot be drawn (too few trials, nothing varied, a single objective), the dict carries a
``note`` that explains why, and the report shows the note in place of the figure.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.storage import CONFIG_ATTR, FAIL_REASON_ATTR, STOP_REASON_ATTR

__all__ = [
    "best_configuration",
    "comparison_data",
    "contour_data",
    "display_label",
    "history_data",
    "importance_data",
    "learning_curves",
    "parallel_data",
    "pareto_data",
    "prediction_data",
    "slice_data",
    "status_data",
    "timeline_data",
    "trials_table",
]

TUNE_FOLDER = "tune"


def display_label(value: Any) -> str:
    """Return a parameter value as a study file writes it: ``null``, ``[64, 128]``, ``mlp``.

    Lists and mappings are already stored as JSON labels, which read like YAML flow style.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _is_multi_objective(optuna_study) -> bool:
    return len(optuna_study.directions) > 1


def objective_names(optuna_study) -> list[str]:
    """Return the names of the study's objectives (Optuna's metric names, else value 0, 1, ...)."""
    names = optuna_study.metric_names
    if names:
        return list(names)
    if _is_multi_objective(optuna_study):
        return [f"value {index}" for index in range(len(optuna_study.directions))]
    return ["value"]


def _first_value(trial) -> float | None:
    """Return the trial's (first) objective value, or None when it has none or it is not finite."""
    values = trial.values
    if not values or not _is_finite(values[0]):
        return None
    return float(values[0])


def _completed(optuna_study) -> list:
    """Return COMPLETE trials whose every objective value is finite."""
    trials = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [trial for trial in trials if trial.values and all(_is_finite(v) for v in trial.values)]


def _maximize(optuna_study, index: int = 0) -> bool:
    return optuna_study.directions[index] == optuna.study.StudyDirection.MAXIMIZE


def _objective_note(optuna_study) -> str | None:
    if _is_multi_objective(optuna_study):
        return f"multi-objective study: this figure shows the first objective, {objective_names(optuna_study)[0]}"
    return None


def history_data(optuna_study) -> dict[str, Any]:
    """Return each completed trial's value and the best value so far, in trial order."""
    trials = _completed(optuna_study)
    maximize = _maximize(optuna_study)
    numbers, values, best = [], [], []
    for trial in trials:
        value = _first_value(trial)
        numbers.append(trial.number)
        values.append(value)
        if not best:
            best.append(value)
        else:
            best.append(max(best[-1], value) if maximize else min(best[-1], value))
    data = {
        "objective": objective_names(optuna_study)[0],
        "direction": "maximize" if maximize else "minimize",
        "trials": numbers,
        "values": values,
        "best": best,
        "note": _objective_note(optuna_study),
    }
    if not trials:
        data["note"] = "no trial completed with a finite value, so there is no history to show"
    return data


def _varied_params(trials) -> list[str]:
    """Return the names of parameters that took two or more values among ``trials``, in order."""
    seen: dict[str, set] = {}
    for trial in trials:
        for name, value in trial.params.items():
            seen.setdefault(name, set()).add(json.dumps(value, sort_keys=True))
    return [name for name, values in seen.items() if len(values) > 1]


def _constant_note(trials) -> str | None:
    names = sorted({name for trial in trials for name in trial.params} - set(_varied_params(trials)))
    if not names:
        return None
    return f"parameters with one value in every completed trial, left out: {', '.join(names)}"


def importance_data(optuna_study) -> dict[str, Any]:
    """Return Optuna's fANOVA importance of each varied parameter, most important first."""
    trials = _completed(optuna_study)
    varied = _varied_params(trials)
    data: dict[str, Any] = {"params": [], "importances": [], "note": None}
    if len(trials) < 2:
        data["note"] = f"{len(trials)} completed trial(s); importances need at least 2"
        return data
    # Optuna's evaluators use only parameters present in every completed trial.
    common = [name for name in varied if all(name in trial.params for trial in trials)]
    if not common:
        data["note"] = "no parameter varied across all completed trials, so none has an importance"
        return data
    importances = optuna.importance.get_param_importances(
        optuna_study,
        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        params=common,
        target=lambda trial: trial.values[0],
    )
    data["params"] = list(importances)
    data["importances"] = [float(value) for value in importances.values()]
    notes = [_objective_note(optuna_study), _constant_note(trials)]
    data["note"] = "; ".join(note for note in notes if note) or None
    return data


def _axis(trials, name: str) -> dict[str, Any]:
    """Return how to place a parameter on an axis: numbers (maybe log) or category labels."""
    distribution = None
    for trial in trials:
        if name in trial.distributions:
            distribution = trial.distributions[name]
            break
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        return {"name": name, "categorical": False, "log": bool(distribution.log), "labels": []}
    labels = []
    if isinstance(distribution, CategoricalDistribution):
        labels = [display_label(choice) for choice in distribution.choices]
    for trial in trials:
        if name in trial.params and display_label(trial.params[name]) not in labels:
            labels.append(display_label(trial.params[name]))
    return {"name": name, "categorical": True, "log": False, "labels": labels}


def _coordinate(axis: dict[str, Any], value: Any) -> Any:
    """Return a parameter value as its label on a categorical axis, or as a number."""
    if axis["categorical"]:
        return display_label(value)
    return float(value)


def parallel_data(optuna_study) -> dict[str, Any]:
    """Return one dimension per varied parameter and the objective, over the completed trials.

    A categorical value becomes its index in ``labels``; a trial without a conditional
    parameter gets None there.
    """
    trials = _completed(optuna_study)
    data: dict[str, Any] = {"objective": objective_names(optuna_study)[0], "trials": [], "values": [], "dimensions": []}
    varied = _varied_params(trials)
    if len(trials) < 2 or not varied:
        data["note"] = (
            f"{len(trials)} completed trial(s)" if len(trials) < 2 else "no parameter varied"
        ) + "; parallel coordinates need 2 or more completed trials and a varied parameter"
        return data
    for name in varied:
        axis = _axis(trials, name)
        values = []
        for trial in trials:
            if name not in trial.params:
                values.append(None)
            elif axis["categorical"]:
                values.append(axis["labels"].index(display_label(trial.params[name])))
            else:
                values.append(float(trial.params[name]))
        data["dimensions"].append({**axis, "values": values})
    data["trials"] = [trial.number for trial in trials]
    data["values"] = [_first_value(trial) for trial in trials]
    notes = [_objective_note(optuna_study), _constant_note(trials)]
    data["note"] = "; ".join(note for note in notes if note) or None
    return data


def slice_data(optuna_study) -> dict[str, Any]:
    """Return, per varied parameter, each completed trial's parameter value and objective value."""
    trials = _completed(optuna_study)
    data: dict[str, Any] = {"objective": objective_names(optuna_study)[0], "params": []}
    for name in _varied_params(trials):
        axis = _axis(trials, name)
        having = [trial for trial in trials if name in trial.params]
        data["params"].append(
            {
                **axis,
                "x": [_coordinate(axis, trial.params[name]) for trial in having],
                "y": [_first_value(trial) for trial in having],
                "trials": [trial.number for trial in having],
            }
        )
    if not trials:
        data["note"] = "no trial completed with a finite value, so there is nothing to slice"
    elif not data["params"]:
        data["note"] = "no parameter varied among the completed trials"
    else:
        notes = [_objective_note(optuna_study), _constant_note(trials)]
        data["note"] = "; ".join(note for note in notes if note) or None
    return data


def contour_data(optuna_study, importances: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the objective over the two most important parameters, for trials having both.

    Without importances the first two varied parameters are used.
    """
    trials = _completed(optuna_study)
    importances = importances if importances is not None else importance_data(optuna_study)
    names = list(importances.get("params", []))
    for name in _varied_params(trials):
        if name not in names:
            names.append(name)
    data: dict[str, Any] = {"objective": objective_names(optuna_study)[0], "x": None, "y": None}
    if len(names) < 2:
        data["note"] = f"a contour needs 2 varied parameters; this study has {len(names)}"
        return data
    x_name, y_name = names[:2]
    having = [trial for trial in trials if x_name in trial.params and y_name in trial.params]
    if len(having) < 2:
        data["note"] = f"fewer than 2 completed trials have both {x_name} and {y_name}"
        return data
    for key, name in (("x", x_name), ("y", y_name)):
        axis = _axis(having, name)
        data[key] = {**axis, "values": [_coordinate(axis, trial.params[name]) for trial in having]}
    data["z"] = [_first_value(trial) for trial in having]
    data["trials"] = [trial.number for trial in having]
    data["note"] = _objective_note(optuna_study)
    return data


def learning_curves(optuna_study) -> dict[str, Any]:
    """Return every trial's reported value per epoch; ``cut`` marks trials stopped early.

    NaN or infinite values become None, so a curve shows a gap there.
    """
    curves = []
    for trial in optuna_study.get_trials(deepcopy=False):
        steps = sorted(trial.intermediate_values)
        if not steps:
            continue
        values = [trial.intermediate_values[step] for step in steps]
        curves.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "steps": steps,
                "values": [float(v) if _is_finite(v) else None for v in values],
                "cut": trial.state in (TrialState.PRUNED, TrialState.FAIL),
            }
        )
    data: dict[str, Any] = {"objective": objective_names(optuna_study)[0], "curves": curves, "note": None}
    if not curves:
        data["note"] = "no trial reported a value after an epoch yet"
    return data


def _trial_worker(run_dir: Path | None, trial) -> str | None:
    """Return ``host:pid`` of the Ray worker that ran ``trial``, from its last result.json line."""
    ray_id = trial.user_attrs.get("ray_trial_id")
    if run_dir is None or ray_id is None:
        return None
    path = Path(run_dir) / TUNE_FOLDER / f"trial_{ray_id}" / "result.json"
    if not path.is_file():
        return None
    last = None
    with path.open(encoding="utf-8") as file:
        for line in file:
            if line.strip():
                last = line
    if last is None:
        return None
    try:
        result = json.loads(last)
    except json.JSONDecodeError:
        return None
    host = result.get("hostname") or result.get("node_ip") or "?"
    return f"{host}:{result.get('pid', '?')}"


def timeline_data(optuna_study, run_dir: str | Path | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Return when each trial started and ended and which worker ran it.

    The worker is ``host:pid`` from the trial's Ray result when the run directory has one.
    Otherwise trials are packed into numbered lanes, and overlapping trials never share a lane.
    ``max_concurrent`` is the most trials that ran at the same moment. Running trials end at
    ``now``.
    """
    now = now or datetime.now()
    rows = []
    for trial in optuna_study.get_trials(deepcopy=False):
        if trial.datetime_start is None:
            continue
        end = trial.datetime_complete or now
        worker = _trial_worker(Path(run_dir) if run_dir else None, trial)
        rows.append({"trial": trial.number, "state": trial.state.name, "start": trial.datetime_start, "end": end, "worker": worker})
    lane_ends: list[datetime] = []
    for row in sorted(rows, key=lambda row: row["start"]):
        if row["worker"] is not None:
            continue
        lane = next((i for i, end in enumerate(lane_ends) if end <= row["start"]), None)
        if lane is None:
            lane_ends.append(row["end"])
            lane = len(lane_ends) - 1
        lane_ends[lane] = row["end"]
        row["worker"] = f"lane {lane + 1}"
    data: dict[str, Any] = {"trials": rows, "max_concurrent": _max_concurrent(rows), "note": None}
    if not rows:
        data["note"] = "no trial has started yet"
    return data


def _max_concurrent(rows: list[dict[str, Any]]) -> int:
    events = [(row["start"], 1) for row in rows] + [(row["end"], -1) for row in rows]
    # At equal times an end sorts before a start, so back-to-back trials do not overlap.
    running = highest = 0
    for _, change in sorted(events, key=lambda event: (event[0], event[1])):
        running += change
        highest = max(highest, running)
    return highest


def pareto_data(optuna_study) -> dict[str, Any]:
    """Return every completed trial's objective values and whether it is on the Pareto front."""
    names = objective_names(optuna_study)
    directions = ["maximize" if _maximize(optuna_study, i) else "minimize" for i in range(len(names))]
    data: dict[str, Any] = {"objectives": names, "directions": directions, "trials": [], "values": [], "front": []}
    if not _is_multi_objective(optuna_study):
        data["note"] = "single-objective study: no Pareto front"
        return data
    trials = _completed(optuna_study)
    if not trials:
        data["note"] = "no trial completed with finite values, so there is no Pareto front yet"
        return data
    front = {trial.number for trial in optuna_study.best_trials}
    data["trials"] = [trial.number for trial in trials]
    data["values"] = [[float(v) for v in trial.values] for trial in trials]
    data["front"] = [trial.number in front for trial in trials]
    data["note"] = None
    return data


def _duration(trial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trials_table(optuna_study) -> dict[str, Any]:
    """Return one row per trial: number, state, values, epochs, seconds, parameter labels, reason.

    ``params`` lists every parameter name in order of first use; a trial without a
    conditional parameter has an empty cell there.
    """
    names: list[str] = []
    trials = optuna_study.get_trials(deepcopy=False)
    for trial in trials:
        for name in trial.params:
            if name not in names:
                names.append(name)
    rows = []
    for trial in trials:
        reason = trial.user_attrs.get(FAIL_REASON_ATTR) or trial.user_attrs.get(STOP_REASON_ATTR) or ""
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "values": [float(v) if _is_finite(v) else None for v in (trial.values or [])],
                "epochs": len(trial.intermediate_values),
                "seconds": _duration(trial),
                "params": [display_label(trial.params[name]) if name in trial.params else "" for name in names],
                "reason": reason,
            }
        )
    data: dict[str, Any] = {"objectives": objective_names(optuna_study), "params": names, "rows": rows, "note": None}
    if not rows:
        data["note"] = "the study has no trials yet"
    return data


def best_configuration(optuna_study) -> dict[str, Any]:
    """Return the best trial's number, value, parameter labels and full configuration.

    For a multi-objective study ``trials`` lists every trial on the Pareto front instead.
    """
    names = objective_names(optuna_study)
    if _is_multi_objective(optuna_study):
        finite = {trial.number for trial in _completed(optuna_study)}
        front = [trial for trial in optuna_study.best_trials if trial.number in finite]
        return {
            "objectives": names,
            "trials": [_best_entry(trial) for trial in front],
            "note": None if front else "no trial completed, so there is no best configuration yet",
        }
    from search.results import best_trial

    best = best_trial(optuna_study)
    if best is None:
        return {"objectives": names, "trials": [], "note": "no trial completed, so there is no best configuration yet"}
    return {"objectives": names, "trials": [_best_entry(best)], "note": None}


def _best_entry(trial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "values": [float(v) for v in trial.values],
        "epochs": len(trial.intermediate_values),
        "params": {name: display_label(value) for name, value in trial.params.items()},
        "config": json.loads(trial.user_attrs.get(CONFIG_ATTR, "{}")),
    }


def prediction_data(run_dir: str | Path, study, trial, max_images: int = 32) -> dict[str, Any]:
    """Return the confusion matrix of ``trial``'s last checkpoint on the validation split.

    Also returns up to ``max_images`` misclassified validation images (uint8, channels last)
    with their true and predicted class names. ``study`` is the run's ``search.Study``.

    Raises:
        FileNotFoundError: when the trial left no checkpoint.
    """
    import numpy as np
    import torch
    from sklearn.metrics import confusion_matrix

    from search.checkpoints import load_trial_model
    from search.preflight import prepare

    prepared = prepare(study)
    dataset = prepared.dataset
    loaded = load_trial_model(run_dir, study, trial, dataset.num_classes, prepared.normalization, prepared)
    mean = torch.tensor(loaded.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std).view(1, -1, 1, 1)
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(dataset.val_y), 256):
            chunk = torch.from_numpy(dataset.val_x[start : start + 256]).float()
            if dataset.kind == "image":
                chunk = (chunk / 255.0 - mean) / std
            predicted.append(loaded.model(chunk).argmax(dim=1).numpy())
    predicted = np.concatenate(predicted)
    truth = dataset.val_y
    matrix = confusion_matrix(truth, predicted, labels=list(range(dataset.num_classes)))
    wrong = np.flatnonzero(predicted != truth)
    images = [
        {
            "index": int(index),
            "true": dataset.classes[truth[index]],
            "predicted": dataset.classes[predicted[index]],
            "image": np.ascontiguousarray(dataset.val_x[index].transpose(1, 2, 0)),
        }
        for index in wrong[:max_images]
        if dataset.kind == "image"  # a factory's features have no picture to show
    ]
    return {
        "trial": trial.number,
        "epoch": loaded.epoch,
        "classes": list(dataset.classes),
        "matrix": matrix.tolist(),
        "accuracy": float(np.mean(predicted == truth)),
        "misclassified": images,
        "misclassified_total": int(len(wrong)),
        "note": None if len(wrong) else "every validation image is classified correctly",
    }


def status_data(optuna_study, now: datetime | None = None) -> dict[str, Any]:
    """Return trial counts by state, the best trial so far and the running trials."""
    now = now or datetime.now()
    trials = optuna_study.get_trials(deepcopy=False)
    order = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    counts = {state.name: 0 for state in order}
    for trial in trials:
        counts[trial.state.name] += 1
    best = best_configuration(optuna_study)["trials"]
    running = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        steps = sorted(trial.intermediate_values)
        running.append(
            {
                "trial": trial.number,
                "seconds": (now - trial.datetime_start).total_seconds() if trial.datetime_start else None,
                "epochs": len(steps),
                "last_value": trial.intermediate_values[steps[-1]] if steps else None,
                "params": {name: display_label(value) for name, value in trial.params.items()},
            }
        )
    return {
        "study": optuna_study.study_name,
        "objectives": objective_names(optuna_study),
        "total": len(trials),
        "counts": counts,
        "best": best,
        "running": running,
    }


def comparison_data(runs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Return each run's best value, best-so-far history and best configuration, side by side.

    ``runs`` contains (label, Optuna study) pairs; multi-objective runs compare their first
    objective.
    """
    entries = []
    for label, optuna_study in runs:
        history = history_data(optuna_study)
        best = best_configuration(optuna_study)
        top = best["trials"][0] if best["trials"] else None
        entries.append(
            {
                "run": label,
                "objective": history["objective"],
                "direction": history["direction"],
                "trials": history["trials"],
                "best_so_far": history["best"],
                "best_value": history["best"][-1] if history["best"] else None,
                "best_trial": top["trial"] if top else None,
                "best_params": top["params"] if top else {},
                "total": len(optuna_study.trials),
            }
        )
    names = []
    for entry in entries:
        for name in entry["best_params"]:
            if name not in names:
                names.append(name)
    return {"runs": entries, "params": names}
