"""Checks that need timm and the data, run before any trial starts.

``prepare`` resolves every backbone's pretrained weights once, builds each backbone with
them on a tiny batch at the study's image size, checks the frozen-stage range against each
backbone, and decodes the data set. Everything it returns is shared with all trials.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search.optim import check_optimizers
from search.study import Study, StudyError

logger = logging.getLogger(__name__)

__all__ = ["Prepared", "prepare", "pretrained_source"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Prepared:
    """The data set and each backbone's weights, shared by every trial of a study."""

    dataset: Any
    weights: dict[str, Any]
    normalization: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    # The model factory's callable when the study names model.factory; see search.factories.
    model_factory: Any = None
    slot_choices: list = field(default_factory=list)  # search.slots.SlotChoice per built choice


def pretrained_source(study: Study, backbone: str) -> str:
    """Return the weight source ``model.pretrained`` gives for ``backbone``."""
    pretrained = study.model.pretrained
    if isinstance(pretrained, Mapping):
        return pretrained.get(backbone, "none")
    return "none" if pretrained in (None, False) else pretrained


def prepare(study: Study, load_data: bool = True) -> Prepared:
    """Check the study against timm and the data, and load what the trials share.

    Raises:
        StudyError: listing every problem found.
    """
    if study.model.factory is not None:
        from search.factories import prepare_factory_model

        return prepare_factory_model(study, load_data)
    problems = _check_pretrained_keys(study)
    weights, normalization = {}, {}
    for backbone in study.backbones:
        try:
            weights[backbone] = _check_backbone(study, backbone)
        except StudyError as error:
            problems += error.problems
            continue
        normalization[backbone] = _normalization(study, backbone, weights[backbone])
    slot_rows = []
    if not problems:
        from search.slots import check_slot_choices

        slot_rows, slot_problems = check_slot_choices(study, weights)
        problems += slot_problems
    problems += check_optimizers(study)
    if problems:
        raise StudyError(problems)
    dataset = None
    if load_data and study.data.factory is not None:
        from search.factories import load_factory_dataset

        dataset = load_factory_dataset(study)
    elif load_data:
        from search.data import load_dataset

        dataset = load_dataset(
            study.data, study.model.image_size, study.model.in_chans, max_batch_size(study)
        )
    if dataset is not None:
        check_batch_fits(study, dataset)
    return Prepared(dataset, weights, normalization, slot_choices=slot_rows)


def check_batch_fits(study: Study, dataset) -> None:
    """Raise StudyError when the train split has fewer samples than the largest batch_size.

    A trial would train on one short batch per epoch, so such a study usually ends at chance.
    """
    train_count, largest = len(dataset.train_y), max_batch_size(study)
    if train_count < largest:
        raise StudyError(
            f"data: the train split has {train_count} samples, fewer than the largest batch_size "
            f"{largest} in the space; lower space.batch_size to at most {train_count} or add data"
        )


def max_batch_size(study: Study) -> int:
    """Return the largest batch_size a trial of ``study`` may get (the term's default if not searched)."""
    from spaces.terms import TERMS

    if "batch_size" not in study.space:
        return int(TERMS["batch_size"].default)
    return max(int(value) for value in study.space["batch_size"].values())


def _check_pretrained_keys(study: Study) -> list[str]:
    pretrained = study.model.pretrained
    if not isinstance(pretrained, Mapping):
        return []
    backbones = study.backbones
    problems = []
    for name, source in pretrained.items():
        if name not in backbones:
            problems.append(
                f"model.pretrained.{name}: {name!r} is not a backbone of this study "
                f"(backbones: {', '.join(backbones)}); remove it or add it to space.backbone"
            )
        elif not isinstance(source, str):
            problems.append(
                f"model.pretrained.{name}: expected a weight source as text, got {source!r}; "
                "write none, hub, package:NAME or a file path"
            )
    return problems


