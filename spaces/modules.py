"""Registries of replaceable modules ("slots") keyed by short lowercase names.

Each entry describes itself with a one-line description and a builder that returns a new
``nn.Module``. Head entries also list the parameters their builder takes, with kind, default
and valid range, so a study can be validated and searched from the registry alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "ACTIVATIONS",
    "HEADS",
    "ParamSpec",
    "SlotEntry",
    "UnknownChoiceError",
    "get_activation",
    "get_head",
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
    kind: str  # "int" or "float"
    default: int | float
    low: int | float
    high: int | float | None = None
    high_inclusive: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("int", "float"):
            raise ValueError(
                f"parameter {self.name!r}: kind must be 'int' or 'float', not {self.kind!r}"
            )

    def describe_range(self) -> str:
        """Return the valid range as text, for example ``0 <= dropout < 1``."""
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

    def _in_range(self, value: int | float) -> bool:
        if not math.isfinite(value) or value < self.low:
            return False
        if self.high is None:
            return True
        return value <= self.high if self.high_inclusive else value < self.high


def _has_kind(value: object, kind: str) -> bool:
    # bool is a subclass of int, but `hidden: true` in a study is a mistake, not 1.
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    return isinstance(value, (int, float))


@dataclass(frozen=True)
class SlotEntry:
    """A registry entry: a named module builder and the numeric parameters it takes."""

    name: str
    description: str
    build: Callable[..., nn.Module]
    params: tuple[ParamSpec, ...] = ()

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


def _registry(*entries: SlotEntry) -> dict[str, SlotEntry]:
    return {entry.name: entry for entry in entries}


# Every builder returns a new module. Activations are built with inplace=False because a
# swapped-in activation may sit where the original one did not modify its input in place.
ACTIVATIONS: dict[str, SlotEntry] = _registry(
    SlotEntry("relu", "max(0, x)", lambda: nn.ReLU()),
    SlotEntry(
        "relu6", "min(max(0, x), 6), as in MobileNet and EfficientNet-Lite", lambda: nn.ReLU6()
    ),
    SlotEntry("leaky_relu", "x for x > 0, else 0.01 * x", lambda: nn.LeakyReLU(0.01)),
    SlotEntry("silu", "x * sigmoid(x), also called swish", lambda: nn.SiLU()),
    SlotEntry("gelu", "x * Phi(x), the exact (erf) Gaussian error linear unit", lambda: nn.GELU()),
    SlotEntry("hard_swish", "x * relu6(x + 3) / 6, as in MobileNetV3", lambda: nn.Hardswish()),
    SlotEntry("mish", "x * tanh(softplus(x))", lambda: nn.Mish()),
)

HEADS: dict[str, SlotEntry] = _registry(
    SlotEntry(
        "linear",
        "one Linear layer from the pooled features to the classes",
        _build_linear_head,
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
        ),
    ),
)


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
