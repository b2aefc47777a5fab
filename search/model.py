"""Build the timm model of one trial: create it, load weights, then fill its slots.

The steps run in this order: create, load pretrained weights, swap activations, replace the
classifier head, freeze the stem and the first stages.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import timm.layers.activations as timm_act
import timm.layers.activations_me as timm_act_me
from timm.models import split_model_name_tag
from timm.models._manipulate import MATCH_PREV_GROUP, group_parameters
from timm.utils import freeze
from torch import nn

from search.weights import (
    LoadReport,
    PretrainedWeights,
    architecture_name,
    classifier_prefixes,
    load_pretrained,
)
from spaces.modules import get_activation, get_head

__all__ = [
    "CONFIG_KEYS",
    "SWAPPABLE_ACTIVATIONS",
    "ModelConfig",
    "ModelError",
    "build_model",
    "check_config",
    "check_model",
    "count_stages",
    "create_model",
    "freeze_stages",
    "replace_head",
    "swap_activations",
]

log = logging.getLogger(__name__)

CONFIG_KEYS = ("activation", "frozen_stages", "head")

# Activation modules that `activation` replaces. Gates are left alone because they scale a
# signal instead of activating it: nn.Sigmoid, nn.Hardsigmoid, nn.Tanh and timm's Sigmoid,
# HardSigmoid, HardSigmoidMe and Tanh (squeeze-excite and attention gates).
SWAPPABLE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Mish,
    timm_act.Swish,
    timm_act.GELU,
    timm_act.GELUTanh,
    timm_act.QuickGELU,
    timm_act.HardSwish,
    timm_act.Mish,
    timm_act.HardMish,
    timm_act.PReLU,
    timm_act_me.SwishMe,
    timm_act_me.HardSwishMe,
    timm_act_me.MishMe,
    timm_act_me.HardMishMe,
)


class ModelError(ValueError):
    """Error for a model name or model setting that cannot be built. The message gives the fix."""


@dataclass(frozen=True)
class ModelConfig:
    """The validated slot choices of one trial."""

    activation: str | None = None  # None keeps the model's own activations
    head: str = "linear"
    head_params: dict[str, int | float] = field(default_factory=dict)
    frozen_stages: int = 0


def check_model(model_name: str, in_chans: int = 3) -> None:
    """Raise ModelError unless timm has a model ``model_name`` and ``in_chans`` is a positive int."""
    if not isinstance(model_name, str) or not timm.is_model(model_name):
        raise ModelError(_unknown_model_message(model_name))
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ModelError(
            f"in_chans must be a positive int (1 for grayscale, 3 for RGB), got {in_chans!r}"
        )


def _unknown_model_message(model_name: object) -> str:
    architecture = (
        split_model_name_tag(model_name)[0] if isinstance(model_name, str) else str(model_name)
    )
    matches = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
    close = f"close matches: {', '.join(matches)}" if matches else "no close matches"
    return (
        f"unknown timm model {model_name!r} ({close}). "
        "Fix the model name; timm.list_models() lists every model"
    )


def check_config(config: Mapping[str, Any] | None) -> ModelConfig:
    """Validate a trial's model config (keys in CONFIG_KEYS) and return it with defaults filled in.

    Raises TypeError for a value of the wrong type, ModelError or UnknownChoiceError for an
    invalid key, name or value.
    """
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise TypeError(f"model config must be a mapping, got {type(config).__name__}")
    unknown = sorted(str(key) for key in config if key not in CONFIG_KEYS)
    if unknown:
        raise ModelError(
            f"unknown model config keys {unknown}; valid keys: {', '.join(CONFIG_KEYS)}"
        )

    activation = config.get("activation")
    if activation is not None:
        get_activation(activation)
    head, head_params = _check_head(config.get("head"))
    frozen_stages = _check_frozen_stages(config.get("frozen_stages", 0))
    return ModelConfig(activation, head, head_params, frozen_stages)


def _check_head(head: Mapping[str, Any] | None) -> tuple[str, dict[str, int | float]]:
    if head is None:
        return "linear", {}
    if not isinstance(head, Mapping):
        raise TypeError(
            f"head must be a mapping such as {{'name': 'mlp', 'hidden': 128}}, got {head!r}"
        )
    if "name" not in head:
        raise ModelError(
            f"head {dict(head)!r} has no 'name'; give one, for example {{'name': 'linear'}}"
        )

    params = {key: value for key, value in head.items() if key != "name"}
    return head["name"], get_head(head["name"]).resolve_params("head", params)


def _check_frozen_stages(frozen_stages: object) -> int:
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
        raise TypeError(f"frozen_stages must be an int >= 0, got {frozen_stages!r}")
    if frozen_stages < 0:
        raise ModelError(f"frozen_stages must be >= 0 (0 trains every layer), got {frozen_stages}")
    return frozen_stages


def build_model(
    model_name: str,
    num_classes: int,
    config: Mapping[str, Any] | None,
    weights: PretrainedWeights | None = None,
    in_chans: int = 3,
) -> tuple[nn.Module, LoadReport | None]:
    """Build ``model_name`` for ``num_classes`` with the slot choices in ``config``.

    Returns the model and the LoadReport of ``weights`` (None without weights).
    Example: ``build_model("resnet10t", 10, {"head": {"name": "mlp", "hidden": 64}})``.
    """
    settings = check_config(config)
    model = create_model(model_name, num_classes, in_chans)
    report = load_pretrained(model, weights) if weights is not None else None

    if settings.activation is not None:
        swap_activations(model, settings.activation)
    report = replace_head(model, settings.head, settings.head_params, report)

    if settings.frozen_stages and weights is None:
        log.warning(
            "frozen_stages=%d freezes randomly initialised layers of %s, because no pretrained "
            "weights were given",
            settings.frozen_stages,
            model_name,
        )
    freeze_stages(model, settings.frozen_stages)
    return model, report


def create_model(model_name: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Create ``model_name`` with random weights, or raise ModelError for an unknown name."""
    check_model(model_name, in_chans)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    return timm.create_model(
        model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans
    )


