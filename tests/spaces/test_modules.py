import pytest
import torch
from torch import nn

from spaces.modules import (
    ACTIVATIONS,
    HEADS,
    ParamSpec,
    SlotEntry,
    UnknownChoiceError,
    get_activation,
    get_head,
)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_entry_builds_new_module(name):
    entry = get_activation(name)

    first, second = entry.build(), entry.build()

    assert isinstance(entry, SlotEntry)
    assert entry.name == name
    assert entry.description and "\n" not in entry.description
    assert entry.params == ()
    assert isinstance(first, nn.Module)
    assert first is not second
    assert first(torch.linspace(-3, 3, 7)).shape == (7,)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_entry_contract(name):
    entry = get_head(name)
    params = entry.resolve_params("head", {})

    head = entry.build(16, 5, **params)
    out = head(torch.randn(2, 16))

    assert entry.name == name
    assert entry.description and "\n" not in entry.description
    assert set(params) == {spec.name for spec in entry.params}
    assert out.shape == (2, 5)


@pytest.mark.parametrize(
    ("head", "spec"),
    [(name, spec) for name, entry in sorted(HEADS.items()) for spec in entry.params],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_head_param_default_is_valid(head, spec):
    assert spec.kind in ("int", "float", "name")
    assert spec.validate(spec.default, f"head {head!r}") == spec.default
    assert spec.description


def test_head_registry_names():
    assert set(HEADS) == {"linear", "mlp", "cosine"}
    assert get_head("linear").params == ()
    assert {spec.name: spec.kind for spec in get_head("mlp").params} == {
        "hidden": "int",
        "dropout": "float",
        "activation": "name",
    }
    assert {spec.name: spec.kind for spec in get_head("cosine").params} == {"scale": "float"}


def test_activation_registry_names():
    assert set(ACTIVATIONS) == {
        "relu", "relu6", "leaky_relu", "silu", "gelu", "hard_swish", "mish", "elu",
    }


def test_mlp_head_layers():
    head = get_head("mlp").build(32, 4, hidden=8, dropout=0.25)

    assert [type(layer) for layer in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (32, 8)
    assert head[2].p == 0.25
    assert (head[3].in_features, head[3].out_features) == (8, 4)


def test_mlp_head_other_activation():
    head = get_head("mlp").build(32, 4, activation="gelu")

    assert isinstance(head[1], nn.GELU)


def test_unknown_activation_message():
    with pytest.raises(UnknownChoiceError) as caught:
        get_activation("swishy")

    assert str(caught.value) == (
        "unknown activation 'swishy'; valid activations: "
        "elu, gelu, hard_swish, leaky_relu, mish, relu, relu6, silu"
    )
    assert isinstance(caught.value, ValueError)
    assert caught.value.kind == "activation"
    assert caught.value.value == "swishy"


def test_unknown_head_message():
    with pytest.raises(
        UnknownChoiceError, match=r"^unknown head 'attention'; valid heads: cosine, linear, mlp$"
    ):
        get_head("attention")


def test_non_string_name_rejected():
    with pytest.raises(
        UnknownChoiceError, match=r"^unknown activation None; valid activations: elu, gelu, "
    ):
        get_activation(None)


def test_unknown_head_param_lists_valid():
    with pytest.raises(UnknownChoiceError) as caught:
        get_head("mlp").resolve_params("head", {"hiden": 64})

    assert str(caught.value) == (
        "unknown head 'mlp' parameter 'hiden'; valid head 'mlp' parameters: activation, dropout, hidden"
    )


def test_linear_head_takes_no_params():
    with pytest.raises(UnknownChoiceError) as caught:
        get_head("linear").resolve_params("head", {"hidden": 64})

    assert str(caught.value) == (
        "unknown head 'linear' parameter 'hidden'; there are no valid head 'linear' parameters"
    )


def test_mlp_params_defaults_and_overrides():
    params = get_head("mlp").resolve_params("head", {"hidden": 64})

    assert params == {"hidden": 64, "dropout": 0.0, "activation": "relu"}


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        (
            {"hidden": 0},
            ValueError,
            "head 'mlp' parameter 'hidden' is 0, outside the valid range hidden >= 1",
        ),
        (
            {"dropout": 1.0},
            ValueError,
            "head 'mlp' parameter 'dropout' is 1.0, outside the valid range 0.0 <= dropout < 1.0",
        ),
        (
            {"dropout": -0.1},
            ValueError,
            "head 'mlp' parameter 'dropout' is -0.1, outside the valid range 0.0 <= dropout < 1.0",
        ),
        (
            {"dropout": float("nan")},
            ValueError,
            "head 'mlp' parameter 'dropout' is nan, outside the valid range",
        ),
        (
            {"hidden": 1.5},
            TypeError,
            "head 'mlp' parameter 'hidden' must be int, got 1.5 of type float",
        ),
        (
            {"hidden": True},
            TypeError,
            "head 'mlp' parameter 'hidden' must be int, got True of type bool",
        ),
        (
            {"dropout": "0.1"},
            TypeError,
            "head 'mlp' parameter 'dropout' must be float, got '0.1' of type str",
        ),
    ],
)
def test_mlp_param_errors(values, error, message):
    with pytest.raises(error) as caught:
        get_head("mlp").resolve_params("head", values)

    assert str(caught.value).startswith(message)


def test_int_accepted_for_float_param():
    assert get_head("mlp").resolve_params("head", {"dropout": 0}) == {
        "hidden": 128, "dropout": 0, "activation": "relu",
    }


def test_param_spec_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be 'int', 'float' or 'name', not 'str'"):
        ParamSpec("name", "str", "a", low=0)


def test_param_spec_inclusive_high():
    spec = ParamSpec("ratio", "float", 0.5, low=0.0, high=1.0)

    assert spec.validate(1.0, "test") == 1.0
    assert spec.describe_range() == "0.0 <= ratio <= 1.0"
