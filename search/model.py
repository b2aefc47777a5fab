"""Build the timm model of one trial: create it, load weights, then fill its slots.

The steps run in this order: create (with timm's drop_rate and drop_path_rate), load
pretrained weights, swap norm layers, swap the global pool, swap activations, replace the
classifier head, freeze the stem and the first stages, freeze batch-norm statistics.

Every swap keeps each tensor of the replaced module whose name and shape still fit, and the
LoadReport that ``build_model`` returns lists exactly the pretrained tensors that survived.
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
from timm.layers import DropPath
from timm.utils import freeze
from torch import nn

from search.weights import (
    LoadReport,
    PretrainedWeights,
    architecture_name,
    classifier_prefixes,
    load_pretrained,
)
from spaces.modules import get_activation, get_head, get_norm, get_pool

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
    "freeze_bn_statistics",
    "freeze_stages",
    "replace_head",
    "swap_activations",
    "swap_norms",
    "swap_pool",
]

log = logging.getLogger(__name__)

CONFIG_KEYS = (
    "activation",
    "frozen_stages",
    "head",
    "norm",
    "pool",
    "drop_rate",
    "drop_path_rate",
    "freeze_bn_stats",
)

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
    head_params: dict[str, int | float | str] = field(default_factory=dict)
    frozen_stages: int = 0
    norm: str | None = None  # None keeps the model's own norm layers
    pool: str | None = None  # None keeps the model's own global pool
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    freeze_bn_stats: bool = False


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
    norm, pool = config.get("norm"), config.get("pool")
    if norm is not None:
        get_norm(norm)
    if pool is not None:
        get_pool(pool)
    return ModelConfig(
        activation,
        head,
        head_params,
        frozen_stages,
        norm,
        pool,
        _check_rate(config, "drop_rate"),
        _check_rate(config, "drop_path_rate"),
        _check_flag(config, "freeze_bn_stats"),
    )


def _check_rate(config: Mapping[str, Any], key: str) -> float:
    value = config.get(key) or 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ModelError(f"{key} must be in [0, 1) (0 turns it off), got {value!r}")
    return float(value)


def _check_flag(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, got {value!r}")
    return value


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
    model = create_model(
        model_name,
        num_classes,
        in_chans,
        drop_rate=settings.drop_rate,
        drop_path_rate=settings.drop_path_rate,
    )
    report = load_pretrained(model, weights) if weights is not None else None
    loaded_shapes = {key: tensor.shape for key, tensor in model.state_dict().items()}

    if settings.norm is not None:
        swap_norms(model, settings.norm)
    if settings.pool is not None:
        swap_pool(model, settings.pool)
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
    if settings.freeze_bn_stats:
        freeze_bn_statistics(model)
    return model, _surviving_tensors(model, report, loaded_shapes)


def _surviving_tensors(
    model: nn.Module, report: LoadReport | None, loaded_shapes: Mapping[str, Any]
) -> LoadReport | None:
    """Return the report of the finished model: kept tensors whose name and shape survived.

    Swaps copy every tensor whose name and shape fit into the new module, and replace_head
    already moved the classifier to ``new``, so a kept name with its loaded shape contains the
    pretrained value.
    """
    if report is None:
        return None
    kept = set(report.kept)
    state = model.state_dict()
    survived = [
        key for key in state if key in kept and state[key].shape == loaded_shapes.get(key)
    ]
    surviving = set(survived)
    return LoadReport(kept=survived, new=[key for key in state if key not in surviving])


def create_model(
    model_name: str,
    num_classes: int,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Create ``model_name`` with random weights, or raise ModelError for an unknown name.

    ``drop_rate`` and ``drop_path_rate`` go to timm only when above 0, so models that do not
    take them still build. A model that takes drop_path_rate but builds no DropPath layer
    raises ModelError, since the rate would be ignored.
    """
    check_model(model_name, in_chans)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    rates = {name: rate for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if rate}
    try:
        model = timm.create_model(
            model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **rates
        )
    except TypeError as error:
        rejected = [name for name in rates if name in str(error)]
        if not rejected:
            raise
        raise ModelError(
            f"model {model_name!r} does not accept {rejected[0]} (timm: {error}). "
            f"Remove {rejected[0]} from the space or choose another model"
        ) from None
    if drop_path_rate and not any(isinstance(module, DropPath) for module in model.modules()):
        raise ModelError(
            f"model {model_name!r} takes drop_path_rate but has no DropPath layers, so the rate "
            "would be ignored. Remove drop_path_rate from the space or choose another model"
        )
    return model


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path``, first copying the old module's tensors whose name and shape fit."""
    old_state = model.get_submodule(path).state_dict()
    new_state = new.state_dict()
    fitting = {
        key: tensor
        for key, tensor in old_state.items()
        if key in new_state and new_state[key].shape == tensor.shape
    }
    new.load_state_dict(fitting, strict=False)
    model.set_submodule(path, new)


def _reject(model: nn.Module, slot: str, name: str, reason: str | None) -> None:
    if reason is not None:
        raise ModelError(
            f"model {architecture_name(model)!r} cannot take {slot} {name!r}: {reason}. "
            f"Remove {name!r} from the {slot} choices or choose another model"
        )


def swap_norms(model: nn.Module, name: str) -> int:
    """Replace every BatchNorm2d of ``model`` with the NORMS entry ``name``; return the count."""
    entry = get_norm(name)
    _reject(model, "norm", name, entry.rejects(model))
    paths = [
        path for path, module in model.named_modules() if path and isinstance(module, nn.BatchNorm2d)
    ]
    for path in paths:
        old = model.get_submodule(path)
        new = entry.build(old)
        if new is not old:
            _replace_module(model, path, new)
    log.debug("replaced %d norm layers of %s with %s", len(paths), architecture_name(model), name)
    return len(paths)


def swap_pool(model: nn.Module, name: str) -> None:
    """Replace the model's ``global_pool`` with the POOLS entry ``name``.

    A pool that changes the feature width (catavgmax) also gets a new Linear classifier.
    """
    entry = get_pool(name)
    _reject(model, "pool", name, entry.rejects(model))
    old_multiple = _feature_multiple(model.global_pool)
    _replace_module(model, "global_pool", entry.build(model.global_pool))

    new_multiple = _feature_multiple(model.global_pool)
    if new_multiple != old_multiple:
        # The catavgmax entry accepts only models whose classifier takes the pooled features.
        path = _classifier_path(model)
        classifier = model.get_submodule(path)
        width = classifier.in_features // old_multiple * new_multiple
        _replace_module(model, path, nn.Linear(width, classifier.out_features))
    log.debug("replaced the global pool of %s with %s", architecture_name(model), name)


def _feature_multiple(pool: nn.Module) -> int:
    from timm.layers import SelectAdaptivePool2d

    return pool.feat_mult() if isinstance(pool, SelectAdaptivePool2d) else 1


def freeze_bn_statistics(model: nn.Module) -> int:
    """Keep every BatchNorm2d in eval mode, so it normalizes with its running statistics.

    Its affine weights still train. Returns the number of layers changed.
    """
    layers = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for layer in layers:
        layer.register_forward_pre_hook(_stay_in_eval_mode)
    return len(layers)


def _stay_in_eval_mode(module: nn.Module, args: Any) -> None:
    # model.train() sets every layer to training mode before each epoch; this undoes it for
    # the batch-norm layer just before it runs.
    module.train(False)


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
