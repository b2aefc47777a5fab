"""Registries of replaceable modules ("slots") keyed by short lowercase names.

Each entry describes itself with a one-line description and a builder that returns a new
``nn.Module``. Head entries also list the parameters their builder takes, with kind, default
and valid range, so a study can be validated and searched from the registry alone. Entries
also state which models accept them (``accepts``), whether the module has tensors of its own
(``has_weights``) and how pretrained tensors carry over (``carry_over``). ``SLOTS`` maps each
slot name to its registry.

Norm entries build from the module they replace (``build(old)``), so they keep its
activation and eps. Pool entries build from the model's ``global_pool``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "HEADS",
    "NORMS",
    "POOLS",
    "SLOTS",
    "CosineClassifier",
    "GeneralizedMeanPool",
    "ParamSpec",
    "SlotEntry",
    "UnknownChoiceError",
    "get_activation",
    "get_head",
    "get_norm",
    "get_pool",
    "get_slot_entry",
]


class UnknownChoiceError(ValueError):
    """Error for a name that is not in a registry. The message lists every valid name."""

    def __init__(self, kind: str, value: object, choices: list[str]) -> None:
        self.kind = kind
        self.value = value
        self.choices = sorted(choices)
        if self.choices:
            valid = f"valid {kind}s: {', '.join(self.choices)}"
        else:
            valid = f"there are no valid {kind}s"
        super().__init__(f"unknown {kind} {value!r}; {valid}")


@dataclass(frozen=True)
class ParamSpec:
    """One numeric parameter of a slot entry: kind, default and valid range.

    The range is ``low <= value`` and, when ``high`` is set, also ``value <= high``
    (``high_inclusive``) or ``value < high``.
    """

    name: str
    kind: str  # "int", "float" or "name" (one of ``choices``)
    default: int | float | str
    low: int | float | None = None
    high: int | float | None = None
    high_inclusive: bool = True
    description: str = ""
    choices: Callable[[], list[str]] | None = None  # the valid names of a "name" parameter

    def __post_init__(self) -> None:
        if self.kind not in ("int", "float", "name"):
            raise ValueError(
                f"parameter {self.name!r}: kind must be 'int', 'float' or 'name', not {self.kind!r}"
            )
        if (self.kind == "name") != (self.choices is not None):
            raise ValueError(f"parameter {self.name!r}: give choices exactly for kind 'name'")

    def describe_range(self) -> str:
        """Return the valid range as text, for example ``0 <= dropout < 1``."""
        if self.kind == "name":
            return f"{self.name} one of {', '.join(sorted(self.choices()))}"
        if self.high is None:
            return f"{self.name} >= {self.low}"
        upper = "<=" if self.high_inclusive else "<"
        return f"{self.low} <= {self.name} {upper} {self.high}"

    def validate(self, value: object, owner: str) -> int | float:
        """Return ``value`` if it has the right kind and lies in range, else raise.

        Raises TypeError for a value of the wrong kind and ValueError for one out of range.
        Both messages name ``owner`` (for example ``head 'mlp'``) and the parameter.
        """
        if not _has_kind(value, self.kind):
            raise TypeError(
                f"{owner} parameter {self.name!r} must be {self.kind}, "
                f"got {value!r} of type {type(value).__name__}"
            )
        if not self._in_range(value):
            raise ValueError(
                f"{owner} parameter {self.name!r} is {value!r}, outside the valid range "
                f"{self.describe_range()}"
            )
        return value

    def _in_range(self, value: int | float | str) -> bool:
        if self.kind == "name":
            return value in self.choices()
        if not math.isfinite(value) or value < self.low:
            return False
        if self.high is None:
            return True
        return value <= self.high if self.high_inclusive else value < self.high


def _has_kind(value: object, kind: str) -> bool:
    # bool is a subclass of int, but `hidden: true` in a study is a mistake, not 1.
    if isinstance(value, bool):
        return False
    if kind == "name":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int)
    return isinstance(value, (int, float))


@dataclass(frozen=True)
class SlotEntry:
    """A registry entry: a named module builder, the parameters it takes and what it supports.

    ``accepts(model)`` returns None when ``model`` (a timm model) can take this entry, else
    the reason it cannot, which completes "model X cannot take ... because ...".
    ``carry_over`` describes in words which pretrained tensors the swap keeps.
    """

    name: str
    description: str
    build: Callable[..., nn.Module]
    params: tuple[ParamSpec, ...] = ()
    has_weights: bool = False
    carry_over: str = "nothing to carry: the module has no tensors"
    accepts: Callable[[nn.Module], str | None] | None = None
    # Names of the replaced module's tensors that the new module takes over (when shapes fit).
    keeps: tuple[str, ...] = ()

    def rejects(self, model: nn.Module) -> str | None:
        """Return why ``model`` cannot take this entry, or None when it can."""
        return None if self.accepts is None else self.accepts(model)

    def resolve_params(self, kind: str, values: Mapping[str, Any]) -> dict[str, int | float]:
        """Return every parameter of this entry: ``values`` validated, defaults for the rest.

        An unknown parameter name raises UnknownChoiceError listing the valid ones.
        """
        specs = {spec.name: spec for spec in self.params}
        owner = f"{kind} {self.name!r}"
        for name in values:
            if name not in specs:
                raise UnknownChoiceError(f"{owner} parameter", name, list(specs))

        resolved = {}
        for name, spec in specs.items():
            value = values.get(name, spec.default)
            resolved[name] = spec.validate(value, owner)
        return resolved


class CosineClassifier(nn.Module):
    """Logits ``scale * cos(features, class weight)``: a linear layer on normalized vectors.

    Normalizing both sides makes the logits depend on directions only, as in the
    cosine-similarity classifiers of few-shot learning (Chen et al., 2019).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = num_classes
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = nn.functional.normalize(x, dim=1)
        weight = nn.functional.normalize(self.weight, dim=1)
        return self.scale * nn.functional.linear(features, weight)


