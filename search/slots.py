"""Architecture slots of a study: build every choice before any trial, and list the catalog.

``check_slot_choices`` builds each backbone once per choice of every architecture term the
space names (one slot at a time, the others at their defaults), runs forward and backward
on a batch of two images, and counts parameters and multiply-accumulates. A choice that
cannot work becomes a problem naming the slot, the choice and the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spaces.params import Conditional, Space

logger = logging.getLogger(__name__)

__all__ = ["SlotChoice", "check_slot_choices", "format_catalog", "format_choices", "slot_choices"]

# Architecture terms whose every choice is built; frozen_stages is checked against the
# stage count instead, and the backbone itself is built by preflight.
SLOT_TERMS = ("activation", "norm", "pool", "head", "drop_rate", "drop_path_rate", "freeze_bn_stats")
CHECK_CLASSES = 10


@dataclass(frozen=True)
class SlotChoice:
    """One built choice: its model, slot and value, and what the build measured."""

    backbone: str
    slot: str
    choice: Any
    params: int | None = None
    macs: int | None = None
    weights_kept: int | None = None
    problem: str | None = None

    @property
    def label(self) -> str:
        if isinstance(self.choice, Mapping):
            extra = ", ".join(f"{key}={value}" for key, value in self.choice.items() if key != "name")
            return f"{self.choice['name']}({extra})" if extra else str(self.choice["name"])
        return "(model's own)" if self.choice is None else str(self.choice)


def slot_choices(space: Space) -> list[tuple[str, Any]]:
    """Return (term, value) pairs that build every architecture choice of ``space`` once.

    Ranges give their highest value (the hardest case for rates); a conditional head gives
    each option with the first value of each of its parameters.
    """
    pairs = []
    for term in SLOT_TERMS:
        if term not in space:
            continue
        param = space[term]
        if isinstance(param, Conditional):
            for option, sub_space in param.options.items():
                values = {name: sub_space[name].values()[0] for name in sub_space}
                pairs.append((term, {"name": option, **values}))
        elif term in ("drop_rate", "drop_path_rate"):
            highest = max(param.values())
            if highest:
                pairs.append((term, highest))
        else:
            pairs += [(term, value) for value in param.values() if value is not None and value is not False]
    return pairs


def check_slot_choices(study, weights: Mapping[str, Any]) -> tuple[list[SlotChoice], list[str]]:
    """Build every slot choice on every backbone; return the measured rows and the problems."""
    rows, problems = [], []
    pairs = slot_choices(study.space)
    if not pairs:
        return rows, problems
    for backbone in study.backbones:
        rows.append(_build_choice(study, backbone, weights.get(backbone), None, None))
        for term, value in pairs:
            row = _build_choice(study, backbone, weights.get(backbone), term, value)
            rows.append(row)
            if row.problem:
                problems.append(row.problem)
    return rows, problems


def _build_choice(study, backbone: str, weights, term: str | None, value: Any) -> SlotChoice:
    import torch

    from search.cost import count_macs, count_params
    from search.model import ModelError, build_model
    from spaces.modules import UnknownChoiceError
    from spaces.terms import resolve_config

    config = {} if term is None else {term: value}
    if term == "head":
        config["head"] = resolve_config({"head": value})["head"]
    size, channels = study.model.image_size, study.model.in_chans
    label = SlotChoice(backbone, term or "model", value).label
    try:
        model, report = build_model(backbone, CHECK_CLASSES, config, weights=weights, in_chans=channels)
        model.train()
        model(torch.randn(2, channels, size, size)).sum().backward()
    except (ModelError, UnknownChoiceError) as error:
        return SlotChoice(backbone, term or "model", value, problem=f"space.{term}: {error}")
    except (RuntimeError, AssertionError) as error:
        first_line = (str(error) or type(error).__name__).splitlines()[0]
        return SlotChoice(
            backbone,
            term or "model",
            value,
            problem=(
                f"space.{term}: {term} {label!r} on model {backbone!r} fails on {size}x{size} "
                f"images ({first_line}); remove it from the {term} choices or change model.image_size"
            ),
        )
    kept = None if report is None else len(report.kept)
    return SlotChoice(
        backbone,
        term or "model",
        value,
        params=count_params(model),
        macs=count_macs(model, size, channels),
        weights_kept=kept,
    )


def format_choices(rows: list[SlotChoice]) -> str:
    """Return the built choices as a text table: model, slot, choice, parameters, MACs, kept."""
    header = ("model", "slot", "choice", "params", "MACs", "pretrained kept")
    lines = [header]
    for row in rows:
        if row.problem:
            lines.append((row.backbone, row.slot, row.label, "-", "-", "rejected"))
            continue
        kept = "-" if row.weights_kept is None else str(row.weights_kept)
        lines.append((row.backbone, row.slot, row.label, f"{row.params:,}", f"{row.macs:,}", kept))
    widths = [max(len(line[index]) for line in lines) for index in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines
    )


def format_catalog() -> str:
    """Return every search term, and every slot's choices with what they carry over, as text."""
    from spaces.modules import SLOTS
    from spaces.terms import TERMS

    lines = ["Search terms (space keys):"]
    width = max(len(name) for name in TERMS)
    for name, term in TERMS.items():
        default = "-" if term.default is None else term.default
        lines.append(f"  {name.ljust(width)}  {term.kind:<5} default {default}: {term.description}")
    for slot, registry in SLOTS.items():
        lines.append("")
        lines.append(f"Slot {slot}:")
        width = max(len(name) for name in registry)
        for name, entry in registry.items():
            lines.append(f"  {name.ljust(width)}  {entry.description}")
            for spec in entry.params:
                lines.append(f"  {''.ljust(width)}    {spec.name}: {spec.description} ({spec.describe_range()}, default {spec.default})")
            if entry.has_weights:
                lines.append(f"  {''.ljust(width)}    pretrained tensors: {entry.carry_over}")
    return "\n".join(lines)
