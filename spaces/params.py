"""Parameter kinds of a search space and their compilation to Optuna suggestions.

A space is written as a mapping from names to specs. A spec is one of:

* a plain value (``64``, ``"silu"``, ``[1, 2]``) or ``{value: X}``: fixed, never searched;
* ``{name: mlp, hidden: 64}``: one fixed option with its parameters, as ``ftsearch best``
  prints it;
* ``{type: float, low: 1.0e-4, high: 1.0e-2, log: true, step: null}``: a float range;
* ``{type: int, low: 0, high: 4, log: false, step: 1}``: an integer range;
* ``{choices: [a, b, c]}``: a categorical choice;
* ``{choices: {mlp: {hidden: ..., dropout: ...}, linear: {}}}``: a conditional choice whose
  options carry their own parameters, which exist only in trials that pick that option.

Optuna stores categorical choices of type None, bool, int, float and str. Choices of other
types (lists, mappings) are stored as readable labels and decoded for the trial. Conditional
options are stored under their option name, and their own parameters under
``name/option/parameter``.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Categorical",
    "Conditional",
    "Fixed",
    "FloatRange",
    "IntRange",
    "Param",
    "Space",
    "SpaceError",
    "SubSpace",
    "label_of",
    "parse_param",
    "parse_space",
]

SEPARATOR = "/"
RANGE_KEYS = ("type", "low", "high", "log", "step")


class SpaceError(ValueError):
    """A search-space spec that cannot be compiled; the message names the key and the fix."""


def label_of(value: Any) -> Any:
    """Return how Optuna stores ``value``: itself if Optuna can store it, else a readable label."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _as_number(value: Any, key: str, kind: type) -> int | float:
    """Convert a spec number, accepting the strings YAML leaves for forms such as ``1e-4``."""
    if isinstance(value, bool):
        raise SpaceError(f"{key}: expected a number, got {value!r}; write a number such as 0.001")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SpaceError(
                f"{key}: expected a number, got the text {value!r}; write a number such as 0.001"
            ) from None
    if not isinstance(value, (int, float)):
        raise SpaceError(
            f"{key}: expected a number, got {type(value).__name__} {value!r}; "
            "write a number such as 0.001"
        )
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise SpaceError(f"{key}: expected an integer, got {value!r}; write a whole number")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise SpaceError(f"{key}: expected a finite number, got {value!r}")
    return value


class Param(ABC):
    """One entry of a space: it suggests a value for a trial and writes itself back as a spec."""

    @abstractmethod
    def suggest(self, trial: Any, name: str) -> Any:
        """Ask ``trial`` (an ``optuna.Trial``) for this parameter and return the decoded value."""

    @abstractmethod
    def to_spec(self) -> Any:
        """Return the spec this parameter was parsed from, in its canonical form."""

    @abstractmethod
    def values(self) -> list[Any]:
        """Return the values a trial can receive (the bounds, for a range)."""

    @property
    def searched(self) -> bool:
        """Whether trials may receive different values."""
        return True


@dataclass(frozen=True)
class Fixed(Param):
    """A value that every trial receives."""

    value: Any

    def suggest(self, trial: Any, name: str) -> Any:
        return self.value

    def to_spec(self) -> Any:
        if isinstance(self.value, Mapping):
            return {"value": self.value}
        return self.value

    def values(self) -> list[Any]:
        return [self.value]

    @property
    def searched(self) -> bool:
        return False