class GeneralizedMeanPool(nn.Module):
    """Global generalized-mean (GeM) pooling: ``mean(x.clamp(eps) ** p) ** (1 / p)``.

    ``p`` is learned, starting at 3 (Radenovic et al., 2018). timm 1.0 has no GeM layer.
    Inputs must be non-negative for the result to be a mean, as they are after ReLU-like
    activations. Smaller values are clamped to ``eps``.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, flatten: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3), keepdim=True)
        pooled = pooled.pow(1.0 / self.p)
        return pooled.flatten(1) if self.flatten else pooled


def _build_cosine_head(in_features: int, num_classes: int, *, scale: float = 16.0) -> nn.Module:
    return CosineClassifier(in_features, num_classes, scale)


def _build_mlp_head(
    in_features: int,
    num_classes: int,
    *,
    hidden: int = 128,
    dropout: float = 0.0,
    activation: str = "relu",
) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        get_activation(activation).build(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def _build_linear_head(in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, num_classes)


def _has_activation_modules(model: nn.Module) -> str | None:
    # Imported here so that `spaces` does not import the model builder at import time.
    from search.model import SWAPPABLE_ACTIVATIONS

    if any(isinstance(module, SWAPPABLE_ACTIVATIONS) for module in model.modules()):
        return None
    return "it has no activation modules (it may call activation functions directly)"


def _has_linear_classifier(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    path = cfg.get("classifier")
    if not isinstance(path, str) or not path:
        return f"its pretrained_cfg names no single classifier (classifier: {path!r})"
    module = model.get_submodule(path)
    if not isinstance(module, nn.Linear):
        return f"its classifier {path!r} is a {type(module).__name__}, not an nn.Linear"
    return None


def _registry(*entries: SlotEntry) -> dict[str, SlotEntry]:
    return {entry.name: entry for entry in entries}


# Every builder returns a new module. Activations are built with inplace=False because a
# swapped-in activation may sit where the original one did not modify its input in place.
ACTIVATIONS: dict[str, SlotEntry] = _registry(
    *(
        SlotEntry(name, description, build, accepts=_has_activation_modules)
        for name, description, build in (
            ("relu", "max(0, x)", lambda: nn.ReLU()),
            ("relu6", "min(max(0, x), 6), as in MobileNet and EfficientNet-Lite", lambda: nn.ReLU6()),
            ("leaky_relu", "x for x > 0, else 0.01 * x", lambda: nn.LeakyReLU(0.01)),
            ("silu", "x * sigmoid(x), also called swish", lambda: nn.SiLU()),
            ("gelu", "x * Phi(x), the exact (erf) Gaussian error linear unit", lambda: nn.GELU()),
            ("hard_swish", "x * relu6(x + 3) / 6, as in MobileNetV3", lambda: nn.Hardswish()),
            ("mish", "x * tanh(softplus(x))", lambda: nn.Mish()),
            ("elu", "x for x > 0, else exp(x) - 1", lambda: nn.ELU()),
        )
    )
)

HEADS: dict[str, SlotEntry] = _registry(
    SlotEntry(
        "linear",
        "one Linear layer from the pooled features to the classes",
        _build_linear_head,
        has_weights=True,
        carry_over="timm's own classifier; pretrained only if its shape fits the classes",
        keeps=("weight", "bias"),
    ),
    SlotEntry(
        "mlp",
        "Linear -> activation (ReLU by default) -> Dropout -> Linear",
        _build_mlp_head,
        params=(
            ParamSpec("hidden", "int", 128, low=1, description="width of the hidden layer"),
            ParamSpec(
                "dropout",
                "float",
                0.0,
                low=0.0,
                high=1.0,
                high_inclusive=False,
                description="dropout probability before the last Linear layer",
            ),
            ParamSpec(
                "activation",
                "name",
                "relu",
                description="activation between the two Linear layers",
                choices=lambda: sorted(ACTIVATIONS),
            ),
        ),
        has_weights=True,
        carry_over="none: both Linear layers start from new weights",
        accepts=_has_linear_classifier,
    ),
    SlotEntry(
        "cosine",
        "cosine classifier: scale * cosine similarity of the features and each class weight",
        _build_cosine_head,
        params=(
            ParamSpec(
                "scale",
                "float",
                16.0,
                low=1.0,
                high=100.0,
                description="logit scale (inverse temperature)",
            ),
        ),
        has_weights=True,
        carry_over="none: the class weights start anew",
        accepts=_has_linear_classifier,
    ),
)


def _batch_norm_modules(model: nn.Module) -> list[str]:
    return [
        path
        for path, module in model.named_modules()
        if isinstance(module, nn.BatchNorm2d) and path
    ]


def _has_batch_norm(model: nn.Module) -> str | None:
    if _batch_norm_modules(model):
        return None
    return "it has no BatchNorm2d layers to replace"


def _build_batch_norm(old: nn.Module) -> nn.Module:
    return old


def _build_frozen_batch_norm(old: nn.Module) -> nn.Module:
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(old)


def _group_count(channels: int) -> int:
    return math.gcd(channels, 32)


def _build_group_norm(old: nn.BatchNorm2d) -> nn.Module:
    from timm.layers import GroupNormAct

    channels = old.num_features
    if hasattr(old, "act"):
        new = GroupNormAct(channels, _group_count(channels), eps=old.eps, apply_act=False)
        new.act, new.drop = old.act, old.drop
        return new
    return nn.GroupNorm(_group_count(channels), channels, eps=old.eps)


def _build_layer_norm(old: nn.BatchNorm2d) -> nn.Module:
    from timm.layers import LayerNorm2d, LayerNormAct2d

    channels = old.num_features
    if hasattr(old, "act"):
        new = LayerNormAct2d(channels, eps=old.eps, apply_act=False)
        new.act, new.drop = old.act, old.drop
        return new
    return LayerNorm2d(channels, eps=old.eps)


# Every norm entry replaces each BatchNorm2d of the model (timm's BatchNormAct2d included,
# whose activation moves to the new module). A model's own norm is BatchNorm2d here, so
# `batchnorm` keeps the modules as they are.
NORMS: dict[str, SlotEntry] = _registry(
    SlotEntry(
        "batchnorm",
        "the model's own BatchNorm2d layers, unchanged",
        _build_batch_norm,
        has_weights=True,
        carry_over="all: weight, bias, running_mean, running_var",
        accepts=_has_batch_norm,
        keeps=("weight", "bias", "running_mean", "running_var", "num_batches_tracked"),
    ),
    SlotEntry(
        "frozen_batchnorm",
        "BatchNorm2d with fixed statistics and fixed affine weights (timm's freeze_batch_norm_2d)",
        _build_frozen_batch_norm,
        has_weights=True,
        carry_over="weight, bias, running_mean, running_var (as buffers); num_batches_tracked dropped",
        accepts=_has_batch_norm,
        keeps=("weight", "bias", "running_mean", "running_var"),
    ),
    SlotEntry(
        "groupnorm",
        "GroupNorm with gcd(channels, 32) groups",
        _build_group_norm,
        has_weights=True,
        carry_over="the affine weight and bias; running statistics dropped",
        accepts=_has_batch_norm,
        keeps=("weight", "bias"),
    ),
    SlotEntry(
        "layernorm",
        "LayerNorm over the channels of each position (timm's LayerNorm2d)",
        _build_layer_norm,
        has_weights=True,
        carry_over="the affine weight and bias; running statistics dropped",
        accepts=_has_batch_norm,
        keeps=("weight", "bias"),
    ),
)


def _has_select_pool(model: nn.Module) -> str | None:
    from timm.layers import SelectAdaptivePool2d

    if isinstance(getattr(model, "global_pool", None), SelectAdaptivePool2d):
        return None
    return "it has no timm SelectAdaptivePool2d at `global_pool`"


def _pool_feeds_classifier(model: nn.Module) -> str | None:
    problem = _has_select_pool(model) or _has_linear_classifier(model)
    if problem:
        return problem
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = model.get_submodule(cfg["classifier"])
    if classifier.in_features != model.num_features:
        return (
            f"layers between its pool and its classifier take {model.num_features} features, "
            "so the pooled width cannot double"
        )
    return None


def _select_pool(pool_type: str) -> Callable[[nn.Module], nn.Module]:
    def build(old: nn.Module) -> nn.Module:
        from timm.layers import SelectAdaptivePool2d

        return SelectAdaptivePool2d(pool_type=pool_type, flatten=isinstance(old.flatten, nn.Flatten))

    return build


def _build_gem_pool(old: nn.Module) -> nn.Module:
    return GeneralizedMeanPool(flatten=isinstance(old.flatten, nn.Flatten))


POOLS: dict[str, SlotEntry] = _registry(
    SlotEntry("avg", "global average pooling", _select_pool("avg"), accepts=_has_select_pool),
    SlotEntry("max", "global max pooling", _select_pool("max"), accepts=_has_select_pool),
    SlotEntry(
        "avgmax",
        "the mean of global average and global max pooling",
        _select_pool("avgmax"),
        accepts=_has_select_pool,
    ),
    SlotEntry(
        "catavgmax",
        "global average and global max pooling concatenated, doubling the features",
        _select_pool("catavgmax"),
        carry_over="nothing to carry; the classifier takes twice the features, so it starts anew",
        accepts=_pool_feeds_classifier,
    ),
    SlotEntry(
        "gem",
        "generalized-mean pooling with a learned exponent p (starts at 3)",
        _build_gem_pool,
        has_weights=True,
        carry_over="none: p starts at 3",
        accepts=_has_select_pool,
    ),
)

# The slots whose modules a study can replace, by the search term that names them.
SLOTS: dict[str, dict[str, SlotEntry]] = {
    "activation": ACTIVATIONS,
    "norm": NORMS,
    "pool": POOLS,
    "head": HEADS,
}


def get_slot_entry(slot: str, name: str) -> SlotEntry:
    """Return the entry ``name`` of slot ``slot``; unknown names list the valid ones."""
    if slot not in SLOTS:
        raise UnknownChoiceError("slot", slot, list(SLOTS))
    return _lookup(SLOTS[slot], slot, name)


def get_norm(name: str) -> SlotEntry:
    """Return the NORMS entry for ``name``, built by ``build(old_batch_norm)``."""
    return _lookup(NORMS, "norm", name)


def get_pool(name: str) -> SlotEntry:
    """Return the POOLS entry for ``name``, built by ``build(old_global_pool)``."""
    return _lookup(POOLS, "pool", name)


def get_activation(name: str) -> SlotEntry:
    """Return the ACTIVATIONS entry for ``name``. Its ``build()`` returns a new module."""
    return _lookup(ACTIVATIONS, "activation", name)


def get_head(name: str) -> SlotEntry:
    """Return the HEADS entry for ``name``, built by ``build(in_features, num_classes, **params)``."""
    return _lookup(HEADS, "head", name)


def _lookup(registry: Mapping[str, SlotEntry], kind: str, name: object) -> SlotEntry:
    if not isinstance(name, str) or name not in registry:
        raise UnknownChoiceError(kind, name, list(registry))
    return registry[name]
