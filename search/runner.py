"""Run a study: Ray Tune runs the trials, Optuna picks each trial's configuration.

Every Ray Tune trial is exactly one Optuna trial in the study's storage. Trials that ran every
epoch, or stopped themselves by early stopping, end COMPLETE. Trials the scheduler or the time
limit stopped end PRUNED with their per-epoch values. Failed trials end FAIL with the error in
the ``fail_reason`` user attribute.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from search.factories import drop_timm_only_terms
from search.cluster import (
    check_checkpoint_storage,
    describe_cluster,
    experiment_folder,
    trial_resources,
    warn_if_storage_not_shared,
)
from search.preflight import prepare
from search.storage import (
    CONFIG_ATTR,
    FAIL_REASON_ATTR,
    RESOLVED_STUDY_FILE,
    STOP_REASON_ATTR,
    mask_url,
    open_storage,
    storage_url,
)
from search.storage import COST_ATTR_PREFIX, EPOCH_VALUES_ATTR, WEIGHTS_KEPT_ATTR, WEIGHTS_NEW_ATTR
from search.faults import FAIL_REASON_KEY
from search.resume import INTERRUPTED_ATTR
from search.study import Study, StudyError
from spaces.terms import resolve_config

logger = logging.getLogger(__name__)

__all__ = ["RunResult", "default_run_dir", "run"]

TUNE_FOLDER = "tune"
PLACEMENTS_ATTR = "placements"
TRIAL_FOLDER_ATTR = "trial_folder"


@dataclass(frozen=True)
class RunResult:
    """The finished run: its folder, the Optuna study and its storage URL (password masked)."""

    run_dir: Path
    optuna_study: Any
    storage: str

    @property
    def best_trial(self):
        """The best COMPLETE trial, or None when no trial completed."""
        from search.results import best_trial

        return best_trial(self.optuna_study)


def default_run_dir(study: Study) -> Path:
    """Return ``runs/<study name>`` under the current folder."""
    return Path("runs") / study.name


def run(
    study: Study,
    run_dir: str | Path | None = None,
    address: str | None = None,
    progress: bool = True,
    resume: bool = False,
) -> RunResult:
    """Run ``study`` to its budget and return the result.

    Args:
        study: a validated study.
        run_dir: where the storage, Ray Tune's trial folders and the resolved study go;
            ``runs/<study name>`` by default.
        address: a Ray cluster address; by default Ray starts on this machine, on loopback only.
        progress: show a progress bar on standard error.
        resume: continue the study stored for ``run_dir`` by the rule in :mod:`search.resume`,
            instead of rejecting a storage that already has it.

    Raises:
        StudyError: before any trial starts, when the study cannot run.
    """
    if address:
        _check_cluster_address(address)
    run_dir = Path(run_dir or default_run_dir(study)).resolve()
    url = storage_url(study, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url)
    stored_trials = 0
    if resume:
        from search.resume import plan_resume

        plan = plan_resume(study, storage, run_dir)
        remaining, stored_trials = plan.remaining, plan.stored
    else:
        _reject_existing_study(study, storage, run_dir, url)
        remaining = study.budget.trials
    check_checkpoint_storage(study)
    prepared = prepare(study)
    (run_dir / RESOLVED_STUDY_FILE).write_text(study.to_yaml(), encoding="utf-8")
    logger.info("Study %r: run directory %s, storage %s", study.name, run_dir, mask_url(url))
    if remaining == 0:
        logger.info("Study %r already has its %d trials; nothing to run", study.name, study.budget.trials)
        return RunResult(run_dir, optuna.load_study(study_name=study.name, storage=storage), mask_url(url))

    started_ray = _init_ray(address)
    try:
        if address:
            cluster = describe_cluster()
            logger.info("Ray cluster at %s: %d nodes, resources %s", address, cluster["nodes"], cluster["resources"])
            warn_if_storage_not_shared(study, run_dir)
        optuna_study = _fit(study, prepared, storage, run_dir, progress, remaining, stored_trials)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return RunResult(run_dir, optuna_study, mask_url(url))


def _reject_existing_study(study: Study, storage, run_dir: Path, url: str) -> None:
    try:
        existing = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        return
    count = len(existing.trials)
    raise StudyError(
        f"the storage {mask_url(url)} already has a study named {study.name!r} with {count} "
        f"trials; choose another run directory with --run-dir, remove {run_dir}, or rename the study; "
        "or continue it with --resume"
    )


def _init_ray(address: str | None) -> bool:
    """Start Ray on loopback, or connect to ``address``; return whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        _listen_on_loopback_only()
        ray.init(include_dashboard=False, **kwargs)
    return True


