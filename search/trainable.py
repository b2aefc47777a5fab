"""The Ray Tune trainable: one trial fine-tunes one configuration, epoch by epoch.

Each epoch reports ``epoch``, ``train_loss``, ``val_loss`` and ``val_accuracy`` (and
``val_loss_ema``, ``val_accuracy_ema`` when ``ema_decay`` is on) with a checkpoint, so the
scheduler can stop the trial early and Tune can restore it. The last report of a trial that ran
to its end, or stopped itself by ``early_stopping_patience``, carries ``finished: True``.

The parts are built in their own modules: :mod:`search.optim` (optimizer, schedule, clipping,
EMA), :mod:`search.loss` (loss and mixup), :mod:`search.augment` (training transforms) and
:mod:`search.stopping` (early stopping).
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["TrialDiverged", "TrialSettings", "train_trial"]

CHECKPOINT_FILE = "trial.pt"
EVAL_BATCH_SIZE = 256


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrialSettings:
    """Settings that every trial of a study shares: model defaults, budget, devices and objective.

    ``metric`` and its Ray Tune ``mode`` drive early stopping and plateau schedules.
    """

    model_name: str
    in_chans: int
    max_epochs: int
    seed: int
    cpus: float
    gpus: float
    normalization: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    metric: str = "val_accuracy"
    mode: str = "max"
    # A model factory's callable builds the model in place of timm; see search.factories.
    model_factory: Any = None
    precision: str = "auto"
    compile: str = "none"


def train_trial(config: dict[str, Any], data, weights: dict, settings: TrialSettings) -> None:
    """Fine-tune the trial's configuration and report metrics after every epoch.

    ``config["trial"]`` contains the resolved search terms; ``data`` is the study's ``Dataset``;
    ``weights`` maps each backbone to its ``PretrainedWeights`` or None.
    """
    import torch
    from ray import tune

    from search.devices import select_device, worker_placement

    trial_config = config["trial"]
    torch.set_num_threads(max(1, int(settings.cpus)))
    _seed_everything(settings.seed)
    runtime = select_device(settings.gpus, settings.precision, settings.compile)

    backbone = trial_config.get("backbone") or settings.model_name
    if settings.model_factory is not None:
        from search.factories import build_factory_model

        model = build_factory_model(settings.model_factory, trial_config, data)
    else:
        model = _build(trial_config, backbone, data.num_classes, weights.get(backbone), settings)
    runtime.prepare_model(model)
    loop = _TrainingLoop(model, trial_config, data, settings, backbone, runtime)
    placement = worker_placement(runtime)

    start_epoch = loop.restore(tune.get_checkpoint())
    for epoch in range(start_epoch, settings.max_epochs):
        metrics = loop.run_epoch(epoch)
        metrics["placement"] = placement
        with tempfile.TemporaryDirectory() as folder:
            loop.save(Path(folder) / CHECKPOINT_FILE, epoch + 1)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        if metrics["finished"]:
            return


def _seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator (timm's Mixup) and Python's (timm's transforms)."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _build(trial_config, backbone, num_classes, weights, settings):
    from search.model import build_model
    from spaces.terms import model_config

    model, _ = build_model(
        backbone, num_classes, model_config(trial_config), weights=weights, in_chans=settings.in_chans
    )
    return model


class _TrainingLoop:
    """Optimizer, schedule, loss, augmentation, EMA, early stopping and the batches of one trial."""

    def __init__(self, model, trial_config, data, settings: TrialSettings, backbone, runtime):
        import torch

        from search.augment import AugmentedBatches, augmentation_active, build_train_transform
        from search.loss import build_training_loss
        from search.optim import build_ema, build_optimizer, build_scheduler
        from search.stopping import EarlyStopping

        self.model = model
        self.config = trial_config
        self.data = data
        self.settings = settings
        self.runtime = runtime
        self.device = device = runtime.device
        self.batch_size = int(trial_config["batch_size"])
        self.steps_per_epoch = max(1, math.ceil(len(data.train_y) / self.batch_size))
        self.optimizer = build_optimizer(model, trial_config)
        self.scheduler = build_scheduler(
            self.optimizer, trial_config, settings.max_epochs, self.steps_per_epoch, settings.mode
        )
        self.loss = build_training_loss(trial_config, data.num_classes)
        self.eval_loss_fn = torch.nn.CrossEntropyLoss()
        self.ema = build_ema(model, trial_config)
        self.stopping = EarlyStopping(trial_config["early_stopping_patience"], settings.metric, settings.mode)
        mean, std = settings.normalization[backbone]
        self.augment = None
        if augmentation_active(trial_config):
            transform = build_train_transform(trial_config, data.train_x.shape[-1], mean, std)
            self.augment = AugmentedBatches(data.train_x, transform)
        # Normalize uint8 pixels as x * scale + shift == (x / 255 - mean) / std.
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_tensor)).to(device)
        self.shift = (-mean_tensor / std_tensor).to(device)
        self.rng = np.random.default_rng(settings.seed)
        self.num_updates = 0

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train and validate one epoch, step the epoch schedule and return the epoch's metrics."""
        started = time.perf_counter()
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": self.train_epoch(epoch)}
        metrics.update(self.validate())
        metrics["lr"] = self.current_lr()
        self.scheduler.step(epoch + 1, metrics.get(self.settings.metric))
        metrics["epoch_seconds"] = time.perf_counter() - started
        stop = self.stopping.update(epoch + 1, metrics)
        metrics["finished"] = stop or epoch + 1 >= self.settings.max_epochs
        if stop and epoch + 1 < self.settings.max_epochs:
            metrics["stop_reason"] = self.stopping.reason(epoch + 1, self.settings.max_epochs)
        return metrics

    def _batch(self, images: np.ndarray, labels: np.ndarray, index):
        x = self.runtime.to_device(images[index]).float()
        if self.data.kind == "image":
            x = x.mul_(self.scale).add_(self.shift)
        y = self.runtime.to_device(labels[index])
        return x, y

    def _train_batch(self, index):
        """Return a training batch: augmented through timm's transform, or only normalized."""
        if self.augment is None:
            return self._batch(self.data.train_x, self.data.train_y, index)
        import torch

        x = self.augment(index).to(self.device, non_blocking=True)
        if self.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.runtime.to_device(self.data.train_y[index])
        return x, y

    def train_epoch(self, epoch: int) -> float:
        """Run one pass over the training split and return the mean training loss."""
        self.model.train()
        order = self.rng.permutation(len(self.data.train_y))
        total, seen = 0.0, 0
        for step in range(self.steps_per_epoch):
            index = np.sort(order[step * self.batch_size : (step + 1) * self.batch_size])
            if len(index) < 2 and step > 0:
                continue  # A batch of one breaks batch norm in training mode.
            x, y = self._train_batch(index)
            total += self._train_step(x, y, epoch, step) * len(index)
            seen += len(index)
        return total / max(seen, 1)

    def _train_step(self, x, y, epoch: int, step: int) -> float:
        """Take one optimizer update on the batch and return its loss."""
        import torch

        from search.optim import clip_gradients

        x, target = self.loss.prepare(x, y)
        loss = self.loss(self.runtime.forward(self.model, x), target)
        if not torch.isfinite(loss):
            raise TrialDiverged(
                f"training loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}; "
                "lower the learning rate (or the upper bound of lr in the space)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.model, self.config)
        self.optimizer.step()
        self.num_updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)
        self.scheduler.step_update(self.num_updates)
        return loss.item()

    def validate(self) -> dict[str, float]:
        """Return the validation loss and accuracy of the model, and of its EMA when it has one."""
        val_loss, val_accuracy = self.evaluate(self.data.val_x, self.data.val_y)
        metrics = {"val_loss": val_loss, "val_accuracy": val_accuracy}
        if self.ema is not None:
            ema_loss, ema_accuracy = self.evaluate(self.data.val_x, self.data.val_y, self.ema.module)
            metrics.update(val_loss_ema=ema_loss, val_accuracy_ema=ema_accuracy)
        return metrics

    def evaluate(self, images: np.ndarray, labels: np.ndarray, model=None) -> tuple[float, float]:
        """Return the mean loss and the accuracy of ``model`` (the trial's own by default) on ``images``."""
        import torch

        model = self.model if model is None else model
        model.eval()
        total_loss, correct = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(labels), EVAL_BATCH_SIZE):
                index = np.arange(start, min(start + EVAL_BATCH_SIZE, len(labels)))
                x, y = self._batch(images, labels, index)
                logits = self.runtime.forward(model, x)
                total_loss += self.eval_loss_fn(logits, y).item() * len(index)
                correct += (logits.argmax(dim=1) == y).sum().item()
        return total_loss / len(labels), correct / len(labels)

    def current_lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    def save(self, path: Path, epoch: int) -> None:
        import torch

        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.stopping.state_dict(),
            "epoch": epoch,
            "num_updates": self.num_updates,
            "rng": self.rng.bit_generator.state,
        }
        if self.ema is not None:
            state["model_ema"] = self.ema.module.state_dict()
        torch.save(state, path)

    def restore(self, checkpoint) -> int:
        """Load ``checkpoint`` if Tune gave one and return the epoch to start from."""
        if checkpoint is None:
            return 0
        import torch

        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stopping.load_state_dict(state["early_stopping"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["model_ema"])
        self.num_updates = state["num_updates"]
        self.scheduler.step_update(self.num_updates)
        self.rng.bit_generator.state = state["rng"]
        logger.info("Restored the trial from its checkpoint at epoch %d", state["epoch"])
        return state["epoch"]
