"""Optimizer, learning-rate schedule, gradient clipping and weight averaging of one trial.

Everything is built by timm's factories from a resolved trial configuration (see
``spaces.terms``): ``timm.optim.create_optimizer_v2`` for the optimizer,
``timm.scheduler.create_scheduler_v2`` for the schedule, ``timm.utils.dispatch_clip_grad`` for
clipping and ``timm.utils.ModelEmaV3`` for the moving average of the weights.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

from spaces.terms import LR_REFERENCE_BATCH_SIZE

logger = logging.getLogger(__name__)

__all__ = [
    "build_ema",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "check_optimizers",
    "clip_gradients",
    "scaled_lr",
]


def scaled_lr(config: Mapping[str, Any]) -> float:
    """Return the learning rate the trial trains at, after ``lr_scaling`` by its batch size.

    ``linear`` multiplies ``lr`` by batch_size / 256 and ``sqrt`` by sqrt(batch_size / 256),
    as timm's train.py does with its reference batch size of 256.
    """
    ratio = config["batch_size"] / LR_REFERENCE_BATCH_SIZE
    scaling = config["lr_scaling"]
    if scaling == "linear":
        return config["lr"] * ratio
    if scaling == "sqrt":
        return config["lr"] * math.sqrt(ratio)
    return config["lr"]


def build_param_groups(model, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Group the trainable parameters with their weight decay and learning-rate scale.

    Norms, biases and the model's ``no_weight_decay()`` names get no weight decay, as in timm.
    With ``layer_decay`` below 1, timm's layer-wise groups set each group's ``lr_scale``; the
    classifier head's parameters then get their own groups with ``lr_scale`` multiplied by
    ``head_lr_scale``. timm's schedulers apply ``lr_scale`` at every step.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    no_weight_decay = getattr(model, "no_weight_decay", lambda: set())()
    if config["layer_decay"] < 1.0:
        groups = param_groups_layer_decay(
            model,
            weight_decay=config["weight_decay"],
            no_weight_decay_list=no_weight_decay,
            layer_decay=config["layer_decay"],
        )
    else:
        groups = param_groups_weight_decay(
            model, weight_decay=config["weight_decay"], no_weight_decay_list=no_weight_decay
        )
    if config["head_lr_scale"] == 1.0:
        return groups
    return _split_head_groups(model, groups, config["head_lr_scale"])


def _split_head_groups(model, groups: list[dict[str, Any]], head_lr_scale: float) -> list[dict[str, Any]]:
    """Move the classifier's parameters of each group into a group of their own, scaled."""
    from search.weights import classifier_prefixes

    prefixes = classifier_prefixes(model)
    head_ids = {
        id(param)
        for name, param in model.named_parameters()
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)
    }
    if not head_ids:
        # NOTE: only models whose pretrained_cfg names their classifier get a head multiplier.
        logger.warning(
            "head_lr_scale %g ignored: %s names no classifier in its pretrained_cfg",
            head_lr_scale,
            type(model).__name__,
        )
        return groups
    split = []
    for group in groups:
        body = [param for param in group["params"] if id(param) not in head_ids]
        head = [param for param in group["params"] if id(param) in head_ids]
        if body:
            split.append({**group, "params": body})
        if head:
            scale = group.get("lr_scale", 1.0) * head_lr_scale
            split.append({**group, "params": head, "lr_scale": scale})
    return split


