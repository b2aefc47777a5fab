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
    text that completes "must ...". ``target`` names what consumes the term: ``"model"`` terms
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
        Term("lr", "float", 1.0e-3, "base learning rate (see lr_scaling)", rule=_positive),
        Term(
            "weight_decay",
            "float",
            0.01,
            "weight decay, not applied to norms and biases",
            rule=_between(0.0, 1.0),
        ),
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


# Learning-rate schedules of timm.scheduler.create_scheduler_v2 that the trainable drives.
# "none" is left out because it leaves every parameter group at the base learning rate, so
# head_lr_scale and layer_decay would have no effect. "constant" applies them.
SCHEDULES = ("cosine", "tanh", "step", "plateau", "constant")
LR_SCALINGS = ("none", "linear", "sqrt")
LR_REFERENCE_BATCH_SIZE = 256
CLIP_MODES = ("norm", "value", "agc")
# timm's adahessian needs backward(create_graph=True), which the trainable does not run. The
# PSGD Kron family (kron, kronc, kronw) in timm 1.0.31 with torch 2.14.1 compiled a step that
# tried to allocate 1.3 GB for a single resnet10t convolution on CPU.
UNSUPPORTED_OPTIMIZERS = ("adahessian", "kron", "kronc", "kronw")


def optimizer_names() -> list[str]:
    """Return the optimizer names of timm's factory that a trial can use."""
    from timm.optim import list_optimizers

    return [name for name in list_optimizers() if name not in UNSUPPORTED_OPTIMIZERS]


def _below_one(value: float) -> str | None:
    return None if math.isfinite(value) and 0 <= value < 1 else "be in [0, 1)"


def _fraction_above_zero(value: float) -> str | None:
    return None if math.isfinite(value) and 0 < value <= 1 else "be in (0, 1]"


def _non_negative(value: float) -> str | None:
    return None if math.isfinite(value) and value >= 0 else "be 0 or more"


# Terms of the training loop (search.trainable and the modules it calls). Each default keeps the
# plain loop: AdamW, cosine schedule, no warmup, no clipping, mixup, EMA, early stopping or
# augmentation.
TRAINING_TERMS = [
    Term(
        "optimizer",
        "name",
        "adamw",
        "timm optimizer built by timm.optim.create_optimizer_v2; sgd has Nesterov momentum, "
        "momentum is plain SGD with momentum",
        names=optimizer_names,
    ),
    Term(
        "momentum",
        "float",
        0.9,
        "momentum of the optimizers that take one (sgd, momentum, rmsprop, ...); others ignore it",
        rule=_below_one,
    ),
    Term(
        "lr_scaling",
        "name",
        "none",
        "none trains at lr; linear at lr * batch_size / 256; sqrt at lr * sqrt(batch_size / 256), "
        "the rule of timm's train.py with its reference batch size of 256",
        names=lambda: list(LR_SCALINGS),
    ),
    Term(
        "head_lr_scale",
        "float",
        1.0,
        "multiplier of the learning rate of the classifier head's parameters",
        rule=_positive,
    ),
    Term(
        "layer_decay",
        "float",
        1.0,
        "layer-wise learning-rate decay (timm's layer_decay): the layer group k steps below the "
        "head trains at lr * layer_decay**k; 1 turns it off",
        rule=_fraction_above_zero,
    ),
    Term(
        "schedule",
        "name",
        "cosine",
        "learning-rate schedule built by timm.scheduler.create_scheduler_v2 over max_epochs; "
        "plateau decays on the study's objective metric once per epoch",
        names=lambda: list(SCHEDULES),
    ),
    Term(
        "min_lr_ratio",
        "float",
        0.01,
        "lowest learning rate of cosine, tanh and plateau, as a fraction of the learning rate",
        rule=_between(0.0, 1.0),
    ),
    Term(
        "warmup_epochs",
        "float",
        0.0,
        "epochs of linear warmup from warmup_lr to the learning rate; fractions of an epoch "
        "allowed, except with the plateau schedule, which rounds them up",
        rule=_non_negative,
    ),
    Term("warmup_lr", "float", 1.0e-5, "learning rate at the start of warmup", rule=_non_negative),
    Term("decay_epochs", "float", 1.0, "step schedule: epochs between two decays", rule=_positive),
    Term(
        "decay_rate",
        "float",
        0.1,
        "step and plateau schedules: factor that multiplies the learning rate at each decay",
        rule=_fraction_above_zero,
    ),
    Term(
        "plateau_patience",
        "int",
        1,
        "plateau schedule: epochs without improvement of the objective metric before a decay",
        rule=_at_least(0),
    ),
    Term(
        "clip_grad",
        "float",
        0.0,
        "gradient clipping threshold (timm's dispatch_clip_grad); 0 turns clipping off",
        rule=_non_negative,
    ),
    Term(
        "clip_mode",
        "name",
        "norm",
        "norm clips the total gradient norm, value each gradient element, agc each unit "
        "adaptively to its weight norm",
        names=lambda: list(CLIP_MODES),
    ),
    Term(
        "mixup_alpha",
        "float",
        0.0,
        "mixup strength, the alpha of its Beta(alpha, alpha) mixing weight (timm's Mixup); "
        "0 turns mixup off",
        rule=_non_negative,
    ),
    Term(
        "cutmix_alpha",
        "float",
        0.0,
        "cutmix strength, the alpha of its Beta(alpha, alpha) box area; 0 turns cutmix off",
        rule=_non_negative,
    ),
    Term(
        "mixup_prob",
        "float",
        1.0,
        "probability of applying mixup or cutmix to a batch",
        rule=_between(0.0, 1.0),
    ),
    Term(
        "mixup_switch_prob",
        "float",
        0.5,
        "probability of cutmix instead of mixup for a batch when both are on",
        rule=_between(0.0, 1.0),
    ),
    Term(
        "ema_decay",
        "float",
        0.0,
        "decay of the exponential moving average of the weights (timm's ModelEmaV3, with warmup); "
        "when above 0, val_loss_ema and val_accuracy_ema are reported too; 0 turns it off",
        rule=_below_one,
    ),
    Term(
        "early_stopping_patience",
        "int",
        0,
        "epochs without improvement of the objective metric before the trial stops itself "
        "and ends COMPLETE; 0 turns early stopping off",
        rule=_at_least(0),
    ),
    Term(
        "randaugment_ops",
        "int",
        0,
        "RandAugment operations per training image (timm's rand-m{M}-n{N}); 0 turns it off",
        rule=_at_least(0),
    ),
    Term(
        "randaugment_magnitude",
        "int",
        9,
        "RandAugment magnitude, from 0 (weakest) to 10",
        rule=_between(0, 10),
    ),
    Term(
        "crop_scale_min",
        "float",
        1.0,
        "smallest area fraction of the random resized crop, which then takes a fraction in "
        "[crop_scale_min, 1]; 1 turns cropping off",
        rule=_fraction_above_zero,
    ),
    Term("hflip", "float", 0.0, "probability of a horizontal flip", rule=_between(0.0, 1.0)),
    Term(
        "color_jitter",
        "float",
        0.0,
        "brightness, contrast and saturation jitter strength; timm's transform drops it "
        "when randaugment_ops is above 0",
        rule=_non_negative,
    ),
    Term(
        "random_erasing_prob",
        "float",
        0.0,
        "probability of erasing a random rectangle of a training image (timm's RandomErasing)",
        rule=_between(0.0, 1.0),
    ),
]
TERMS.update({term.name: term for term in TRAINING_TERMS})


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
