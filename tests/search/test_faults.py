"""Faults on real Ray Tune, Optuna and SQLite: a killed worker, a killed driver, resume, edits."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from search.resume import check_resumable
from search.storage import open_storage
from search.study import Study, StudyError
from tests.conftest import tiny_study_dict

TRIALS = 3
MAX_EPOCHS = 3
RUNNING, COMPLETE, FAIL = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)


def fault_study_dict(**changes):
    base = tiny_study_dict(
        name="faults",
        budget={"trials": TRIALS, "max_epochs": MAX_EPOCHS},
        search={"sampler": "random", "scheduler": "none", "concurrency": 1, "seed": 0},
        cluster={"max_failures": 2},
        space={"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}, "batch_size": 128},
    )
    base.update(changes)
    return base


def load_trials(run_dir):
    # The driver writes study.yaml after creating the storage's tables; opening the file earlier
    # would race the driver's schema setup.
    if not (run_dir / "study.yaml").is_file():
        return []
    try:
        study = optuna.load_study(study_name="faults", storage=open_storage(f"sqlite:///{run_dir / 'study.db'}"))
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def wait_for(condition, run_dir, driver, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited early with status {driver.returncode}")
        trials = load_trials(run_dir)
        found = condition(trials)
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting; trials: {[(t.number, t.state.name) for t in load_trials(run_dir)]}")


def kill_session(session_id):
    """Kill every process of the driver's session: the driver and the Ray processes it started."""
    for _ in range(3):
        pids = subprocess.run(["ps", "-o", "pid=", "-s", str(session_id)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def started_worker_pid(trials):
    """Return (trial number, worker pid) of a RUNNING trial that has reported epoch 1."""
    for trial in trials:
        if trial.state == RUNNING and 1 in trial.intermediate_values and trial.user_attrs.get("placements"):
            return trial.number, trial.user_attrs["placements"][-1]["pid"]
    return None


@pytest.fixture(scope="module")
def faulted_run(tmp_path_factory):
    """Kill a trial's worker, then the driver (kill -9), then resume the run with `ftsearch resume`."""
    folder = tmp_path_factory.mktemp("faults")
    run_dir = folder / "run"
    study_file = folder / "study.yaml"
    study_file.write_text(yaml.safe_dump(fault_study_dict()))
    log = open(folder / "driver.log", "w")
    command = [sys.executable, "-m", "search.cli", "run", str(study_file), "--run-dir", str(run_dir), "--no-progress"]
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        killed_trial, killed_pid = wait_for(started_worker_pid, run_dir, driver)
        os.kill(killed_pid, signal.SIGKILL)

        def ready_to_kill(trials):
            complete = [t for t in trials if t.state == COMPLETE]
            running = [t for t in trials if t.state == RUNNING and t.number != killed_trial]
            return len(complete) >= 2 and running and any(t.number == killed_trial for t in complete)

        wait_for(ready_to_kill, run_dir, driver)
    finally:
        kill_session(driver.pid)
        driver.wait()
        log.close()
    before = {t.number: (t.state, t.value, dict(t.params)) for t in load_trials(run_dir)}
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    return run_dir, killed_trial, killed_pid, before, load_trials(run_dir)


@pytest.mark.slow
def test_killed_worker_restores_checkpoint(faulted_run):
    run_dir, killed_trial, killed_pid, _, trials = faulted_run
    trial = trials[killed_trial]
    assert trial.state == COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    pids = [placement["pid"] for placement in trial.user_attrs["placements"]]
    assert pids[0] == killed_pid
    assert len(pids) == 2
    # The new worker's first result is epoch 2: it started from the epoch-1 checkpoint.
    results = [json.loads(line) for line in (Path(trial.user_attrs["trial_folder"]) / "result.json").open()]
    epochs_after_restart = [r["epoch"] for r in results if r["placement"]["pid"] == pids[1]]
    assert epochs_after_restart == [2, 3]


@pytest.mark.slow
def test_resume_ends_with_exact_trial_count(faulted_run):
    _, _, _, _, trials = faulted_run
    counted = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(counted) == TRIALS
    assert all(t.state == COMPLETE for t in counted)
    assert len(trials) == TRIALS + len([t for t in trials if t.user_attrs.get("interrupted")])


@pytest.mark.slow
def test_resume_keeps_completed_trials(faulted_run):
    _, _, _, before, trials = faulted_run
    kept = {number: saved for number, saved in before.items() if saved[0] == COMPLETE}
    assert len(kept) >= 2
    for number, (state, value, params) in kept.items():
        assert trials[number].state == state
        assert trials[number].value == value
        assert trials[number].params == params


@pytest.mark.slow
def test_interrupted_trial_fails_and_reruns(faulted_run):
    _, _, _, before, trials = faulted_run
    interrupted = [number for number, saved in before.items() if saved[0] == RUNNING]
    assert len(interrupted) == 1
    old = trials[interrupted[0]]
    assert old.state == FAIL
    assert old.user_attrs["interrupted"] is True
    assert old.user_attrs["fail_reason"].startswith("interrupted: the driver stopped while this trial ran")
    reruns = [t for t in trials if t.user_attrs.get("rerun_of") == old.number]
    assert len(reruns) == 1
    assert reruns[0].params == old.params
    assert reruns[0].state == COMPLETE


@pytest.mark.slow
def test_resume_rejects_edited_space(faulted_run, tmp_path, capsys):
    run_dir, _, _, _, trials = faulted_run
    edited = fault_study_dict(space={"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}, "batch_size": 128})
    study_file = tmp_path / "edited.yaml"
    study_file.write_text(yaml.safe_dump(edited))
    assert main(["run", str(study_file), "--run-dir", str(run_dir), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftsearch: error: space.lr: changed from {'type': 'float', 'low': 0.001")
    assert "run the edited study into a new run directory with --run-dir" in err
    assert len(load_trials(run_dir)) == len(trials)


@pytest.mark.slow
def test_resume_of_finished_run_runs_nothing(faulted_run, capsys):
    run_dir, _, _, _, trials = faulted_run
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    assert len(load_trials(run_dir)) == len(trials)
    assert f"Study 'faults' already has its {TRIALS} trials; nothing to run" in capsys.readouterr().err


def test_changed_parameter_kind_is_named():
    saved = Study.from_dict(fault_study_dict())
    edited = Study.from_dict(fault_study_dict(space={"lr": {"choices": [1.0e-3, 1.0e-2]}, "batch_size": 128}))
    with pytest.raises(StudyError, match=r"space.lr: changed from \{'type': 'float'.*\} to \{'choices': \[0.001, 0.01\]\}"):
        check_resumable(saved, edited)


def test_added_parameter_and_model_change_are_listed():
    saved = Study.from_dict(fault_study_dict())
    space = {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}, "batch_size": 128, "weight_decay": 0.1}
    edited = Study.from_dict(fault_study_dict(space=space, model={"name": "resnet10t", "image_size": 48}))
    with pytest.raises(StudyError) as error:
        check_resumable(saved, edited)
    assert error.value.problems[0].startswith("model.image_size: changed from 32 to 48 since the run started")
    assert error.value.problems[1].startswith("space.weight_decay: added as 0.1 since the run started")


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp"])
def test_resumed_sampler_draws_new_configurations(sampler):
    from search.strategy import create_sampler

    search = Study.from_dict(tiny_study_dict(search={"sampler": sampler, "seed": 0})).search
    stored = optuna.create_study(sampler=create_sampler(search))
    stored.optimize(lambda trial: trial.suggest_float("lr", 1.0e-4, 1.0e-1, log=True), n_trials=2)
    first_run = [trial.params["lr"] for trial in stored.trials]

    sampler = create_sampler(search, stored_trials=2)
    resumed = optuna.load_study(study_name=stored.study_name, storage=stored._storage, sampler=sampler)
    resumed.optimize(lambda trial: trial.suggest_float("lr", 1.0e-4, 1.0e-1, log=True), n_trials=2)
    new = [trial.params["lr"] for trial in resumed.trials[2:]]
    assert not set(new) & set(first_run)


def test_budget_and_concurrency_may_change():
    saved = Study.from_dict(fault_study_dict())
    edited = Study.from_dict(fault_study_dict(budget={"trials": 9, "max_epochs": MAX_EPOCHS}, search={"concurrency": 2}))
    check_resumable(saved, edited)


def test_rerun_without_resume_names_the_flag(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    storage = open_storage(f"sqlite:///{run_dir / 'study.db'}")
    optuna.create_study(study_name="faults", storage=storage)
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(fault_study_dict()))
    assert main(["run", str(study_file), "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert "or continue it with --resume" in capsys.readouterr().err


def test_plan_resume_requeues_unfinished_trials(tmp_path):
    from search.resume import plan_resume

    study = Study.from_dict(fault_study_dict())
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    stored = optuna.create_study(study_name="faults", storage=storage, direction="maximize")
    done = stored.ask()
    done.suggest_float("lr", 1.0e-3, 1.0e-2, log=True)
    stored.tell(done, 0.5)
    stopped = stored.ask()
    stopped.suggest_float("lr", 1.0e-3, 1.0e-2, log=True)
    stopped.set_user_attr("interrupted", True)
    stored.tell(stopped, state=FAIL)
    killed = stored.ask()
    killed.suggest_float("lr", 1.0e-3, 1.0e-2, log=True)

    plan = plan_resume(study, storage, tmp_path)
    assert plan.interrupted == (1, 2)
    assert plan.counted == 1
    assert plan.remaining == TRIALS - 1
    assert plan.stored == 5
    trials = stored.get_trials()
    assert [t.state for t in trials] == [COMPLETE, FAIL, FAIL, optuna.trial.TrialState.WAITING, optuna.trial.TrialState.WAITING]
    assert trials[3].user_attrs["rerun_of"] == 1
    assert trials[4].params == {}
    assert trials[4].system_attrs["fixed_params"] == killed.params
    # A second resume queues nothing new.
    assert plan_resume(study, storage, tmp_path).interrupted == ()


def test_plan_resume_without_stored_study(tmp_path):
    from search.resume import ResumePlan, plan_resume

    study = Study.from_dict(fault_study_dict())
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert plan_resume(study, storage, tmp_path) == ResumePlan(0, (), TRIALS, 0)
