"""One contract for every entry of every slot registry, run on resnet10t with 'pretrained' weights.

Each entry must build, run forward and backward, keep exactly the tensors it claims to keep
(with their pretrained values) and initialise the rest anew.
"""

import pytest
import timm
import torch
from torch import nn

from search.model import build_model
from search.weights import PretrainedWeights
from spaces.modules import SLOTS, SlotEntry, UnknownChoiceError, get_slot_entry
from spaces.terms import resolve_config

MODEL = "resnet10t"
CLASSES = 10
ENTRIES = [(slot, name) for slot, registry in SLOTS.items() for name in registry]


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=CLASSES)
    # Non-default statistics, so a kept running_mean cannot equal a new one by chance.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    return PretrainedWeights(state, (0.5,) * 3, (0.5,) * 3, "test state dict")


@pytest.fixture(scope="module")
def batch_norm_paths():
    model = timm.create_model(MODEL, num_classes=CLASSES)
    return [path for path, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)]


def config_for(slot, name):
    if slot == "head":
        return {"head": resolve_config({"head": name})["head"]}
    return {slot: name}


@pytest.mark.parametrize(("slot", "name"), ENTRIES)
def test_entry_describes_itself(slot, name):
    entry = get_slot_entry(slot, name)

    assert isinstance(entry, SlotEntry)
    assert entry.name == name == name.lower()
    assert entry.description and "\n" not in entry.description
    assert entry.carry_over
    assert entry.has_weights or entry.keeps == ()


@pytest.mark.parametrize(("slot", "name"), ENTRIES)
def test_entry_contract(slot, name, pretrained, batch_norm_paths):
    entry = get_slot_entry(slot, name)
    model, report = build_model(MODEL, CLASSES, config_for(slot, name), weights=pretrained)
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    model.train()

    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()

    assert out.shape == (2, CLASSES)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    assert trainable
    assert all(parameter.grad is not None for parameter in trainable)

    assert set(report.kept).isdisjoint(report.new)
    assert set(report.kept) | set(report.new) == set(state)
    for key in report.kept:
        assert torch.equal(state[key], pretrained.state_dict[key]), key

    lost = set(pretrained.state_dict) - set(report.kept)
    assert lost == expected_lost(slot, entry, batch_norm_paths)


def expected_lost(slot, entry, batch_norm_paths):
    """The pretrained tensors that ``entry`` claims to drop on resnet10t."""
    if slot == "norm":
        tensors = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        return {
            f"{path}.{tensor}"
            for path in batch_norm_paths
            for tensor in tensors
            if tensor not in entry.keeps
        }
    if slot == "head":
        return {f"fc.{tensor}" for tensor in ("weight", "bias") if tensor not in entry.keeps}
    if entry.name == "catavgmax":
        # The new classifier takes twice the features: its weight no longer fits, its bias does.
        return {"fc.weight"}
    return set()


def test_gem_pool_adds_its_exponent(pretrained):
    _, report = build_model(MODEL, CLASSES, {"pool": "gem"}, weights=pretrained)

    assert report.new == ["global_pool.p"]


def test_unknown_slot_lists_slots():
    with pytest.raises(UnknownChoiceError) as caught:
        get_slot_entry("neck", "fpn")

    assert str(caught.value) == "unknown slot 'neck'; valid slots: activation, head, norm, pool"


def test_unknown_norm_lists_norms():
    with pytest.raises(UnknownChoiceError) as caught:
        get_slot_entry("norm", "bn")

    assert str(caught.value) == (
        "unknown norm 'bn'; valid norms: batchnorm, frozen_batchnorm, groupnorm, layernorm"
    )