def _check_cluster_address(address: str) -> None:
    """Raise StudyError unless the head node at ``address`` (HOST:PORT) accepts a connection.

    ``ray.init`` retries an unreachable address for minutes with only Ray's own warnings, so a
    wrong address or a stopped cluster is reported here at once. "auto" and ``ray://`` client
    addresses are left to Ray.
    """
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise StudyError(f"--address: invalid value {address!r}; write HOST:PORT of the head node, such as 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=10):
            pass
    except OSError as error:
        raise StudyError(
            f"--address: no Ray head node accepts connections at {address} ({error}); start one with "
            "`ray start --head --port=PORT`, or leave out --address to start Ray on this machine"
        ) from None


def _listen_on_loopback_only() -> None:
    """Make a local Ray bind 127.0.0.1 instead of this machine's network address.

    Ray 2.x picks the loopback address when its "cluster" switch is off. Ray reads the switch
    from the environment at import time, so the module attribute is set for this process and
    the variable for the processes Ray starts.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _fit(study: Study, prepared, storage, run_dir: Path, progress: bool, remaining: int, stored_trials: int = 0):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.strategy import create_sampler, create_scheduler
    from search.faults import guarded_train_trial
    from search.tracking import tracking_callbacks
    from search.trainable import TrialSettings

    trackers = tracking_callbacks(study)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    searcher = _StudySearcher(
        study, create_sampler(study.search, stored_trials=stored_trials), storage, meter=_architecture_meter(study, prepared)
    )
    settings = TrialSettings(
        model_name=study.model.name or study.model.factory,
        in_chans=study.model.in_chans,
        max_epochs=study.budget.max_epochs,
        seed=study.search.seed,
        cpus=study.resources.cpus,
        gpus=study.resources.gpus,
        normalization=prepared.normalization,
        model_factory=prepared.model_factory,
        metric=study.objective.metric,
        mode=study.objective.mode,
        precision=study.resources.precision,
        compile=study.resources.compile,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            guarded_train_trial,
            data=prepared.dataset,
            weights=prepared.weights,
            settings=settings,
            metric=study.objective.metric,
            memory_mb=study.resources.memory_mb,
        ),
        trial_resources(study),
    )
    display = _Progress(study, searcher, enabled=progress)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=study.search.concurrency),
            scheduler=create_scheduler(study),
            num_samples=remaining,
            reuse_actors=True,
            time_budget_s=study.budget.time_limit,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=TUNE_FOLDER,
            storage_path=experiment_folder(study, run_dir),
            verbose=0,
            callbacks=[display, *trackers],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # A trial whose worker died restarts from its last checkpoint as the same trial.
            failure_config=tune.FailureConfig(max_failures=study.cluster.max_failures),
        ),
    )
    try:
        with _quiet_tune_output():
            tuner.fit()
    finally:
        searcher.fail_unfinished("the run ended before the trial finished")
        display.close()
    return searcher.optuna_study


def _architecture_meter(study: Study, prepared):
    """Return the driver's meter of weight carry-over and the study's cost metrics."""
    from search.cost import ArchitectureMeter
    from search.objectives import COST_METRICS

    if study.model.factory is not None:
        # The factory builds the model in the worker; there are no timm weights to carry over.
        return None

    return ArchitectureMeter(
        study.model.name,
        prepared.dataset.num_classes,
        study.model.image_size,
        study.model.in_chans,
        prepared.weights,
        tuple(metric for metric, _ in study.objective.objectives if metric in COST_METRICS),
    )


@contextlib.contextmanager
def _quiet_tune_output():
    """Turn off Ray Tune's own console tables and snapshot warnings while a study runs."""
    quiet = {
        # The legacy reporter prints nothing at verbose=0; the new one still prints paths.
        "RAY_AIR_NEW_OUTPUT": "0",
        # Keeping one checkpoint per trial forces frequent small snapshots; they are expected.
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    }
    saved = {name: os.environ.get(name) for name in quiet}
    os.environ.update(quiet)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _trial_error_text(trial) -> str:
    """Return the last line of a failed trial's error, the ``Type: message`` line of its cause."""
    fallback = "the trial failed without an error message; see error.txt in its trial folder"
    path = getattr(trial, "error_file", None)
    if not path or not os.path.isfile(path):
        return fallback
    with open(path, encoding="utf-8", errors="replace") as file:
        lines = [line.strip() for line in file if line.strip()]
    if not lines:
        return fallback
    last = lines[-1]
    if "RayActorError" in last or "actor died" in last.lower():
        return f"the trial's worker process died: {last}"
    # "package.module.TypeName: message" becomes "TypeName: message".
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*: )", "", last)


