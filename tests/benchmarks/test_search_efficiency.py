"""The epochs-to-reach count of benchmarks/search_efficiency.py on a hand-made Optuna study."""

from datetime import datetime, timedelta

import optuna

from benchmarks.search_efficiency import epochs_to_reach

START = datetime(2026, 1, 1)
COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED
FAIL = optuna.trial.TrialState.FAIL


def _trial(state, epoch_values):
    """Return a trial with one intermediate value per epoch. A COMPLETE trial's value is its last."""
    return optuna.trial.create_trial(
        state=state,
        value=epoch_values[-1] if state == COMPLETE else None,
        params={"lr": 0.01},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
        intermediate_values=dict(enumerate(epoch_values, start=1)),
    )


def _stored_trials(specs):
    """Add trials to an in-memory study with the given completion times and read them back."""
    study = optuna.create_study(direction="maximize")
    for state, values, finished_after_s in specs:
        trial = _trial(state, values)
        trial.datetime_start = START
        trial.datetime_complete = START + timedelta(seconds=finished_after_s)
        study.add_trial(trial)
    return study.get_trials(deepcopy=False)


def test_counts_epochs_in_completion_order():
    trials = _stored_trials(
        [
            (COMPLETE, [0.5, 0.8, 0.95], 30),  # number 0, finished third
            (PRUNED, [0.3], 10),  # finished first
            (FAIL, [0.2, 0.4], 20),  # finished second
            (COMPLETE, [0.6, 0.7, 0.9], 40),  # finished last
        ]
    )
    assert epochs_to_reach(trials, 0.95) == 1 + 2 + 3
    assert epochs_to_reach(trials, 0.9) == 1 + 2 + 3


def test_pruned_value_not_reached():
    trials = _stored_trials([(PRUNED, [0.99], 10), (COMPLETE, [0.5, 0.97], 20)])
    assert epochs_to_reach(trials, 0.97) == 1 + 2
    assert epochs_to_reach(trials, 0.98) is None


def test_epochs_to_reach_minimize():
    trials = _stored_trials([(COMPLETE, [0.9, 0.5], 10), (COMPLETE, [0.8, 0.2], 20)])
    assert epochs_to_reach(trials, 0.5, direction="minimize") == 2
    assert epochs_to_reach(trials, 0.3, direction="minimize") == 4
