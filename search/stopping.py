"""Early stopping inside a trial: stop when the objective metric stops improving."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Count the epochs since ``metric`` last improved and signal a stop when ``patience`` runs out.

    ``mode`` is ``max`` or ``min``; a ``patience`` of 0 never stops.
    """

    def __init__(self, patience: int, metric: str, mode: str):
        self.patience = patience
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.best_epoch = 0
        self.epochs_without_improvement = 0

    def update(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Record the metrics of ``epoch`` (counted from 1) and return whether to stop now."""
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        improved = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if improved:
            self.best, self.best_epoch = float(value), epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return self.patience > 0 and self.epochs_without_improvement >= self.patience

    def reason(self, epoch: int, max_epochs: int) -> str:
        """Return why the trial stopped after ``epoch``, for the trial's stop_reason."""
        return (
            f"stopped itself after epoch {epoch} of {max_epochs}: {self.metric} did not improve "
            f"on {self.best:.6g} (epoch {self.best_epoch}) for {self.patience} epochs"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