class _StudySearcher(OptunaSearch):
    """OptunaSearch that keeps one Optuna trial per Ray trial with the right final state."""

    def __init__(self, study: Study, sampler, storage, meter=None):
        self.study = study
        self.meter = meter
        self.architectures: dict[str, Any] = {}
        super().__init__(
            space=study.space.suggest,
            metric=study.objective.metric,
            mode=study.objective.mode,
            sampler=sampler,
            study_name=study.name,
            storage=storage,
        )
        self.reported_epochs: dict[str, int] = {}
        # Named objectives appear in optuna-dashboard and ftsearch's report instead of "value".
        self._ot_study.set_metric_names([metric for metric, _ in study.objective.objectives])
        self.placements: dict[str, list[dict]] = {}

    @property
    def optuna_study(self):
        return self._ot_study

    @property
    def multi_objective(self) -> bool:
        return len(self.study.objective.objectives) > 1

    def _setup_study(self, mode):
        """Create the Optuna study with one direction per objective when there are several.

        The searcher's own metric stays the validation metric, which Tune checks in every
        result and the scheduler uses; cost values join it at tell time.
        """
        if not self.multi_objective:
            return super()._setup_study(mode)
        self._ot_study = optuna.create_study(
            storage=self._storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=self._study_name,
            load_if_exists=True,
            directions=[direction for _, direction in self.study.objective.objectives],
        )
        return None

    def _record_architecture(self, trial_id: str, ot_trial, config: dict[str, Any]) -> None:
        """Store the trial's weight carry-over and cost as user attributes, and log one line."""
        if self.meter is None:
            return
        try:
            measured = self.meter.measure(config)
        except (ValueError, RuntimeError) as error:
            # The trial's worker builds the same model, so it fails too and the trial ends FAIL.
            logger.warning("Trial %d: building its model to measure it failed: %s", ot_trial.number, error)
            return
        self.architectures[trial_id] = measured
        ot_trial.set_user_attr(WEIGHTS_KEPT_ATTR, measured.weights_kept)
        ot_trial.set_user_attr(WEIGHTS_NEW_ATTR, measured.weights_new)
        for metric, value in measured.cost.items():
            ot_trial.set_user_attr(f"{COST_ATTR_PREFIX}{metric}", value)
        logger.info("Trial %d: %s", ot_trial.number, measured.describe())

    def _objective_values(self, trial_id: str, result: dict) -> list[float] | None:
        """Return every objective's value for ``result``, or None when one is missing."""
        cost = self.architectures[trial_id].cost if trial_id in self.architectures else {}
        values = []
        for metric, _ in self.study.objective.objectives:
            value = cost.get(metric, result.get(metric))
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                return None
            values.append(float(value))
        return values

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials:
            self._ot_trials[trial_id] = self._ot_study.ask()
        ot_trial = self._ot_trials[trial_id]
        config = resolve_config(self.study.space.suggest(ot_trial))
        config = drop_timm_only_terms(self.study, config)
        ot_trial.set_user_attr(CONFIG_ATTR, json.dumps(config, sort_keys=True))
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        self._record_architecture(trial_id, ot_trial, config)
        return {"trial": config, "number": ot_trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        self._report(trial_id, result)
        self._record_placement(trial_id, result)

    def _record_placement(self, trial_id: str, result: dict) -> None:
        """Keep in the ``placements`` user attribute each worker (node, process) the trial ran on."""
        placement = result.get("placement")
        if not isinstance(placement, dict):
            # Tune hands searchers flattened results: "placement/pid" and so on.
            placement = {}
            for key, value in result.items():
                if key.startswith("placement/"):
                    *parents, name = key.split("/")[1:]
                    folder = placement
                    for parent in parents:
                        folder = folder.setdefault(parent, {})
                    folder[name] = value
        if not placement:
            return
        placements = self.placements.setdefault(trial_id, [])
        if placement in placements:
            return
        placements.append(dict(placement))
        self._ot_trials[trial_id].set_user_attr(PLACEMENTS_ATTR, placements)

    def _report(self, trial_id: str, result: dict) -> None:
        """Store the epoch's objective value as an Optuna intermediate value, once per epoch."""
        value, epoch = result.get(self._metric), result.get("epoch")
        if not isinstance(value, (int, float)) or not math.isfinite(value) or epoch is None:
            return
        if self.reported_epochs.get(trial_id, 0) >= int(epoch):
            return
        if self.multi_objective:
            # Optuna keeps no intermediate values for several objectives, so the first
            # objective's value per epoch goes to a user attribute instead.
            ot_trial = self._ot_trials[trial_id]
            epochs = list(ot_trial.user_attrs.get(EPOCH_VALUES_ATTR, []))
            ot_trial.set_user_attr(EPOCH_VALUES_ATTR, [*epochs, float(value)])
        else:
            self._ot_trials[trial_id].report(float(value), int(epoch))
        self.reported_epochs[trial_id] = int(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or error:
            # fail() records a failed trial; the progress callback calls it with the error.
            return
        result = result or {}
        self._record_placement(trial_id, result)
        if result.get(FAIL_REASON_KEY):
            # The trial ended for good in its worker (divergence, out of memory): no retry.
            self.fail(trial_id, str(result[FAIL_REASON_KEY]))
            return
        # Tune passes the last result of a stopped trial here instead of to on_trial_result.
        self._report(trial_id, result)
        epoch = int(result.get("epoch") or 0)
        value = result.get(self._metric)
        # A trial that stopped itself by early stopping marks its last result finished.
        finished = epoch >= self.study.budget.max_epochs or result.get("finished") is True
        if finished and result.get("stop_reason"):
            ot_trial.set_user_attr(STOP_REASON_ATTR, str(result["stop_reason"]))
        values = self._objective_values(trial_id, result) if self.multi_objective else None
        if finished and values is not None:
            self._ot_study.tell(ot_trial, values)
        elif finished and not self.multi_objective and isinstance(value, (int, float)) and math.isfinite(value):
            self._ot_study.tell(ot_trial, float(value))
        else:
            reason = (
                f"stopped after epoch {epoch} of {self.study.budget.max_epochs} by the "
                f"{self.study.search.scheduler} scheduler or the time limit"
            )
            ot_trial.set_user_attr(STOP_REASON_ATTR, reason)
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def fail(self, trial_id: str, reason: str) -> None:
        """Mark the trial FAIL and keep ``reason`` in its ``fail_reason`` user attribute."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        ot_trial.set_user_attr(FAIL_REASON_ATTR, reason[:4000])
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def fail_unfinished(self, reason: str) -> None:
        """Mark FAIL every trial that was started but never finished."""
        for trial_id in list(self._ot_trials):
            if trial_id not in self._completed_trials:
                # A resumed run trains these configurations again (search.resume).
                self._ot_trials[trial_id].set_user_attr(INTERRUPTED_ATTR, True)
            self.fail(trial_id, reason)

    def record_trial_folder(self, trial_id: str, path: str | None) -> None:
        """Keep where Ray Tune writes the trial's checkpoints, for loading them later."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and path:
            ot_trial.set_user_attr(TRIAL_FOLDER_ATTR, str(path))

    def frozen_trial(self, trial_id: str):
        """Return the stored Optuna trial of a Ray trial, or None."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return None
        return self._ot_study._storage.get_trial(ot_trial._trial_id)


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


class _Progress(Callback):
    """A progress bar and one log line per finished trial."""

    def __init__(self, study: Study, searcher: _StudySearcher, enabled: bool = True):
        from tqdm.auto import tqdm

        self.study = study
        self.searcher = searcher
        self.maximize = study.objective.resolved_direction == "maximize"
        self.best: tuple[float, int] | None = None
        self.running = 0
        self.last_refresh = 0.0
        self.bar = tqdm(
            total=study.budget.trials,
            desc=study.name,
            unit="trial",
            file=sys.stderr,
            disable=not enabled or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        self.searcher.record_trial_folder(trial.trial_id, trial.path)
        self._update_postfix()

    def on_step(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last_refresh > 1.0:
            self.last_refresh = now
            self.bar.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.searcher.fail(trial.trial_id, _trial_error_text(trial))
        self._finished(trial)

    def _finished(self, trial) -> None:
        self.running = max(0, self.running - 1)
        frozen = self.searcher.frozen_trial(trial.trial_id)
        if frozen is None:
            return
        self.bar.update(1)
        if frozen.state.name == "COMPLETE":
            value = frozen.values[0]
            better = self.best is None or (
                value > self.best[0] if self.maximize else value < self.best[0]
            )
            if better:
                self.best = (value, frozen.number)
        self._update_postfix()
        logger.info(self._trial_line(frozen))

    def _trial_line(self, frozen) -> str:
        metric = self.study.objective.metric
        epochs = len(frozen.intermediate_values) or len(frozen.user_attrs.get(EPOCH_VALUES_ATTR, []))
        best = "none yet" if self.best is None else f"{self.best[0]:.4f} (trial {self.best[1]})"
        state = frozen.state.name
        if state == "FAIL":
            reason = frozen.user_attrs.get(FAIL_REASON_ATTR, "unknown error")
            return f"Trial {frozen.number} FAIL after {_epochs(epochs)}: {reason}; best {best}"
        last = frozen.values[0] if frozen.values else (frozen.user_attrs.get(EPOCH_VALUES_ATTR) or [None])[-1]
        value = "none" if last is None else f"{last:.4f}"
        costs = "".join(
            f", {name} {frozen.values[index]:.4g}"
            for index, (name, _) in enumerate(self.study.objective.objectives)
            if index > 0 and frozen.values
        )
        return f"Trial {frozen.number} {state}: {metric} {value}{costs} after {_epochs(epochs)}; best {best}"

    def _update_postfix(self) -> None:
        best = "-" if self.best is None else f"{self.best[0]:.4f}"
        self.bar.set_postfix_str(f"best {best}, running {self.running}")

    def close(self) -> None:
        self.bar.close()
