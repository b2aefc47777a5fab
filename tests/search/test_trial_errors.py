"""Trials that cannot succeed: out of memory and divergence end FAIL once, and the study goes on."""

from pathlib import Path

import optuna
import pytest

from search.runner import _init_ray, run
from search.study import Study
from tests.conftest import tiny_study_dict

pytestmark = pytest.mark.slow

MEMORY_MB = 400
# LARGE_BATCH is the whole digits train split (1257 images), the largest batch a study accepts.
SMALL_BATCH, LARGE_BATCH = 16, 1257
GOOD_LR, DIVERGING_LR = 3.0e-3, 1.0e30


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Six trials on one worker, some with a batch too large for resources.memory_mb, some diverging."""
    import ray

    started = _init_ray(None)
    study = Study.from_dict(
        tiny_study_dict(
            name="errors",
            budget={"trials": 6, "max_epochs": 1},
            search={"sampler": "random", "seed": 0, "concurrency": 1},
            resources={"cpus": 1, "memory_mb": MEMORY_MB},
            cluster={"max_failures": 2},
            space={"batch_size": {"choices": [SMALL_BATCH, LARGE_BATCH]}, "lr": {"choices": [GOOD_LR, DIVERGING_LR]}},
        )
    )
    result = run(study, run_dir=tmp_path_factory.mktemp("runs") / "errors", progress=False)
    yield result.optuna_study.trials
    if started:
        ray.shutdown()


def kind(trial):
    if trial.params["batch_size"] == LARGE_BATCH:
        return "oom"
    return "diverge" if trial.params["lr"] == DIVERGING_LR else "good"


def test_every_kind_of_trial_ran(finished_run):
    assert len(finished_run) == 6
    assert {kind(trial) for trial in finished_run} == {"oom", "diverge", "good"}


def test_out_of_memory_trial_fails_with_reason(finished_run):
    for trial in finished_run:
        if kind(trial) != "oom":
            continue
        assert trial.state == optuna.trial.TrialState.FAIL
        reason = trial.user_attrs["fail_reason"]
        assert reason.startswith("out of memory on cpu: ")
        assert f"lower batch_size or raise resources.memory_mb (now {MEMORY_MB} MiB)" in reason


def test_diverged_trial_fails_with_reason(finished_run):
    for trial in finished_run:
        if kind(trial) == "diverge":
            assert trial.state == optuna.trial.TrialState.FAIL
            assert trial.user_attrs["fail_reason"].startswith("TrialDiverged: training loss became")


def test_failed_trials_are_not_retried(finished_run):
    for trial in finished_run:
        if trial.state == optuna.trial.TrialState.FAIL:
            assert len(trial.user_attrs["placements"]) == 1
            assert not (Path(trial.user_attrs["trial_folder"]) / "error.txt").exists()


def test_good_trials_run_after_failures_on_same_worker(finished_run):
    good = [trial for trial in finished_run if kind(trial) == "good"]
    assert good
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in good)
    first_oom = min(trial.number for trial in finished_run if kind(trial) == "oom")
    later_good = [trial for trial in good if trial.number > first_oom]
    assert later_good
    oom_pids = {trial.user_attrs["placements"][0]["pid"] for trial in finished_run if kind(trial) == "oom"}
    assert any(trial.user_attrs["placements"][0]["pid"] in oom_pids for trial in later_good)


def test_resources_reach_ray(finished_run):
    placement = finished_run[0].user_attrs["placements"][0]
    assert placement["resources"]["CPU"] == 1.0
    assert placement["resources"]["memory"] == MEMORY_MB * 2**20
    assert placement["resources"].get("GPU", 0) == 0
    assert placement["device"] == "cpu"
