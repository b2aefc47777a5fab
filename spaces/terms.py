"""The search terms a study's space may name, with their valid values and defaults.

Every key of a study's ``space`` must be one of these terms. A term left out of the space takes
its default, so a trial always receives a complete configuration.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spaces import modules
from spaces.params import (
    Categorical,
    Conditional,
    Fixed,
    FloatRange,
    IntRange,
    Param,
    Space,
    SpaceError,
)

__all__ = ["TERMS", "Term", "check_space", "model_config", "resolve_config"]


@dataclass(frozen=True)
class Term:
    """A search term: its kind of value, the rule each value must meet, and its default.

    ``kind`` is ``"float"``, ``"int"``, ``"bool"``, ``"name"`` (text from a registry) or ``"head"``
    (a classifier head with its own parameters). ``rule`` returns None for a valid value, or
    text that completes "must ...". ``target`` says what consumes the term: ``"model"`` terms
    go to ``search.model.build_model``, ``"training"`` terms to the training loop.
    """

    name: str
    kind: str
    default: Any
    description: str
    rule: Callable[[Any], str | None] | None = None
    names: Callable[[], list[str]] | None = None
    target: str = "training"

    def check(self, param: Param, key: str) -> list[str]:
        """Return the problems of ``param`` as used for this term (empty when valid)."""
        if self.kind == "head":
            return _check_head(param, key)
        kind_problem = self._check_kind(param, key)
        if kind_problem:
            return [kind_problem]
        return [problem for value in param.values() if (problem := self._check_value(value, key))]

    def _check_kind(self, param: Param, key: str) -> str | None:
        if isinstance(param, Conditional):
            return (
                f"{key}: {self.name} takes no per-option parameters; "
                f"write {{choices: {list(param.options)}}}"
            )
        if self.kind == "float" and isinstance(param, IntRange):
            return f"{key}: {self.name} is a float; write type: float"
        if self.kind in ("int", "name") and isinstance(param, FloatRange):
            expected = "an integer" if self.kind == "int" else "a name"
            return f"{key}: {self.name} is {expected}, not a float range; write type: int"
        if self.kind == "name" and isinstance(param, IntRange):
            return f"{key}: {self.name} is a name; write {{choices: [...]}} with names"
        if self.kind == "bool" and isinstance(param, (FloatRange, IntRange)):
            return f"{key}: {self.name} is true or false; write {{choices: [false, true]}}"
        return None

    def _check_value(self, value: Any, key: str) -> str | None:
        if isinstance(value, list) and isinstance(self.default, (int, float)):
            return (
                f"{key}: expected one number, got the list {value!r}; "
                f"to search among values write {{choices: {value!r}}}"
            )
        if self.kind == "name":
            return _check_name(self, value, key)
        if self.kind == "bool" and not isinstance(value, bool):
            return f"{key}: expected true or false, got {value!r}"
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{key}: expected an integer, got {value!r}"
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{key}: expected a number, got {value!r}"
        if self.rule is not None:
            problem = self.rule(value)
            if problem:
                return f"{key}: {self.name} must {problem}, got {value!r}"
        return None


def _check_name(term: Term, value: Any, key: str) -> str | None:
    if not isinstance(value, str):
        return f"{key}: expected a name, got {value!r}"
    if term.names is None:
        return None
    valid = term.names()
    if value in valid:
        return None
    close = difflib.get_close_matches(value, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{key}: unknown {term.name} {value!r}{hint}; valid names: {', '.join(sorted(valid))}"


def _between(low: float, high: float, high_open: bool = False) -> Callable[[Any], str | None]:
    def rule(value: float) -> str | None:
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or value < low or too_high:
            closing = ")" if high_open else "]"
            return f"be in [{low:g}, {high:g}{closing}"
        return None

    return rule


def _positive(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else "be greater than 0"


def _at_least(low: int) -> Callable[[Any], str | None]:
    def rule(value: int) -> str | None:
        return None if value >= low else f"be at least {low}"

    return rule


TERMS: dict[str, Term] = {
    term.name: term
    for term in [
        Term("backbone", "name", None, "timm model name; defaults to the study's model.name", target="backbone"),
        Term(
            "activation",
            "name",
            None,
            "activation swapped into every activation module of the model; none keeps its own",
            names=lambda: sorted(modules.ACTIVATIONS),
            target="model",
        ),
        Term("head", "head", {"name": "linear"}, "classifier head and its parameters", target="model"),
        Term("lr", "float", 1.0e-3, "base learning rate of AdamW", rule=_positive),
        Term("weight_decay", "float", 0.01, "AdamW weight decay", rule=_between(0.0, 1.0)),
        Term(
            "label_smoothing",
            "float",
            0.0,
            "label smoothing of the cross-entropy loss",
            rule=_between(0.0, 1.0, high_open=True),
        ),
        Term("batch_size", "int", 64, "training batch size", rule=_at_least(1)),
        Term(
            "frozen_stages",
            "int",
            0,
            "0 trains everything; k > 0 freezes the stem and the first k stages",
            rule=_at_least(0),
            target="model",
        ),
        Term(
            "norm",
            "name",
            None,
            "norm layer swapped in for every BatchNorm2d of the model; none keeps its own",
            names=lambda: sorted(modules.NORMS),
            target="model",
        ),
        Term(
            "pool",
            "name",
            None,
            "global pooling before the classifier; none keeps the model's own",
            names=lambda: sorted(modules.POOLS),
            target="model",
        ),
        Term(
            "drop_rate",
            "float",
            0.0,
            "dropout probability before the classifier (timm's drop_rate)",
            rule=_between(0.0, 1.0, high_open=True),
            target="model",
        ),
        Term(
            "drop_path_rate",
            "float",
            0.0,
            "stochastic-depth rate of the residual blocks (timm's drop_path_rate)",
            rule=_between(0.0, 1.0, high_open=True),
            target="model",
        ),
        Term(
            "freeze_bn_stats",
            "bool",
            False,
            "true keeps every trainable BatchNorm2d in eval mode, so running statistics stay fixed",
            target="model",
        ),
    ]
}


def _head_names() -> list[str]:
    return sorted(modules.HEADS)


def _check_head(param: Param, key: str) -> list[str]:
    if isinstance(param, (FloatRange, IntRange)):
        return [f"{key}: head is a name; write {{choices: [...]}} with head names"]
    if isinstance(param, Conditional):
        problems = []
        for option, sub_space in param.options.items():
            problems += _check_head_option(option, sub_space, f"{key}.choices.{option}")
        return problems
    problems = []
    for value in param.values():
        if isinstance(value, Mapping):
            name = value.get("name")
            sub = {k: Fixed(v) for k, v in value.items() if k != "name"}
            problems += _check_head_option(name, Space(sub), key)
        else:
            problems += _check_head_option(value, Space({}), key)
    return problems


def _check_head_option(name: Any, sub_space: Space, key: str) -> list[str]:
    if not isinstance(name, str) or name not in modules.HEADS:
        close = difflib.get_close_matches(str(name), _head_names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return [f"{key}: unknown head {name!r}{hint}; valid heads: {', '.join(_head_names())}"]
    params = {spec.name: spec for spec in modules.HEADS[name].params}
    problems = []
    for param_name in sub_space:
        sub_key = f"{key}.{param_name}"
        if param_name not in params:
            valid = ", ".join(sorted(params)) or "none"
            problems.append(
                f"{sub_key}: head {name!r} has no parameter {param_name!r}; "
                f"its parameters: {valid}"
            )
            continue
        problems += _check_head_param(params[param_name], sub_space[param_name], sub_key, name)
    return problems


def _check_head_param(spec: Any, param: Param, key: str, head: str) -> list[str]:
    if spec.kind == "int" and isinstance(param, FloatRange):
        return [f"{key}: {spec.name} is an integer; write type: int"]
    if isinstance(param, Conditional):
        return [f"{key}: a head parameter takes no per-option parameters"]
    problems = []
    for value in param.values():
        try:
            spec.validate(value, f"head {head!r}")
        except (TypeError, ValueError) as error:
            problems.append(f"{key}: {error}")
    return problems


def check_space(space: Space, key: str = "space") -> list[str]:
    """Return every problem of ``space`` against the term vocabulary (empty when valid)."""
    problems = []
    for name in space:
        if name not in TERMS:
            close = difflib.get_close_matches(name, list(TERMS), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(
                f"{key}.{name}: unknown search term{hint}; valid terms: {', '.join(TERMS)}"
            )
            continue
        problems += TERMS[name].check(space[name], f"{key}.{name}")
    return problems


def resolve_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """Complete a trial's suggested values with the defaults of the terms it left out.

    A head given by name alone becomes ``{"name": ..., **defaults}``.
    """
    config = {name: term.default for name, term in TERMS.items()}
    config.update(values)
    config["head"] = _resolve_head(config["head"])
    return config


def _resolve_head(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or value.get("name") not in modules.HEADS:
        raise SpaceError(f"head: invalid value {value!r}; valid heads: {', '.join(_head_names())}")
    entry = modules.HEADS[value["name"]]
    resolved = {"name": value["name"]}
    resolved.update({spec.name: spec.default for spec in entry.params})
    resolved.update({k: v for k, v in value.items() if k != "name"})
    return resolved


def model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the part of a resolved trial configuration that builds the model."""
    return {name: config[name] for name, term in TERMS.items() if term.target == "model" and name in config}


def describe_categorical(param: Categorical) -> str:
    """Return the choices of ``param`` as the user wrote them, for messages."""
    return ", ".join(repr(choice) for choice in param.choices)