def build_optimizer(model, config: Mapping[str, Any]):
    """Build the trial's optimizer with timm's factory over ``build_param_groups``."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        build_param_groups(model, config),
        opt=config["optimizer"],
        lr=scaled_lr(config),
        weight_decay=config["weight_decay"],
        momentum=config["momentum"],
    )


def build_scheduler(optimizer, config: Mapping[str, Any], max_epochs: int, steps_per_epoch: int, mode: str):
    """Build the trial's learning-rate schedule with timm's factory.

    Every schedule but plateau advances per optimizer update (``step_update``); plateau advances
    per epoch on the objective metric, whose direction ``mode`` gives (``max`` or ``min``).
    Both ``step`` and ``step_update`` are safe to call on every schedule.
    """
    from timm.scheduler import create_scheduler_v2

    schedule = config["schedule"]
    per_epoch = schedule == "plateau"
    warmup_epochs = config["warmup_epochs"]
    if per_epoch and not float(warmup_epochs).is_integer():
        # timm's plateau warmup ends only at a whole epoch; a fraction would leave the lr below its peak.
        warmup_epochs = math.ceil(warmup_epochs)
        logger.warning(
            "warmup_epochs %g rounded up to %d: the plateau schedule warms up in whole epochs",
            config["warmup_epochs"],
            warmup_epochs,
        )
    with warnings.catch_warnings():
        # timm 1.0.31 marks PlateauLRScheduler deprecated because its state_dict leaves out the
        # count of bad epochs. The trainable checkpoints the rest (best value and last epoch).
        warnings.filterwarnings("ignore", message="PlateauLRScheduler is deprecated", category=FutureWarning)
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=schedule,
            num_epochs=max_epochs,
            decay_epochs=config["decay_epochs"],
            decay_rate=config["decay_rate"],
            patience_epochs=config["plateau_patience"],
            min_lr=scaled_lr(config) * config["min_lr_ratio"],
            warmup_lr=config["warmup_lr"],
            warmup_epochs=warmup_epochs,
            plateau_mode=mode,
            step_on_epochs=per_epoch,
            updates_per_epoch=steps_per_epoch,
        )
    return scheduler


def clip_gradients(model, config: Mapping[str, Any]) -> None:
    """Clip the gradients by ``clip_grad`` in ``clip_mode``; nothing when ``clip_grad`` is 0."""
    if config["clip_grad"] <= 0:
        return
    from timm.utils import dispatch_clip_grad

    parameters = [param for param in model.parameters() if param.grad is not None]
    dispatch_clip_grad(parameters, value=config["clip_grad"], mode=config["clip_mode"])


def build_ema(model, config: Mapping[str, Any]):
    """Return timm's ``ModelEmaV3`` of ``model`` when ``ema_decay`` is above 0, else None.

    The decay warms up as 1 - (1 + step)**(-2/3) until it reaches ``ema_decay``, so a short
    fine-tune is averaged over its own steps rather than held near the starting weights.
    """
    if config["ema_decay"] <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=config["ema_decay"], use_warmup=True)


def check_optimizers(study) -> list[str]:
    """Build every optimizer the study's space names on a tiny model and take one step.

    The step uses the lowest momentum of the space, so ``sgd`` (Nesterov) with momentum 0 fails
    here. Returns one problem per optimizer that fails, such as timm's bitsandbytes and APEX
    optimizers without CUDA.
    """
    if "optimizer" not in study.space:
        return []
    import torch
    from timm.optim import create_optimizer_v2

    wants_gpu = study.resources.gpus > 0
    if wants_gpu and not torch.cuda.is_available():
        # NOTE: trials run on GPU workers that this process cannot see; they report failures.
        return []
    device = "cuda" if wants_gpu else "cpu"
    momentum = min(study.space["momentum"].values()) if "momentum" in study.space else 0.9
    problems = []
    for name in study.space["optimizer"].values():
        if not isinstance(name, str):
            continue
        layer = torch.nn.Linear(4, 2).to(device)
        try:
            optimizer = create_optimizer_v2(layer, opt=name, lr=1e-3, weight_decay=0.01, momentum=momentum)
            layer(torch.randn(3, 4, device=device)).sum().backward()
            optimizer.step()
        except (AssertionError, ImportError, RuntimeError, TypeError, ValueError) as error:
            problems.append(
                f"space.optimizer: {name!r} failed to build and step on {device} with momentum "
                f"{momentum:g} ({type(error).__name__}: {error}); choose another optimizer, or "
                "raise the lowest momentum if the error is about momentum"
            )
    return problems
