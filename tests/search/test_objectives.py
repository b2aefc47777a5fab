"""The objective section's list form, and cost measured per architecture."""

import pytest
import torch
from torch import nn

from search.cost import ArchitectureMeter, count_macs, count_params, measure_latency_ms
from search.study import Study, StudyError
from tests.conftest import tiny_study_dict

TWO_OBJECTIVES = {"metrics": [{"metric": "val_accuracy"}, {"metric": "params"}]}


def problems_of(objective, **changes):
    with pytest.raises(StudyError) as error:
        Study.from_dict(tiny_study_dict(objective=objective, **changes))
    return error.value.problems


def test_single_objective_form_unchanged():
    study = Study.from_dict(tiny_study_dict(objective={"metric": "val_loss"}))

    assert study.objective.objectives == [("val_loss", "minimize")]
    assert study.objective.metrics is None
    assert study.search.sampler == "tpe"


def test_list_form_fills_directions_and_sampler():
    study = Study.from_dict(tiny_study_dict(objective=TWO_OBJECTIVES))

    assert study.objective.objectives == [("val_accuracy", "maximize"), ("params", "minimize")]
    assert (study.objective.metric, study.objective.mode) == ("val_accuracy", "max")
    assert study.search.sampler == "nsga2"


def test_list_form_keeps_named_sampler():
    study = Study.from_dict(tiny_study_dict(objective=TWO_OBJECTIVES, search={"sampler": "tpe"}))

    assert study.search.sampler == "tpe"


def test_list_form_round_trips():
    study = Study.from_dict(tiny_study_dict(objective=TWO_OBJECTIVES))

    assert Study.from_dict(study.to_dict()).to_dict() == study.to_dict()


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        (
            {"metrics": [{"metric": "params"}, {"metric": "val_accuracy"}]},
            "objective.metrics[0].metric: the first objective must be a validation metric, so the "
            "scheduler can stop weak trials early, not the cost metric 'params'; valid first "
            "metrics: val_accuracy, val_loss, train_loss, val_loss_ema, val_accuracy_ema. Move "
            "'params' after it",
        ),
        (
            {"metrics": [{"metric": "val_accuracy"}, {"metric": "flops"}]},
            "objective.metrics[1].metric: unknown metric 'flops'; valid metrics: val_accuracy, "
            "val_loss, train_loss, val_loss_ema, val_accuracy_ema, params, macs, latency_ms",
        ),
        (
            {"metrics": [{"metric": "val_accuracy"}, {"metric": "val_accuracy"}]},
            "objective.metrics[1].metric: 'val_accuracy' is listed twice; list each metric once",
        ),
        (
            {"metrics": [{"metric": "val_accuracy", "direction": "up"}]},
            "objective.metrics[0].direction: invalid value 'up'; valid directions: maximize, minimize",
        ),
        (
            {"metrics": [{"metric": "val_accuracy", "weight": 2}]},
            "objective.metrics[0]: unknown keys ['weight']; valid keys: metric, direction",
        ),
        (
            {"metrics": []},
            "objective.metrics: expected a list of {metric: NAME, direction: maximize|minimize}, "
            "got []; give at least one entry",
        ),
        (
            {"metric": "val_loss", **TWO_OBJECTIVES},
            "objective.metric: 'val_loss' differs from the first of objective.metrics "
            "('val_accuracy'); remove objective.metric, since the list names every objective",
        ),
    ],
)
def test_objective_errors(objective, message):
    assert problems_of(objective) == [message]


def test_cost_of_linear_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    threads = torch.get_num_threads()

    assert count_params(model) == 3 * 4 + 256 * 5 + 5
    assert count_macs(model, 8, 3) == 3 * 4 * 8 * 8 + 256 * 5
    assert measure_latency_ms(model, 8, 3) > 0
    assert torch.get_num_threads() == threads


def test_meter_measures_once_per_architecture():
    meter = ArchitectureMeter("resnet10t", 10, 32, 3, {}, ("params", "macs"))
    config = {"head": {"name": "linear"}, "lr": 0.1}

    first = meter.measure(config)
    frozen = meter.measure({**config, "frozen_stages": 1})
    again = meter.measure({**config, "lr": 0.2})

    assert again is first
    assert frozen is not first
    assert frozen.cost == first.cost
    assert len(meter._costs) == 1
    assert set(first.cost) == {"params", "macs"}
    assert first.weights_kept == 0
    assert not first.pretrained
    assert first.describe() == f"no pretrained weights; all {len(first.weights_new)} tensors initialised anew"


def test_direction_against_metric_warns(caplog):
    import logging

    from search import objectives

    objectives._warned_directions.clear()
    with caplog.at_level(logging.WARNING, logger="search.objectives"):
        Study.from_dict(tiny_study_dict(objective={"metric": "val_accuracy", "direction": "minimize"}))
        Study.from_dict(tiny_study_dict(objective={"metric": "val_loss", "direction": "minimize"}))
    assert [record.getMessage() for record in caplog.records] == [
        "objective: val_accuracy is set to minimize, so the search prefers worse models; a better "
        "val_accuracy is higher. Remove the direction to use maximize"
    ]
