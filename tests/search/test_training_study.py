"""Training terms in real studies: Ray Tune, Optuna and SQLite with resnet10t at 32 px."""

import json

import optuna
import pytest

from search.runner import _StudySearcher, run
from search.storage import open_run
from search.study import Study
from spaces.terms import TERMS
from tests.conftest import tiny_study_dict

MAX_EPOCHS = 2

TRAINING_SPACE = {
    "optimizer": {"choices": ["sgd", "lamb"]},
    "lr": {"type": "float", "low": 0.02, "high": 0.05, "log": True},
    "lr_scaling": "linear",
    "layer_decay": 0.8,
    "head_lr_scale": {"type": "float", "low": 2.0, "high": 8.0},
    "warmup_epochs": 0.5,
    "schedule": {"choices": ["cosine", "step"]},
    "clip_grad": 5.0,
    "mixup_alpha": 0.2,
    "label_smoothing": 0.1,
    "ema_decay": 0.9,
    "hflip": 0.5,
    "randaugment_ops": 1,
    "randaugment_magnitude": 5,
    "random_erasing_prob": 0.25,
    "batch_size": 64,
}


@pytest.fixture(scope="module")
def training_run(ray_session, tmp_path_factory):
    """Two trials whose space uses optimizer, schedule, regularization and augmentation terms."""
    study = Study.from_dict(
        tiny_study_dict(
            name="training",
            budget={"trials": 2, "max_epochs": MAX_EPOCHS},
            objective={"metric": "val_accuracy_ema"},
            search={"sampler": "random", "seed": 1, "scheduler": "none", "concurrency": 1},
            space=TRAINING_SPACE,
        )
    )
    result = run(study, run_dir=tmp_path_factory.mktemp("runs") / "training", progress=False)
    return study, result


def ray_results(run_dir, trial):
    """Return the per-epoch results Ray Tune wrote for an Optuna trial."""
    path = run_dir / "tune" / f"trial_{trial.user_attrs['ray_trial_id']}" / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_training_trials_complete(training_run):
    _, result = training_run
    trials = result.optuna_study.trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        assert sorted(trial.intermediate_values) == [1, 2]


@pytest.mark.slow
def test_objective_is_ema_accuracy(training_run):
    _, result = training_run
    for trial in result.optuna_study.trials:
        results = ray_results(result.run_dir, trial)
        assert [row["epoch"] for row in results] == [1, 2]
        assert trial.value == results[-1]["val_accuracy_ema"]
        assert "val_accuracy" in results[-1]
        assert "val_loss_ema" in results[-1]
        assert [row["finished"] for row in results] == [False, True]


@pytest.mark.slow
def test_config_holds_training_terms(training_run):
    _, result = training_run
    for trial in result.optuna_study.trials:
        config = json.loads(trial.user_attrs["config"])
        assert set(config) == set(TERMS)
        assert config["optimizer"] in ("sgd", "lamb")
        assert config["schedule"] in ("cosine", "step")
        assert 2.0 <= config["head_lr_scale"] <= 8.0
        assert config["ema_decay"] == 0.9
        assert config["randaugment_ops"] == 1


@pytest.mark.slow
def test_reported_lr_follows_scaling_and_head(training_run):
    """The largest group lr, the head's, follows lr * 64 / 256 * head_lr_scale and the schedule."""
    _, result = training_run
    for trial in result.optuna_study.trials:
        config = json.loads(trial.user_attrs["config"])
        peak = config["lr"] * 64 / 256 * config["head_lr_scale"]
        first = ray_results(result.run_dir, trial)[0]["lr"]
        if config["schedule"] == "step":
            # decay_epochs 1 with decay_rate 0.1: the first decay comes at the end of epoch 1.
            assert first == pytest.approx(0.1 * peak)
        else:
            # Half way through a cosine over 2 epochs, between the peak and the floor.
            assert 0.4 * peak < first <= peak * (1 + 1e-9)


@pytest.mark.slow
def test_best_checkpoint_loads_ema_weights(training_run):
    import numpy as np
    import torch

    from search.checkpoints import load_trial_model
    from search.preflight import prepare

    study, result = training_run
    prepared = prepare(study)
    best = result.best_trial
    loaded = load_trial_model(result.run_dir, study, best, prepared.dataset.num_classes, prepared.normalization)
    mean = torch.tensor(loaded.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std).view(1, -1, 1, 1)
    images = (torch.from_numpy(prepared.dataset.val_x).float() / 255.0 - mean) / std
    with torch.inference_mode():
        predicted = loaded.model(images).argmax(dim=1).numpy()
    assert float(np.mean(predicted == prepared.dataset.val_y)) == pytest.approx(best.value, abs=1e-6)


@pytest.mark.slow
def test_early_stopped_trial_completes(ray_session, tmp_path):
    """A trial that cannot learn (frozen, lr 1e-30) stops itself after epoch 2 of 3 and is COMPLETE."""
    study = Study.from_dict(
        tiny_study_dict(
            name="stall",
            budget={"trials": 1, "max_epochs": 3},
            search={"scheduler": "none"},
            space={"lr": 1.0e-30, "frozen_stages": 4, "early_stopping_patience": 1},
        )
    )
    result = run(study, run_dir=tmp_path / "stall", progress=False)
    (trial,) = result.optuna_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.value == trial.intermediate_values[2]
    assert trial.user_attrs["stop_reason"].startswith(
        "stopped itself after epoch 2 of 3: val_accuracy did not improve"
    )
    _, stored = open_run(result.run_dir)
    assert stored.trials[0].state == optuna.trial.TrialState.COMPLETE


def searcher_with_trial():
    study = Study.from_dict(tiny_study_dict(budget={"trials": 2, "max_epochs": 3}))
    searcher = _StudySearcher(study, optuna.samplers.RandomSampler(seed=0), optuna.storages.InMemoryStorage())
    searcher.suggest("a")
    return searcher


@pytest.mark.parametrize(
    "result, state",
    [
        ({"epoch": 1, "val_accuracy": 0.5, "finished": True}, optuna.trial.TrialState.COMPLETE),
        ({"epoch": 1, "val_accuracy": 0.5}, optuna.trial.TrialState.PRUNED),
        ({"epoch": 1, "val_accuracy": 0.5, "finished": False}, optuna.trial.TrialState.PRUNED),
        ({"epoch": 3, "val_accuracy": 0.5}, optuna.trial.TrialState.COMPLETE),
    ],
)
def test_searcher_honours_finished(result, state):
    searcher = searcher_with_trial()
    searcher.on_trial_complete("a", result)
    (trial,) = searcher.optuna_study.trials
    assert trial.state == state
    assert trial.intermediate_values == {result["epoch"]: 0.5}


def test_searcher_keeps_stop_reason():
    searcher = searcher_with_trial()
    searcher.on_trial_complete("a", {"epoch": 2, "val_accuracy": 0.5, "finished": True, "stop_reason": "stalled"})
    (trial,) = searcher.optuna_study.trials
    assert trial.value == 0.5
    assert trial.user_attrs["stop_reason"] == "stalled"