@dataclass(frozen=True)
class FloatRange(Param):
    """A float between ``low`` and ``high``, on a log scale or in steps if asked."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec

    def values(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True)
class IntRange(Param):
    """An integer between ``low`` and ``high`` inclusive."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step != 1:
            spec["step"] = self.step
        return spec

    def values(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Categorical(Param):
    """One of ``choices``; choices Optuna cannot store go to Optuna as labels."""

    choices: tuple[Any, ...]

    @property
    def labels(self) -> list[Any]:
        return [label_of(choice) for choice in self.choices]

    def suggest(self, trial: Any, name: str) -> Any:
        label = trial.suggest_categorical(name, self.labels)
        return self.decode(label)

    def decode(self, label: Any) -> Any:
        """Return the choice stored in Optuna as ``label``."""
        for choice, known in zip(self.choices, self.labels):
            if known == label and type(known) is type(label):
                return choice
        raise SpaceError(f"stored value {label!r} is none of the choices {self.labels}")

    def to_spec(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}

    def values(self) -> list[Any]:
        return list(self.choices)


@dataclass(frozen=True)
class Conditional(Param):
    """A choice among named options, each with its own sub-space.

    A trial receives ``{"name": option, **option_values}``.
    """

    options: Mapping[str, Space]

    def suggest(self, trial: Any, name: str) -> dict[str, Any]:
        option = trial.suggest_categorical(name, list(self.options))
        values = self.options[option].suggest(trial, prefix=f"{name}{SEPARATOR}{option}")
        return {"name": option, **values}

    def to_spec(self) -> dict[str, Any]:
        return {"choices": {option: space.to_spec() for option, space in self.options.items()}}

    def values(self) -> list[Any]:
        return list(self.options)


@dataclass(frozen=True)
class Space:
    """Named parameters; it compiles to an Optuna define-by-run function through ``suggest``."""

    params: Mapping[str, Param] = field(default_factory=dict)

    def suggest(self, trial: Any, prefix: str = "") -> dict[str, Any]:
        """Suggest every parameter on ``trial`` and return the decoded values by name."""
        values = {}
        for name, param in self.params.items():
            full_name = f"{prefix}{SEPARATOR}{name}" if prefix else name
            values[name] = param.suggest(trial, full_name)
        return values

    def to_spec(self) -> dict[str, Any]:
        return {name: param.to_spec() for name, param in self.params.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def __getitem__(self, name: str) -> Param:
        return self.params[name]

    def __iter__(self):
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)


def parse_space(spec: Any, key: str = "space") -> Space:
    """Parse a mapping of parameter specs; ``key`` prefixes every error message."""
    if spec is None:
        return Space({})
    if not isinstance(spec, Mapping):
        raise SpaceError(
            f"{key}: expected a mapping of parameter names to specs, got "
            f"{type(spec).__name__} {spec!r}"
        )
    params = {}
    for name, param_spec in spec.items():
        if not isinstance(name, str) or not name or SEPARATOR in name:
            raise SpaceError(
                f"{key}: invalid parameter name {name!r}; use non-empty text without '{SEPARATOR}'"
            )
        params[name] = parse_param(param_spec, f"{key}.{name}")
    return Space(params)


def parse_param(spec: Any, key: str) -> Param:
    """Parse one parameter spec (see the module docstring for the forms)."""
    if not isinstance(spec, Mapping):
        return Fixed(spec)
    if "value" in spec:
        _reject_extra_keys(spec, {"value"}, key, "a fixed value")
        return Fixed(spec["value"])
    if "choices" in spec:
        _reject_extra_keys(spec, {"choices"}, key, "a choice")
        return _parse_choices(spec["choices"], f"{key}.choices")
    if "type" in spec or "low" in spec or "high" in spec:
        return _parse_range(spec, key)
    if "name" in spec:
        # An option with its parameters, as `ftsearch best --json` prints one: {name: mlp, hidden: 64}.
        return Fixed(dict(spec))
    raise SpaceError(
        f"{key}: cannot tell the kind of parameter from the keys {sorted(spec)}; write a fixed "
        "value, {value: X}, {choices: [...]} or {type: float|int, low: ..., high: ...}"
    )


def _reject_extra_keys(spec: Mapping, allowed: set[str], key: str, kind: str) -> None:
    extra = sorted(str(name) for name in spec if name not in allowed)
    if extra:
        raise SpaceError(
            f"{key}: unknown keys {extra} for {kind}; valid keys: {sorted(allowed)}"
        )


def _parse_range(spec: Mapping, key: str) -> Param:
    _reject_extra_keys(spec, set(RANGE_KEYS), key, "a range")
    kind_name = spec.get("type")
    if kind_name not in ("float", "int"):
        raise SpaceError(
            f"{key}.type: invalid value {kind_name!r}; valid types: float, int "
            "(for a choice among values write {choices: [...]} instead)"
        )
    kind = float if kind_name == "float" else int
    for bound in ("low", "high"):
        if bound not in spec:
            raise SpaceError(f"{key}.{bound}: missing; a {kind_name} range needs low and high")
    low = _as_number(spec["low"], f"{key}.low", kind)
    high = _as_number(spec["high"], f"{key}.high", kind)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{key}.log: expected true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _as_number(step, f"{key}.step", kind)
        if step <= 0:
            raise SpaceError(f"{key}.step: must be greater than 0, got {step!r}")
        if log:
            raise SpaceError(f"{key}: log and step cannot be combined; remove one of them")
    if low > high:
        raise SpaceError(
            f"{key}: low {low!r} is greater than high {high!r}; swap them so that low <= high"
        )
    if log and low <= 0:
        raise SpaceError(
            f"{key}: a log-scale range needs low > 0, got low {low!r}; raise low or set log: false"
        )
    if kind is float:
        return FloatRange(low, high, log=log, step=step)
    return IntRange(low, high, log=log, step=1 if step is None else step)


def _parse_choices(choices: Any, key: str) -> Param:
    if isinstance(choices, Mapping):
        if not choices:
            raise SpaceError(f"{key}: empty choice list; give at least one option")
        options = {}
        for option, sub_spec in choices.items():
            if not isinstance(option, str) or not option:
                raise SpaceError(f"{key}: option names must be non-empty text, got {option!r}")
            options[option] = parse_space(sub_spec, f"{key}.{option}")
        return Conditional(options)
    if not isinstance(choices, (list, tuple)):
        raise SpaceError(
            f"{key}: expected a list of choices or a mapping of options, got "
            f"{type(choices).__name__} {choices!r}"
        )
    if not choices:
        raise SpaceError(f"{key}: empty choice list; give at least one choice")
    labels = [label_of(choice) for choice in choices]
    for i, label in enumerate(labels):
        for j in range(i):
            if labels[j] == label and type(labels[j]) is type(label):
                raise SpaceError(
                    f"{key}: choice {choices[i]!r} is listed twice; list each choice once"
                )
    return Categorical(tuple(choices))


@dataclass(frozen=True)
class SubSpace(Param):
    """A named group of parameters that a trial receives as one mapping.

    Optuna stores each member as ``name/member``, so a group ``factory_params`` with a member
    ``depth`` appears as ``factory_params/depth``.
    """

    space: Space

    def suggest(self, trial: Any, name: str) -> dict[str, Any]:
        return self.space.suggest(trial, prefix=name)

    def to_spec(self) -> dict[str, Any]:
        return self.space.to_spec()

    def values(self) -> list[Any]:
        return [self.space.to_spec()]

    @property
    def searched(self) -> bool:
        return any(self.space[name].searched for name in self.space)
