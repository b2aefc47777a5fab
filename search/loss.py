"""The training loss of one trial: cross-entropy with label smoothing, or mixup and cutmix.

With ``mixup_alpha`` or ``cutmix_alpha`` above 0, timm's ``Mixup`` mixes each batch and turns
the labels into smoothed soft targets, and timm's ``SoftTargetCrossEntropy`` scores them.
Otherwise the loss is torch's cross-entropy with ``label_smoothing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainingLoss", "build_training_loss", "build_mixup"]


def build_mixup(config: Mapping[str, Any], num_classes: int):
    """Return timm's ``Mixup`` for the trial's terms, or None when mixup and cutmix are off."""
    if config["mixup_alpha"] <= 0 and config["cutmix_alpha"] <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=config["mixup_alpha"],
        cutmix_alpha=config["cutmix_alpha"],
        prob=config["mixup_prob"],
        switch_prob=config["mixup_switch_prob"],
        label_smoothing=config["label_smoothing"],
        num_classes=num_classes,
    )


@dataclass
class TrainingLoss:
    """The criterion of training batches and the mixup that prepares them (None when off)."""

    criterion: Any
    mixup: Any = None

    def prepare(self, x, y):
        """Return the batch and its targets as the criterion takes them, mixed when mixup is on.

        timm's batch-mode Mixup pairs each image with one from the reversed batch and needs an
        even batch size, so an odd batch loses its last image.
        """
        if self.mixup is None:
            return x, y
        if len(y) % 2:
            x, y = x[:-1], y[:-1]
        return self.mixup(x, y)

    def __call__(self, logits, target):
        return self.criterion(logits, target)


def build_training_loss(config: Mapping[str, Any], num_classes: int) -> TrainingLoss:
    """Build the trial's training loss from its label smoothing and mixup terms."""
    import torch
    from timm.loss import SoftTargetCrossEntropy

    mixup = build_mixup(config, num_classes)
    if mixup is not None:
        return TrainingLoss(SoftTargetCrossEntropy(), mixup)
    return TrainingLoss(torch.nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"]))
