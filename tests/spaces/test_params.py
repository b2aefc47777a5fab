import json

import optuna
import pytest

from spaces.params import (
    Categorical,
    Conditional,
    Fixed,
    FloatRange,
    IntRange,
    SpaceError,
    label_of,
    parse_param,
    parse_space,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

HEAD_SPEC = {
    "choices": {
        "linear": {},
        "mlp": {
            "hidden": {"type": "int", "low": 16, "high": 256, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
    }
}


@pytest.mark.parametrize(
    "spec, expected",
    [
        (64, Fixed(64)),
        ("silu", Fixed("silu")),
        ([1, 2], Fixed([1, 2])),
        ({"value": {"a": 1}}, Fixed({"a": 1})),
        ({"type": "float", "low": 0.1, "high": 0.2}, FloatRange(0.1, 0.2)),
        ({"type": "float", "low": "1e-4", "high": "1e-2", "log": True}, FloatRange(1e-4, 1e-2, log=True)),
        ({"type": "int", "low": 1, "high": 9, "step": 2}, IntRange(1, 9, step=2)),
        ({"choices": [None, [1, 2], "a"]}, Categorical((None, [1, 2], "a"))),
    ],
)
def test_parse_param_forms(spec, expected):
    assert parse_param(spec, "space.x") == expected


def test_spec_round_trip():
    space = parse_space({"head": HEAD_SPEC, "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    assert parse_space(space.to_spec()) == space
    assert isinstance(space["head"], Conditional)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "float", "low": 0.01, "high": 0.001}, "space.lr: low 0.01 is greater than high 0.001; swap them"),
        ({"type": "float", "low": 0.0, "high": 0.1, "log": True}, "space.lr: a log-scale range needs low > 0, got low 0.0"),
        ({"choices": []}, "space.lr.choices: empty choice list; give at least one choice"),
        ({"choices": {}}, "space.lr.choices: empty choice list; give at least one option"),
        ({"type": "double", "low": 0, "high": 1}, "space.lr.type: invalid value 'double'; valid types: float, int"),
        ({"type": "float", "low": "abc", "high": 1}, "space.lr.low: expected a number, got the text 'abc'"),
        ({"type": "float", "high": 1}, "space.lr.low: missing; a float range needs low and high"),
        ({"type": "int", "low": 1.5, "high": 3}, "space.lr.low: expected an integer, got 1.5"),
        ({"type": "float", "low": 0, "high": 1, "sep": 2}, "space.lr: unknown keys ['sep'] for a range"),
        ({"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}, "log and step cannot be combined"),
        ({"choices": [1, 2, 1]}, "space.lr.choices: choice 1 is listed twice"),
        ({"lo": 1}, "space.lr: cannot tell the kind of parameter from the keys ['lo']"),
        ({"choices": "abc"}, "space.lr.choices: expected a list of choices or a mapping of options"),
    ],
)
def test_parse_param_errors(spec, message):
    with pytest.raises(SpaceError) as error:
        parse_param(spec, "space.lr")
    assert message in str(error.value)


def test_labels_for_values_optuna_cannot_store():
    assert label_of(None) is None
    assert label_of("a") == "a"
    assert label_of([1, 2]) == "[1, 2]"
    assert label_of({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'


def test_conditional_params_exist_only_for_their_option():
    space = parse_space({"head": HEAD_SPEC})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        values = space.suggest(trial)
        seen.add(values["head"]["name"])
        if values["head"]["name"] == "mlp":
            assert set(trial.params) == {"head", "head/mlp/hidden", "head/mlp/dropout"}
            assert 16 <= values["head"]["hidden"] <= 256
        else:
            assert set(trial.params) == {"head"}
            assert values["head"] == {"name": "linear"}
        study.tell(trial, 0.0)
    assert seen == {"linear", "mlp"}


def test_labels_round_trip_through_sqlite(tmp_path):
    space = parse_space(
        {
            "sizes": {"choices": [[32, 32], [64, 64], None]},
            "mode": {"choices": [{"a": 1}, "plain"]},
            "head": HEAD_SPEC,
            "fixed": [1, 2, 3],
        }
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="labels", storage=url, sampler=optuna.samplers.RandomSampler(seed=0))
    suggested = []
    for _ in range(12):
        trial = study.ask()
        values = space.suggest(trial)
        trial.set_user_attr("config", json.dumps(values))
        suggested.append(values)
        study.tell(trial, 1.0)

    reloaded = optuna.load_study(study_name="labels", storage=url)
    for trial, values in zip(reloaded.trials, suggested):
        assert trial.params["sizes"] in ("[32, 32]", "[64, 64]", None)
        decoded = space["sizes"].decode(trial.params["sizes"])
        assert decoded == values["sizes"]
        assert space["mode"].decode(trial.params["mode"]) == values["mode"]
        assert json.loads(trial.user_attrs["config"]) == values
        assert values["fixed"] == [1, 2, 3]
        assert "fixed" not in trial.params
    assert {str(v["sizes"]) for v in suggested} == {"[32, 32]", "[64, 64]", "None"}


def test_space_rejects_bad_names():
    with pytest.raises(SpaceError, match="invalid parameter name 'a/b'"):
        parse_space({"a/b": 1})
    with pytest.raises(SpaceError, match="expected a mapping of parameter names"):
        parse_space([1, 2])


def test_named_option_is_fixed_value():
    param = parse_param({"name": "mlp", "hidden": 64, "dropout": 0.1}, "space.head")
    assert isinstance(param, Fixed)
    assert param.values() == [{"name": "mlp", "hidden": 64, "dropout": 0.1}]
