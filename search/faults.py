"""Trial errors that end a trial for good: divergence and running out of memory.

Ray Tune restarts a trial from its last checkpoint when its worker fails (``FailureConfig``).
That helps when a worker process died, but a trial whose loss became NaN, or that needs more
memory than it has, fails the same way again. So ``guarded_train_trial`` catches these errors
in the worker and frees the trial's memory. It then ends the trial with a last result that
carries the reason under ``FAIL_REASON_KEY``, and the runner marks the Optuna trial FAIL with it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from search.devices import free_memory, is_out_of_memory, memory_limit, select_device, worker_placement

logger = logging.getLogger(__name__)

__all__ = ["FAIL_REASON_KEY", "guarded_train_trial"]

# The key of the last result of a trial that ended for good; its value is the reason.
FAIL_REASON_KEY = "trial_fail_reason"


def guarded_train_trial(config: dict[str, Any], metric: str, memory_mb: int | None = None, **parameters) -> None:
    """Run ``search.trainable.train_trial`` and end the trial with a reason if it cannot succeed.

    ``metric`` is the study's objective metric: Ray Tune requires it in every result, so the
    last result carries it as NaN. ``parameters`` go to ``train_trial`` unchanged.
    """
    from ray import tune

    from search.trainable import TrialDiverged, train_trial

    settings = parameters["settings"]
    runtime = select_device(settings.gpus, settings.precision, settings.compile)
    reason = None
    with memory_limit(memory_mb, runtime):
        try:
            train_trial(config, **parameters)
        except TrialDiverged as error:
            reason = f"TrialDiverged: {error}"
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error, memory_limited=memory_mb is not None and not runtime.is_cuda):
                raise
            reason = _out_of_memory_reason(error, memory_mb, runtime)
    if reason is None:
        return
    # The error and its traceback are gone here, so the tensors they referenced can be freed.
    free_memory(runtime)
    logger.warning("Trial %s ends without a retry: %s", config.get("number"), reason)
    tune.report({metric: math.nan, FAIL_REASON_KEY: reason, "placement": worker_placement(runtime)})


def _out_of_memory_reason(error: BaseException, memory_mb: int | None, runtime) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if runtime.is_cuda:
        fix = "lower batch_size, or raise resources.gpus so fewer trials share a GPU"
    elif memory_mb is not None:
        fix = f"lower batch_size or raise resources.memory_mb (now {memory_mb} MiB)"
    else:
        fix = "lower batch_size or run fewer trials at once (search.concurrency)"
    return f"out of memory on {runtime.device}: {first_line}; {fix}"