def _check_backbone(study: Study, backbone: str):
    """Resolve ``backbone``'s weights and build it once; raise StudyError on any problem."""
    from search.model import ModelError, build_model, check_model, count_stages
    from search.weights import WeightsError, resolve_pretrained

    key = "space.backbone" if "backbone" in study.space else "model.name"
    try:
        check_model(backbone, in_chans=study.model.in_chans)
    except ModelError as error:
        raise StudyError(f"{key}: {error}") from None
    source = pretrained_source(study, backbone)
    try:
        weights = resolve_pretrained(_resolve_path(study, source), backbone)
    except WeightsError as error:
        raise StudyError(f"model.pretrained: {error}") from None
    problems = _check_frozen_stages(study, backbone, count_stages(backbone))
    if problems:
        raise StudyError(problems)
    try:
        model, report = build_model(backbone, 10, {}, weights=weights, in_chans=study.model.in_chans)
        _forward_tiny_batch(model, study)
    except (ModelError, WeightsError) as error:
        raise StudyError(f"model.pretrained: {error}") from None
    if report is not None:
        logger.info(
            "%s: %d pretrained tensors fit from %s, %d initialised anew",
            backbone,
            len(report.kept),
            weights.source,
            len(report.new),
        )
    return weights


def _resolve_path(study: Study, source: str) -> str:
    """Resolve a relative weight file against the study file's folder."""
    if source in ("none", "hub") or source.startswith("package:") or study.source is None:
        return source
    from pathlib import Path

    path = Path(source).expanduser()
    if not path.is_absolute():
        beside_study = study.source.parent / path
        if beside_study.exists() or not path.exists():
            return str(beside_study)
    return str(path)


def _check_frozen_stages(study: Study, backbone: str, stages: int) -> list[str]:
    if "frozen_stages" not in study.space:
        return []
    highest = max(study.space["frozen_stages"].values())
    if isinstance(highest, int) and highest > stages:
        return [
            f"space.frozen_stages: {highest} is more than the {stages} stages of {backbone}; "
            f"lower the largest value to at most {stages}"
        ]
    return []


def _forward_tiny_batch(model, study: Study) -> None:
    """Run forward and backward on two random images, so a size the model cannot take fails now."""
    import torch

    size = study.model.image_size
    x = torch.randn(2, study.model.in_chans, size, size)
    try:
        model.train()
        model(x).sum().backward()
    except (RuntimeError, AssertionError) as error:
        # timm checks input sizes with assert (a ViT's patch embedding, for one).
        first_line = (str(error) or type(error).__name__).splitlines()[0]
        raise StudyError(
            f"model.image_size: {study.model.name} cannot take {size}x{size} images "
            f"({first_line}); {_image_size_fix(model, size)}"
        ) from None


def _image_size_fix(model, size: int) -> str:
    """Return how to fix an image size the model rejected: its fixed size, or a larger one."""
    patch_embed = getattr(model, "patch_embed", None)
    fixed = getattr(patch_embed, "img_size", None) if patch_embed is not None else None
    if fixed is not None and not getattr(patch_embed, "dynamic_img_size", False):
        height, width = fixed if isinstance(fixed, (tuple, list)) else (fixed, fixed)
        return (
            f"this model takes exactly {height}x{width} images, so set image_size: {height}, or "
            "pick a model made for your size"
        )
    return "choose a larger image_size"


def _normalization(study: Study, backbone: str, weights) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the per-channel mean and std: the study's, the weights', or timm's defaults."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        mean, std = weights.mean, weights.std
    else:
        import timm

        config = timm.get_pretrained_cfg(backbone)
        if config is not None:
            mean, std = config.mean or mean, config.std or std
    if study.model.mean is not None:
        mean = tuple(study.model.mean)
    if study.model.std is not None:
        std = tuple(study.model.std)
    channels = study.model.in_chans
    if len(mean) != channels:
        mean = (sum(mean) / len(mean),) * channels
    if len(std) != channels:
        std = (sum(std) / len(std),) * channels
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
