"""Training-image augmentation of one trial, through timm's transform factory.

The study's images are shared uint8 arrays (N, C, H, W) at the model's image size. When any
augmentation term differs from its default, each training image of a batch becomes a PIL image.
``timm.data.create_transform(..., is_training=True)`` then crops, flips, jitters, augments,
normalizes and erases it. With every augmentation term at its default, the trainable keeps its
tensor path, which only normalizes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["AugmentedBatches", "augmentation_active", "build_train_transform", "to_pil"]

# The values of the augmentation terms that leave an image as it is. randaugment_magnitude is
# missing because it changes nothing while randaugment_ops is 0.
_OFF = {"randaugment_ops": 0, "crop_scale_min": 1.0, "hflip": 0.0, "color_jitter": 0.0, "random_erasing_prob": 0.0}


def augmentation_active(config: Mapping[str, Any]) -> bool:
    """Return whether any augmentation term changes training images."""
    return any(config[name] != off for name, off in _OFF.items())


def build_train_transform(config: Mapping[str, Any], image_size: int, mean, std):
    """Build timm's training transform for the trial's augmentation terms.

    The transform takes a PIL image and returns a normalized float tensor (C, H, W) at
    ``image_size``. timm leaves color jitter out when RandAugment is on.
    """
    from timm.data import create_transform

    randaugment = None
    if config["randaugment_ops"] > 0:
        randaugment = f"rand-m{config['randaugment_magnitude']}-n{config['randaugment_ops']}"
        if config["color_jitter"] > 0:
            logger.warning(
                "color_jitter %g ignored: timm's transform drops color jitter when RandAugment is on",
                config["color_jitter"],
            )
    return create_transform(
        image_size,
        is_training=True,
        scale=(config["crop_scale_min"], 1.0),
        hflip=config["hflip"],
        color_jitter=config["color_jitter"] or None,
        auto_augment=randaugment,
        mean=tuple(mean),
        std=tuple(std),
        re_prob=config["random_erasing_prob"],
    )


def to_pil(image: np.ndarray):
    """Return a uint8 (C, H, W) image as a PIL image: mode L for 1 channel, RGB for 3."""
    from PIL import Image

    if image.shape[0] == 1:
        return Image.fromarray(image[0])
    return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))


class AugmentedBatches:
    """Training batches drawn through a per-image transform, one image at a time."""

    def __init__(self, images: np.ndarray, transform):
        self.images = images
        self.transform = transform

    def __call__(self, index: np.ndarray):
        """Return the transformed images at ``index`` as one float tensor (B, C, H, W)."""
        import torch

        return torch.stack([self.transform(to_pil(self.images[i])) for i in index])
