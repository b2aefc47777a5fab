"""Continuing a study whose driver stopped: which trials count and what runs next.

The rule: every trial already in the storage counts toward ``budget.trials`` and is kept as it
is, except a trial the stopped driver left unfinished: RUNNING after a kill, or FAIL with
``interrupted`` set after Ctrl-C or the time limit. Such a trial is marked FAIL with the reason in
``fail_reason`` and ``interrupted`` set, it does not count, and its configuration is queued to
run again as a new trial (``rerun_of`` names the old trial's number). The resumed run then
starts exactly the trials still missing, so the study ends with ``budget.trials`` counted trials.
The sampler uses every finished trial, since they stay in the same Optuna study.

Resuming assumes no other driver runs the study at the same time; one that does would see its
running trials marked FAIL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import optuna

from search.storage import FAIL_REASON_ATTR, RESOLVED_STUDY_FILE
from search.study import Study, StudyError, load_study

logger = logging.getLogger(__name__)

__all__ = ["INTERRUPTED_ATTR", "RERUN_OF_ATTR", "ResumePlan", "check_resumable", "counted_trials", "plan_resume"]

INTERRUPTED_ATTR = "interrupted"
RERUN_OF_ATTR = "rerun_of"
INTERRUPTED_REASON = (
    "interrupted: the driver stopped while this trial ran; the resumed run trains its "
    "configuration again as trial {rerun}"
)
# Settings that define what a stored trial means; a resumed study must keep them.
FIXED_SECTIONS = ("model", "data", "objective")


@dataclass(frozen=True)
class ResumePlan:
    """Trials a resumed run found in the storage, and the number it still starts."""

    counted: int
    interrupted: tuple[int, ...]
    remaining: int
    # Every trial in the storage, re-queued ones included; it offsets the sampler's seed.
    stored: int = 0


def counted_trials(optuna_study) -> list:
    """Return the trials that count toward the budget: all but those a stopped driver left running."""
    return [trial for trial in optuna_study.get_trials(deepcopy=False) if not _is_uncounted(trial)]


def _is_uncounted(trial) -> bool:
    return bool(trial.user_attrs.get(INTERRUPTED_ATTR)) or trial.state == optuna.trial.TrialState.WAITING


def check_resumable(saved: Study, study: Study) -> None:
    """Check that ``study`` may continue the run of ``saved``, the study that run started with.

    The model, data, objective, ``budget.max_epochs`` and every parameter of the space must be
    unchanged. The number of trials, time limit, sampler, scheduler, concurrency and resources
    may change.

    Raises:
        StudyError: naming every setting and parameter that changed.
    """
    problems = []
    fix = "restore it, or run the edited study into a new run directory with --run-dir"
    old, new = saved.to_dict(), study.to_dict()
    for section in FIXED_SECTIONS:
        for key in sorted(set(old[section]) | set(new[section])):
            before, after = old[section].get(key), new[section].get(key)
            if before != after:
                problems.append(f"{section}.{key}: changed from {before!r} to {after!r} since the run started; {fix}")
    if old["budget"]["max_epochs"] != new["budget"]["max_epochs"]:
        problems.append(
            f"budget.max_epochs: changed from {old['budget']['max_epochs']} to "
            f"{new['budget']['max_epochs']} since the run started; {fix}"
        )
    for name in sorted(set(old["space"]) | set(new["space"])):
        before, after = old["space"].get(name), new["space"].get(name)
        if before == after:
            continue
        if before is None:
            change = f"added as {after!r}"
        elif after is None:
            change = f"removed (was {before!r})"
        else:
            change = f"changed from {before!r} to {after!r}"
        problems.append(
            f"space.{name}: {change} since the run started, so the stored trials no longer fit "
            f"the space; {fix}"
        )
    if problems:
        raise StudyError(problems)


def load_saved_study(run_dir: Path) -> Study | None:
    """Return the study a run started with (``RUN/study.yaml``), or None when there is none."""
    path = Path(run_dir) / RESOLVED_STUDY_FILE
    return load_study(path) if path.is_file() else None


def plan_resume(study: Study, storage, run_dir: Path) -> ResumePlan:
    """Check ``study`` against the stored run, settle interrupted trials and count what is left.

    Raises:
        StudyError: when the study changed in a way the stored trials do not allow.
    """
    saved = load_saved_study(run_dir)
    if saved is not None:
        check_resumable(saved, study)
    try:
        optuna_study = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        logger.info("Study %r has no trials in the storage yet; starting it", study.name)
        return ResumePlan(0, (), study.budget.trials)
    interrupted = _requeue_interrupted(optuna_study)
    counted = len(counted_trials(optuna_study))
    remaining = max(0, study.budget.trials - counted)
    logger.info(
        "Resuming study %r: %d trials kept, %d interrupted trials queued to run again, %d trials to run",
        study.name,
        counted,
        len(interrupted),
        remaining,
    )
    return ResumePlan(counted, tuple(interrupted), remaining, len(optuna_study.get_trials(deepcopy=False)))


def _requeue_interrupted(optuna_study) -> list[int]:
    """Mark each interrupted trial FAIL and queue its parameters once as a new trial.

    Interrupted trials are those left RUNNING by a killed driver and those a stopped driver
    marked ``interrupted`` itself (after Ctrl-C or the time limit).
    """
    interrupted = []
    trials = optuna_study.get_trials(deepcopy=False)
    requeued = {trial.user_attrs.get(RERUN_OF_ATTR) for trial in trials}
    for trial in trials:
        running = trial.state == optuna.trial.TrialState.RUNNING
        stopped = trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get(INTERRUPTED_ATTR)
        if not (running or stopped) or trial.number in requeued:
            continue
        rerun = len(optuna_study.get_trials(deepcopy=False))
        optuna_study.enqueue_trial(dict(trial.params), user_attrs={RERUN_OF_ATTR: trial.number})
        if running:
            # A finished trial cannot change, so only a RUNNING one gets the reason now.
            stale = optuna.trial.Trial(optuna_study, trial._trial_id)
            stale.set_user_attr(INTERRUPTED_ATTR, True)
            stale.set_user_attr(FAIL_REASON_ATTR, INTERRUPTED_REASON.format(rerun=rerun))
            optuna_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        interrupted.append(trial.number)
        logger.warning(
            "Trial %d was interrupted when its driver stopped; it is marked FAIL and runs again as trial %d",
            trial.number,
            rerun,
        )
    return interrupted

