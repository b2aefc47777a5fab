"""The Ray Tune trainable: one trial fine-tunes one configuration, epoch by epoch.

Each epoch reports ``epoch``, ``train_loss``, ``val_loss`` and ``val_accuracy`` with a
checkpoint, so the scheduler can stop the trial early and Tune can restore it.
"""

from __future__ import annotations

import logging
import math
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
    """What every trial of a study shares: the model defaults, the budget and the devices."""

    model_name: str
    in_chans: int
    max_epochs: int
    seed: int
    cpus: float
    gpus: float
    normalization: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    precision: str = "auto"
    compile: str = "none"


def train_trial(config: dict[str, Any], data, weights: dict, settings: TrialSettings) -> None:
    """Fine-tune the trial's configuration and report metrics after every epoch.

    ``config["trial"]`` holds the resolved search terms; ``data`` is the study's ``Dataset``;
    ``weights`` maps each backbone to its ``PretrainedWeights`` or None.
    """
    import torch
    from ray import tune

    from search.devices import select_device, worker_placement

    trial_config = config["trial"]
    torch.set_num_threads(max(1, int(settings.cpus)))
    torch.manual_seed(settings.seed)
    runtime = select_device(settings.gpus, settings.precision, settings.compile)

    backbone = trial_config.get("backbone") or settings.model_name
    model = _build(trial_config, backbone, data.num_classes, weights.get(backbone), settings)
    runtime.prepare_model(model)
    loop = _TrainingLoop(model, trial_config, data, settings, backbone, runtime)
    placement = worker_placement(runtime)

    start_epoch = loop.restore(tune.get_checkpoint())
    for epoch in range(start_epoch, settings.max_epochs):
        started = time.perf_counter()
        train_loss = loop.train_epoch(epoch)
        val_loss, val_accuracy = loop.evaluate(data.val_x, data.val_y)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": loop.current_lr(),
            "epoch_seconds": time.perf_counter() - started,
            "placement": placement,
        }
        with tempfile.TemporaryDirectory() as folder:
            loop.save(Path(folder) / CHECKPOINT_FILE, epoch + 1)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _build(trial_config, backbone, num_classes, weights, settings):
    from search.model import build_model
    from spaces.terms import model_config

    model, _ = build_model(
        backbone, num_classes, model_config(trial_config), weights=weights, in_chans=settings.in_chans
    )
    return model


class _TrainingLoop:
    """Optimizer, schedule, loss and the batches of one trial."""

    def __init__(self, model, trial_config, data, settings: TrialSettings, backbone, runtime):
        import torch
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        self.model = model
        self.data = data
        self.runtime = runtime
        self.device = device = runtime.device
        self.batch_size = int(trial_config["batch_size"])
        self.steps_per_epoch = max(1, math.ceil(len(data.train_y) / self.batch_size))
        self.optimizer = create_optimizer_v2(
            model,
            opt="adamw",
            lr=trial_config["lr"],
            weight_decay=trial_config["weight_decay"],
        )
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=settings.max_epochs * self.steps_per_epoch,
            lr_min=trial_config["lr"] * 0.01,
            t_in_epochs=False,
        )
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=trial_config["label_smoothing"])
        self.eval_loss_fn = torch.nn.CrossEntropyLoss()
        mean, std = settings.normalization[backbone]
        # Normalize uint8 pixels as x * scale + shift == (x / 255 - mean) / std.
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std_tensor)).to(device)
        self.shift = (-mean_tensor / std_tensor).to(device)
        self.rng = np.random.default_rng(settings.seed)
        self.num_updates = 0

    def _batch(self, images: np.ndarray, labels: np.ndarray, index):
        import torch

        x = self.runtime.to_device(images[index])
        x = x.float().mul_(self.scale).add_(self.shift)
        y = self.runtime.to_device(labels[index])
        return x, y

    def train_epoch(self, epoch: int) -> float:
        """Run one pass over the training split and return the mean training loss."""
        import torch

        self.model.train()
        order = self.rng.permutation(len(self.data.train_y))
        total, seen = 0.0, 0
        for step in range(self.steps_per_epoch):
            index = np.sort(order[step * self.batch_size : (step + 1) * self.batch_size])
            if len(index) < 2 and step > 0:
                continue  # A batch of one breaks batch norm in training mode.
            x, y = self._batch(self.data.train_x, self.data.train_y, index)
            loss = self.loss_fn(self.model(x), y)
            if not torch.isfinite(loss):
                raise TrialDiverged(
                    f"training loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}; "
                    "lower the learning rate (or the upper bound of lr in the space)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.num_updates += 1
            self.scheduler.step_update(self.num_updates)
            total += loss.item() * len(index)
            seen += len(index)
        return total / max(seen, 1)

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """Return the mean loss and the accuracy on ``images``."""
        import torch

        self.model.eval()
        total_loss, correct = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(labels), EVAL_BATCH_SIZE):
                index = np.arange(start, min(start + EVAL_BATCH_SIZE, len(labels)))
                x, y = self._batch(images, labels, index)
                logits = self.model(x)
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
            "epoch": epoch,
            "num_updates": self.num_updates,
            "rng": self.rng.bit_generator.state,
        }
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
        self.num_updates = state["num_updates"]
        self.scheduler.step_update(self.num_updates)
        self.rng.bit_generator.state = state["rng"]
        logger.info("Restored the trial from its checkpoint at epoch %d", state["epoch"])
        return state["epoch"]
