"""A study's objectives: one validation metric, or a list of metrics that adds model cost.

``objective: {metric: val_accuracy, direction: maximize}`` names one objective. The list form
names several, the first of which must be a metric the trainable reports (it ranks trials
for early stopping)::

    objective:
      metrics:
        - {metric: val_accuracy, direction: maximize}
        - {metric: params}        # direction defaults to minimize for every cost metric

Cost metrics are measured once per architecture in the driver (see :mod:`search.cost`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)
# (metric, direction) pairs already warned about: a study is rebuilt from its dict several times.
_warned_directions: set[tuple[str, str]] = set()

__all__ = [
    "COST_METRICS",
    "check_objective",
    "default_direction",
    "resolve_objective",
    "resolve_sampler",
]

# Cost metrics: what each measures. Smaller is better for all of them.
COST_METRICS = {
    "params": "number of parameters of the model, frozen ones included",
    "macs": "multiply-accumulates of one forward pass on one image at model.image_size",
    "latency_ms": "median CPU milliseconds of one forward pass, batch of 1, one thread",
}
METRIC_ENTRY_KEYS = ("metric", "direction")
DIRECTIONS = ("maximize", "minimize")


def _reported_metrics() -> dict[str, str]:
    from search.study import REPORTED_METRICS

    return REPORTED_METRICS


def default_direction(metric: str) -> str:
    """Return the direction that improves ``metric``."""
    return _reported_metrics().get(metric) or "minimize"


def check_objective(section: Any) -> list[str]:
    """Return the problems of the ``metrics`` list of an ``objective`` section (empty when valid)."""
    if not isinstance(section, Mapping) or section.get("metrics") is None:
        return []
    metrics = section["metrics"]
    if not isinstance(metrics, list) or not metrics:
        return [
            f"objective.metrics: expected a list of {{metric: NAME, direction: maximize|minimize}}, "
            f"got {metrics!r}; give at least one entry"
        ]
    problems = []
    names = []
    for index, entry in enumerate(metrics):
        key = f"objective.metrics[{index}]"
        problem = _check_entry(entry, key, first=index == 0)
        if problem:
            problems.append(problem)
            continue
        if entry["metric"] in names:
            problems.append(f"{key}.metric: {entry['metric']!r} is listed twice; list each metric once")
        names.append(entry["metric"])
    if not problems:
        problems += _check_single_form_agrees(section, metrics)
    return problems


def _check_entry(entry: Any, key: str, first: bool) -> str | None:
    reported = _reported_metrics()
    if not isinstance(entry, Mapping):
        return f"{key}: expected a mapping such as {{metric: val_accuracy, direction: maximize}}, got {entry!r}"
    unknown = sorted(str(name) for name in entry if name not in METRIC_ENTRY_KEYS)
    if unknown:
        return f"{key}: unknown keys {unknown}; valid keys: {', '.join(METRIC_ENTRY_KEYS)}"
    metric = entry.get("metric")
    valid = list(reported) if first else [*reported, *COST_METRICS]
    if metric not in valid:
        close = difflib.get_close_matches(str(metric), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if first and metric in COST_METRICS:
            return (
                f"{key}.metric: the first objective must be a validation metric, so the scheduler "
                f"can stop weak trials early, not the cost metric {metric!r}; valid first metrics: "
                f"{', '.join(reported)}. Move {metric!r} after it"
            )
        return f"{key}.metric: unknown metric {metric!r}{hint}; valid metrics: {', '.join(valid)}"
    direction = entry.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        return f"{key}.direction: invalid value {direction!r}; valid directions: {', '.join(DIRECTIONS)}"
    return None


def _check_single_form_agrees(section: Mapping, metrics: list) -> list[str]:
    first = metrics[0]
    first_direction = first.get("direction") or default_direction(first["metric"])
    problems = []
    if "metric" in section and section["metric"] != first["metric"]:
        problems.append(
            f"objective.metric: {section['metric']!r} differs from the first of objective.metrics "
            f"({first['metric']!r}); remove objective.metric, since the list names every objective"
        )
    if section.get("direction") is not None and section["direction"] != first_direction:
        problems.append(
            f"objective.direction: {section['direction']!r} differs from the first of "
            f"objective.metrics ({first_direction!r}); remove objective.direction"
        )
    return problems


def resolve_objective(objective):
    """Return ``objective`` (ObjectiveSettings) with its list form completed.

    Each entry gets its direction, and ``metric``/``direction`` become the first entry's, so
    the scheduler and single-objective code read the validation metric unchanged.
    """
    if objective is None:
        return objective
    entries = objective.metrics or [{"metric": objective.metric, "direction": objective.direction}]
    for entry in entries:
        _warn_about_direction(entry["metric"], entry.get("direction"))
    if not objective.metrics:
        return objective
    metrics = [
        {"metric": entry["metric"], "direction": entry.get("direction") or default_direction(entry["metric"])}
        for entry in objective.metrics
    ]
    return dataclasses.replace(
        objective, metric=metrics[0]["metric"], direction=metrics[0]["direction"], metrics=metrics
    )


def _warn_about_direction(metric: str, direction: str | None) -> None:
    """Warn when a validation metric is optimized against the direction that improves it."""
    natural = _reported_metrics().get(metric)
    if direction is None or natural is None or direction == natural or (metric, direction) in _warned_directions:
        return
    _warned_directions.add((metric, direction))
    logger.warning(
        "objective: %s is set to %s, so the search prefers worse models; a better %s is %s. "
        "Remove the direction to use %s",
        metric,
        direction,
        metric,
        "higher" if natural == "maximize" else "lower",
        natural,
    )


def resolve_sampler(search, raw_search: Any, objective):
    """Return ``search`` with NSGA-II as sampler when several objectives leave it unset."""
    if search is None or objective is None or len(objective.objectives) < 2:
        return search
    if isinstance(raw_search, Mapping) and "sampler" in raw_search:
        return search
    return dataclasses.replace(search, sampler="nsga2")
