"""End-to-end studies on real Ray Tune, Optuna and SQLite with resnet10t at 32 px."""

import json

import optuna
import pytest

from search.cli import main
from search.runner import run
from search.storage import open_run
from search.study import Study, StudyError
from spaces.terms import TERMS
from tests.conftest import tiny_study_dict

pytestmark = pytest.mark.slow

MAX_EPOCHS = 2


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    """A study whose space mixes a learning rate that works with one that learns nothing.

    Trials run one at a time, so ASHA gets both kinds at its first rung and stops the weak ones.
    """
    run_dir = tmp_path_factory.mktemp("runs") / "e2e"
    study = Study.from_dict(
        tiny_study_dict(
            name="e2e",
            budget={"trials": 6, "max_epochs": MAX_EPOCHS},
            search={"sampler": "random", "seed": 0, "concurrency": 1},
            space={"lr": {"choices": [3.0e-3, 1.0e-7]}, "batch_size": 64},
        )
    )
    result = run(study, run_dir=run_dir, progress=False)
    return study, result


def test_every_ray_trial_is_one_optuna_trial(finished_run):
    study, result = finished_run
    trials = result.optuna_study.trials
    assert len(trials) == study.budget.trials
    assert [trial.number for trial in trials] == list(range(study.budget.trials))
    ray_ids = [trial.user_attrs["ray_trial_id"] for trial in trials]
    assert len(set(ray_ids)) == len(ray_ids)


def test_states_and_intermediate_values(finished_run):
    _, result = finished_run
    states = {trial.state for trial in result.optuna_study.trials}
    assert states == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    for trial in result.optuna_study.trials:
        steps = sorted(trial.intermediate_values)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert steps == [1, 2]
            assert trial.value == trial.intermediate_values[MAX_EPOCHS]
        else:
            assert steps == [1]
            assert trial.value == trial.intermediate_values[1]
            assert "stopped after epoch 1 of 2" in trial.user_attrs["stop_reason"]


def test_pruned_trials_are_the_weak_ones(finished_run):
    _, result = finished_run
    for trial in result.optuna_study.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert trial.params["lr"] == pytest.approx(1.0e-7)


def test_best_trial_is_best_complete_value(finished_run):
    _, result = finished_run
    complete = [t for t in result.optuna_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = result.best_trial
    assert best.value == max(t.value for t in complete)
    assert best.value > 0.5
    assert best.params["lr"] == pytest.approx(3.0e-3)


def test_run_directory_contents(finished_run):
    study, result = finished_run
    assert (result.run_dir / "study.db").is_file()
    assert (result.run_dir / "tune").is_dir()
    saved, stored = open_run(result.run_dir)
    assert saved.to_dict() == study.to_dict()
    assert len(stored.trials) == study.budget.trials


def test_config_attribute_is_complete(finished_run):
    _, result = finished_run
    config = json.loads(result.optuna_study.trials[0].user_attrs["config"])
    assert set(config) == set(TERMS)
    assert {"backbone", "activation", "head", "lr", "weight_decay", "label_smoothing", "batch_size"} <= set(config)
    assert config["batch_size"] == 64
    assert config["head"] == {"name": "linear"}


def test_rerun_into_same_storage_rejected(finished_run):
    study, result = finished_run
    with pytest.raises(StudyError, match="already has a study named 'e2e' with 6 trials; choose another run directory"):
        run(study, run_dir=result.run_dir, progress=False)


def test_best_command_prints_json(finished_run, capsys):
    _, result = finished_run
    assert main(["best", str(result.run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trial"] == result.best_trial.number
    assert summary["value"] == result.best_trial.value
    assert summary["metric"] == "val_accuracy"
    assert summary["config"]["lr"] == pytest.approx(3.0e-3)


def test_exported_best_study_reproduces_value(finished_run, tmp_path, capsys):
    _, result = finished_run
    export = tmp_path / "best.yaml"
    assert main(["best", str(result.run_dir), "--export", str(export)]) == 0
    assert "Best trial" in capsys.readouterr().out
    assert main(["run", str(export), "--run-dir", str(tmp_path / "rerun"), "--no-progress"]) == 0
    _, rerun = open_run(tmp_path / "rerun")
    assert len(rerun.trials) == 1
    assert rerun.trials[0].value == pytest.approx(result.best_trial.value, abs=1e-9)


def test_diverging_trial_fails_with_reason(ray_session, tmp_path):
    study = Study.from_dict(
        tiny_study_dict(name="diverge", budget={"trials": 2, "max_epochs": 1}, space={"lr": {"choices": [1.0e30]}})
    )
    result = run(study, run_dir=tmp_path / "diverge", progress=False)
    trials = result.optuna_study.trials
    assert len(trials) == 2
    for trial in trials:
        assert trial.state == optuna.trial.TrialState.FAIL
        reason = trial.user_attrs["fail_reason"]
        assert reason.startswith("TrialDiverged: training loss became")
        assert "lower the learning rate" in reason
    assert result.best_trial is None


def test_best_checkpoint_reproduces_validation_accuracy(finished_run):
    import numpy as np
    import torch

    from search.checkpoints import load_trial_model
    from search.preflight import prepare

    study, result = finished_run
    prepared = prepare(study)
    dataset = prepared.dataset
    best = result.best_trial
    loaded = load_trial_model(result.run_dir, study, best, dataset.num_classes, prepared.normalization)
    assert loaded.epoch == MAX_EPOCHS
    mean = torch.tensor(loaded.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std).view(1, -1, 1, 1)
    images = (torch.from_numpy(dataset.val_x).float() / 255.0 - mean) / std
    with torch.inference_mode():
        predicted = loaded.model(images).argmax(dim=1).numpy()
    accuracy = float(np.mean(predicted == dataset.val_y))
    assert accuracy == pytest.approx(best.value, abs=1e-6)