def swap_activations(model: nn.Module, name: str) -> int:
    """Replace every SWAPPABLE_ACTIVATIONS module with a new ``name`` activation, and return the count.

    Raises ModelError when the model has none, for example because it calls activation
    functions instead of modules.
    """
    entry = get_activation(name)
    paths = [
        path
        for path, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, SWAPPABLE_ACTIVATIONS)
    ]
    if not paths:
        raise ModelError(
            f"model {architecture_name(model)!r} has no activation modules to replace with {name!r} "
            "(it may call activation functions directly). Remove `activation` from the config"
        )

    for path in paths:
        model.set_submodule(path, entry.build())
    log.debug(
        "replaced %d activation modules of %s with %s", len(paths), architecture_name(model), name
    )
    return len(paths)


def replace_head(
    model: nn.Module,
    head: str,
    params: Mapping[str, int | float],
    report: LoadReport | None = None,
) -> LoadReport | None:
    """Replace the model's Linear classifier with a HEADS entry, except ``linear`` keeps timm's own.

    Returns ``report`` with the classifier's tensors moved from ``kept`` to ``new``.
    """
    entry = get_head(head)
    if head == "linear":
        entry.resolve_params("head", params)
        return report

    path = _classifier_path(model)
    classifier = model.get_submodule(path)
    if not isinstance(classifier, nn.Linear):
        raise ModelError(
            f"head {head!r} replaces an nn.Linear classifier, but {architecture_name(model)!r} has "
            f"{type(classifier).__name__} at {path!r}. Use head 'linear' for this model"
        )

    resolved = entry.resolve_params("head", params)
    module = entry.build(classifier.in_features, classifier.out_features, **resolved)
    model.set_submodule(path, module)
    log.debug(
        "replaced classifier %s of %s with head %s %s",
        path,
        architecture_name(model),
        head,
        resolved,
    )
    return _report_after_head_swap(report, path, module)


