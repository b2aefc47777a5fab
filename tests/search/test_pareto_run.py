"""A two-objective study (validation accuracy and parameters) on real Ray Tune and Optuna."""

import json

import optuna
import pytest
import timm
import torch

from search.cli import main
from search.runner import _init_ray, run
from search.study import Study
from tests.conftest import tiny_study_dict

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def pareto_run(tmp_path_factory):
    """Heads that trade accuracy for size: timm's linear classifier, or an MLP squeezed to one unit.

    The one-unit MLP has fewer parameters but cannot separate ten classes, so the front has a
    trial of each head. A learning rate that learns nothing lets ASHA stop trials early. With
    seed 7, NSGA-II's random first generation starts with an MLP trial (which ASHA cannot stop,
    having nothing to compare it with) and then a linear head with the working learning rate.
    """
    import ray

    folder = tmp_path_factory.mktemp("pareto")
    torch.manual_seed(0)
    weights = folder / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), weights)
    study = Study.from_dict(
        tiny_study_dict(
            name="pareto",
            model={"pretrained": str(weights)},
            objective={"metrics": [{"metric": "val_accuracy"}, {"metric": "params"}]},
            budget={"trials": 6, "max_epochs": 2},
            search={"seed": 7, "concurrency": 1, "startup_trials": 6},
            space={
                "head": {"choices": {"linear": {}, "mlp": {"hidden": 1}}},
                "lr": {"choices": [3.0e-3, 1.0e-7]},
            },
        )
    )
    started = _init_ray(None)
    try:
        result = run(study, run_dir=folder / "run", progress=False)
    finally:
        if started:
            ray.shutdown()
    return study, result


def test_study_stores_both_objectives(pareto_run):
    study, result = pareto_run
    stored = result.optuna_study

    assert study.search.sampler == "nsga2"
    assert [direction.name for direction in stored.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert stored.metric_names == ["val_accuracy", "params"]
    complete = [trial for trial in stored.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        assert len(trial.values) == 2
        assert trial.values[1] == trial.user_attrs["cost/params"]
        assert len(trial.user_attrs["epoch_values"]) == 2
        assert trial.values[0] == trial.user_attrs["epoch_values"][-1]


def test_params_objective_matches_head(pareto_run):
    _, result = pareto_run
    for trial in result.optuna_study.trials:
        head = json.loads(trial.user_attrs["config"])["head"]["name"]
        linear = 4_927_618  # resnet10t with a 512 x 10 classifier
        expected = linear if head == "linear" else linear - (512 * 10 + 10) + (512 + 1 + 10 + 10)
        assert trial.user_attrs["cost/params"] == expected


def test_weight_carry_over_recorded(pareto_run):
    _, result = pareto_run
    tensors = len(timm.create_model("resnet10t", num_classes=10).state_dict())
    for trial in result.optuna_study.trials:
        head = json.loads(trial.user_attrs["config"])["head"]["name"]
        kept, new = trial.user_attrs["weights_kept"], trial.user_attrs["weights_new"]
        if head == "linear":
            assert (kept, new) == (tensors, [])
        else:
            assert kept == tensors - 2
            assert new == ["fc.0.weight", "fc.0.bias", "fc.3.weight", "fc.3.bias"]


def test_early_stopping_on_validation_metric(pareto_run):
    _, result = pareto_run
    trials = result.optuna_study.trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    best_first_epoch = max(t.user_attrs["epoch_values"][0] for t in trials)
    assert pruned
    for trial in pruned:
        assert len(trial.user_attrs["epoch_values"]) == 1
        assert trial.user_attrs["epoch_values"][0] < best_first_epoch
        assert trial.values is None
    assert result.best_trial.params == {"head": "linear", "lr": pytest.approx(3.0e-3)}


def test_pareto_front_has_both_heads(pareto_run):
    _, result = pareto_run
    front = result.optuna_study.best_trials
    heads = {json.loads(trial.user_attrs["config"])["head"]["name"] for trial in front}

    assert len(front) >= 2
    assert heads == {"linear", "mlp"}


def test_best_command_prints_front(pareto_run, capsys):
    _, result = pareto_run
    front = {trial.number for trial in result.optuna_study.best_trials}

    assert main(["best", str(result.run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {point["trial"] for point in summary["pareto_front"]} == front
    assert summary["objectives"] == [
        {"metric": "val_accuracy", "direction": "maximize"},
        {"metric": "params", "direction": "minimize"},
    ]
    assert summary["trial"] == result.best_trial.number

    assert main(["best", str(result.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"Pareto front: {len(front)} trials" in out
    assert "trial  val_accuracy  params" in out
