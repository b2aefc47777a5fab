"""Model cost (parameters, multiply-accumulates, CPU latency) and weight carry-over per trial.

The runner's driver builds each trial's model once per model configuration, before the trial
starts, with the same ``build_model`` call and weights as the trainable. That build gives
the exact count of pretrained tensors the trial keeps, and, once per architecture, its cost.
Both are cached, so a configuration seen before costs nothing.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "ArchitectureMeter",
    "TrialArchitecture",
    "architecture_key",
    "count_macs",
    "count_params",
    "measure_latency_ms",
]

# Model terms that change training but not the network a forward pass runs.
TRAINING_ONLY_TERMS = ("frozen_stages", "freeze_bn_stats", "drop_rate", "drop_path_rate")
LATENCY_WARMUP = 3
LATENCY_REPEATS = 10


def count_params(model) -> int:
    """Return the number of parameters of ``model``, frozen ones included."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_macs(model, image_size: int, in_chans: int) -> int:
    """Return the multiply-accumulates of one eval-mode forward pass on one image.

    Counted by torch.utils.flop_counter.FlopCounterMode, which counts matrix products and
    convolutions (2 FLOPs per multiply-accumulate) but not element-wise operations.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def measure_latency_ms(model, image_size: int, in_chans: int) -> float:
    """Return the median milliseconds of an eval-mode forward pass on one image, one CPU thread.

    NOTE: the driver measures it while trials may train on the same cores, so the value is
    noisy. It ranks the architectures of one run and is no benchmark.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, image_size, image_size)
    times = []
    try:
        with torch.inference_mode():
            for _ in range(LATENCY_WARMUP):
                model(x)
            for _ in range(LATENCY_REPEATS):
                started = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - started) * 1000.0)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return statistics.median(times)


def architecture_key(backbone: str, model_config: Mapping[str, Any]) -> str:
    """Return the cache key of the network ``backbone`` with ``model_config`` builds."""
    network = {name: value for name, value in model_config.items() if name not in TRAINING_ONLY_TERMS}
    return json.dumps({"backbone": backbone, **network}, sort_keys=True)


@dataclass(frozen=True)
class TrialArchitecture:
    """Weight carry-over and cost of one trial's model, as the driver measured them."""

    weights_kept: int
    weights_new: list[str]
    pretrained: bool
    cost: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """Return one line for the trial log."""
        if not self.pretrained:
            return f"no pretrained weights; all {len(self.weights_new)} tensors initialised anew"
        shown = ", ".join(self.weights_new[:5]) + (", ..." if len(self.weights_new) > 5 else "")
        listed = f" ({shown})" if self.weights_new else ""
        return (
            f"kept {self.weights_kept} pretrained tensors, "
            f"{len(self.weights_new)} initialised anew{listed}"
        )


class ArchitectureMeter:
    """Builds each trial's model in the driver and caches carry-over and cost per configuration.

    ``weights`` maps each backbone to its PretrainedWeights or None, as preflight returns them;
    ``metrics`` names the cost metrics to measure (a subset of ``search.objectives.COST_METRICS``).
    """

    def __init__(
        self,
        default_backbone: str,
        num_classes: int,
        image_size: int,
        in_chans: int,
        weights: Mapping[str, Any],
        metrics: tuple[str, ...] = (),
    ) -> None:
        self.default_backbone = default_backbone
        self.num_classes = num_classes
        self.image_size = image_size
        self.in_chans = in_chans
        self.weights = weights
        self.metrics = tuple(metrics)
        self._trials: dict[str, TrialArchitecture] = {}
        self._costs: dict[str, dict[str, float]] = {}

    def measure(self, trial_config: Mapping[str, Any]) -> TrialArchitecture:
        """Return the carry-over and cost of the model ``trial_config`` builds (cached)."""
        from spaces.terms import model_config

        backbone = trial_config.get("backbone") or self.default_backbone
        config = model_config(trial_config)
        key = json.dumps({"backbone": backbone, **config}, sort_keys=True)
        if key not in self._trials:
            self._trials[key] = self._build_and_measure(backbone, config)
        return self._trials[key]

    def _build_and_measure(self, backbone: str, config: dict[str, Any]) -> TrialArchitecture:
        from search.model import build_model

        weights = self.weights.get(backbone)
        model, report = build_model(
            backbone, self.num_classes, config, weights=weights, in_chans=self.in_chans
        )
        if report is None:
            kept, new = 0, list(model.state_dict())
        else:
            kept, new = len(report.kept), list(report.new)

        cost_key = architecture_key(backbone, config)
        if cost_key not in self._costs:
            self._costs[cost_key] = self._cost(model)
        return TrialArchitecture(kept, new, weights is not None, dict(self._costs[cost_key]))

    def _cost(self, model) -> dict[str, float]:
        cost: dict[str, float] = {}
        if "params" in self.metrics:
            cost["params"] = count_params(model)
        if "macs" in self.metrics:
            cost["macs"] = count_macs(model, self.image_size, self.in_chans)
        if "latency_ms" in self.metrics:
            cost["latency_ms"] = measure_latency_ms(model, self.image_size, self.in_chans)
        return cost
