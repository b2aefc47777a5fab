"""Optuna samplers and Ray Tune schedulers, built from a study's ``search`` section."""

from __future__ import annotations

import logging
import threading
from typing import Any

import optuna

__all__ = ["PicklableNSGAIISampler", "create_sampler", "create_scheduler"]


def create_sampler(search, directions: int = 1, stored_trials: int = 0) -> Any:
    """Return the seeded Optuna sampler named by ``search.sampler``.

    ``stored_trials`` is the number of trials a resumed study already has. It offsets the seed,
    because a sampler seeded as in the first run would draw that run's random startup
    configurations again. QMC needs no offset: it continues its sequence from the storage.
    """
    import optuna

    seed = search.seed if search.sampler == "qmc" else search.seed + stored_trials
    startup = {} if search.startup_trials is None else {"n_startup_trials": search.startup_trials}
    if search.sampler == "tpe":
        # constant_liar keeps concurrent trials from being sampled at the same point.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, **startup)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    if search.sampler == "nsga2":
        # startup_trials sets the size of NSGA-II's first, random generation (Optuna's default 50).
        population = {} if search.startup_trials is None else {"population_size": max(2, search.startup_trials)}
        if search.startup_trials is not None and search.startup_trials < 2:
            logging.getLogger(__name__).warning(
                "search.startup_trials %d is below NSGA-II's smallest population; using 2",
                search.startup_trials,
            )
        return PicklableNSGAIISampler(seed=seed, **population)
    raise ValueError(f"search.sampler: unknown sampler {search.sampler!r}")


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGAIISampler that Ray Tune can pickle with its searcher.

    Optuna 5.1's NSGAIISampler holds a threading.Lock, which pickle rejects, so the Tuner
    failed to start. The lock is dropped on pickling and made anew on unpickling.
    """

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def create_scheduler(study) -> Any:
    """Return the Ray Tune trial scheduler named by ``study.search.scheduler``.

    Schedulers count time in epochs (the ``epoch`` the trainable reports).
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    search = study.search
    metric, mode = study.objective.metric, study.objective.mode
    if search.scheduler == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            max_t=study.budget.max_epochs,
            grace_period=min(search.grace_period, study.budget.max_epochs),
            reduction_factor=search.reduction_factor,
        )
    if search.scheduler == "median":
        return MedianStoppingRule(
            time_attr="epoch",
            metric=metric,
            mode=mode,
            grace_period=search.grace_period,
            min_samples_required=3,
        )
    if search.scheduler == "none":
        return FIFOScheduler()
    raise ValueError(f"search.scheduler: unknown scheduler {search.scheduler!r}")