def _classifier_path(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier")
    if not isinstance(classifier, str) or not classifier:
        raise ModelError(
            f"model {architecture_name(model)!r} names no single classifier in its pretrained_cfg "
            f"(classifier: {classifier!r}). Use head 'linear' for this model"
        )
    return classifier


def _report_after_head_swap(
    report: LoadReport | None, path: str, head: nn.Module
) -> LoadReport | None:
    if report is None:
        return None

    def is_classifier(key: str) -> bool:
        return key.startswith(path + ".")

    replaced = [key for key in report.kept if is_classifier(key)]
    if replaced:
        log.warning(
            "the pretrained classifier %s is replaced by the new head; its weights are dropped",
            path,
        )
    kept = [key for key in report.kept if not is_classifier(key)]
    new = [key for key in report.new if not is_classifier(key)]
    new += [f"{path}.{key}" for key in head.state_dict()]
    return LoadReport(kept=kept, new=new)


def count_stages(model_or_name: nn.Module | str) -> int:
    """Return how many stages ``frozen_stages`` can freeze (the stem and head not counted)."""
    model = model_or_name
    if isinstance(model_or_name, str):
        model = create_model(model_or_name, num_classes=1)
    return len(_stem_and_stage_parameters(model)) - 1


def freeze_stages(model: nn.Module, frozen_stages: int) -> list[str]:
    """Freeze the stem and the first ``frozen_stages`` stages, and return the frozen parameter names.

    BatchNorm layers there become FrozenBatchNorm2d (timm.utils.freeze), so their running
    statistics stay fixed in training. Raises ModelError when there are fewer stages.
    """
    frozen_stages = _check_frozen_stages(frozen_stages)
    if frozen_stages == 0:
        return []

    groups = _stem_and_stage_parameters(model)
    stages = len(groups) - 1
    if frozen_stages > stages:
        raise ModelError(
            f"frozen_stages is {frozen_stages}, but model {architecture_name(model)!r} has {stages} "
            f"stages after its stem. Set frozen_stages from 0 to {stages} (the maximum)"
        )

    names = [name for group in groups[: frozen_stages + 1] for name in group]
    # timm.utils.freeze works on modules, so parameters owned by the root module itself
    # (a ViT's cls_token or pos_embed) are frozen here by name.
    frozen = set(names)
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    owners = sorted({name.rsplit(".", 1)[0] for name in names if "." in name})
    freeze(model, submodules=owners)

    log.debug(
        "froze the stem and %d of %d stages of %s", frozen_stages, stages, architecture_name(model)
    )
    return names


def _stem_and_stage_parameters(model: nn.Module) -> list[list[str]]:
    """Return parameter names per group from timm's coarse group_matcher: stem, then stages.

    Layers that timm attaches to the last stage (EfficientNet's conv_head and bn2, a ViT's
    final norm) are moved to the head group instead, and the head group is dropped.
    """
    if not hasattr(model, "group_matcher"):
        raise ModelError(
            f"model {architecture_name(model)!r} has no group_matcher, so its stages are unknown. "
            "Set frozen_stages to 0"
        )
    matcher = _without_trailing_layers(model.group_matcher(coarse=True))
    groups = group_parameters(model, matcher)
    ordered = [groups[index] for index in sorted(groups)]

    classifier = classifier_prefixes(model)
    patterns = _matcher_patterns(matcher)
    while len(ordered) > 1 and _is_head_group(ordered[-1], classifier, patterns):
        ordered.pop()
    return ordered


def _without_trailing_layers(matcher: Any) -> Any:
    # A (pattern, MATCH_PREV_GROUP) entry joins layers after the blocks to the last block
    # group. Without it, those layers match nothing and fall into the head group.
    if not isinstance(matcher, Mapping):
        return matcher
    result = {}
    for group, spec in matcher.items():
        if isinstance(spec, (list, tuple)):
            spec = [entry for entry in spec if tuple(entry[1] or ()) != MATCH_PREV_GROUP]
        result[group] = spec
    return result


def _matcher_patterns(matcher: Any) -> list[re.Pattern] | None:
    if not isinstance(matcher, Mapping):
        return None
    patterns = []
    for spec in matcher.values():
        if isinstance(spec, str):
            patterns.append(re.compile(spec))
        elif isinstance(spec, (list, tuple)):
            patterns.extend(re.compile(entry[0]) for entry in spec)
    return patterns


def _is_head_group(
    names: list[str], classifier: tuple[str, ...], patterns: list[re.Pattern] | None
) -> bool:
    if any(
        name == prefix or name.startswith(prefix + ".") for name in names for prefix in classifier
    ):
        return True
    if patterns is None:
        return False
    # Names that match no pattern are the ones timm's matcher sorts after every stage.
    return not any(pattern.match(name) for name in names for pattern in patterns)
