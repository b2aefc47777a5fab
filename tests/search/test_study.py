import pytest
import yaml

from search.study import Study, StudyError, load_study
from tests.conftest import tiny_study_dict


def problems_of(mapping):
    with pytest.raises(StudyError) as error:
        Study.from_dict(mapping)
    return error.value.problems


def test_tiny_study_is_valid():
    study = Study.from_dict(tiny_study_dict())
    assert study.name == "tiny"
    assert study.objective.resolved_direction == "maximize"
    assert study.objective.mode == "max"
    assert study.budget.trials == 2
    assert study.search.sampler == "tpe"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"nmae": "x"}, "nmae: unknown key in study (did you mean 'name'?); valid keys: name, model"),
        ({"budget": {"trails": 3}}, "budget.trails: unknown key in budget (did you mean 'trials'?)"),
        ({"budget": {"trials": "many"}}, "budget.trials: expected an integer, got str 'many'"),
        ({"budget": {"trials": True}}, "budget.trials: expected an integer, got bool True"),
        ({"search": {"concurrency": 0}}, "search.concurrency: 0 must be at least 1"),
        ({"search": {"sampler": "bayes"}}, "search.sampler: 'bayes' is not valid; valid choices: tpe, random, qmc, gp, nsga2"),
        ({"objective": {"metric": "val_f1"}}, "objective.metric: 'val_f1' is not valid; valid choices: val_accuracy, val_loss, train_loss"),
        ({"objective": {"direction": "up"}}, "objective.direction: 'up' is not valid; valid choices: maximize, minimize"),
        ({"name": "my study"}, "name: invalid value 'my study'"),
        ({"storage": "study.db"}, "storage: invalid value 'study.db'; give an SQLAlchemy URL"),
        ({"model": "resnet10t"}, "model: expected a mapping, got str 'resnet10t'"),
        (
            {"space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}},
            "space.lr: low 0.1 is greater than high 0.01; swap them so that low <= high",
        ),
        (
            {"space": {"lr": {"type": "float", "low": 0, "high": 0.01, "log": True}}},
            "space.lr: a log-scale range needs low > 0, got low 0.0; raise low or set log: false",
        ),
        ({"space": {"activation": {"choices": []}}}, "space.activation.choices: empty choice list"),
        (
            {"space": {"activation": {"choices": ["relu", "swishy"]}}},
            "space.activation: unknown activation 'swishy' (did you mean hard_swish, mish?); valid names: elu, gelu, hard_swish, leaky_relu, mish, relu, relu6, silu",
        ),
        (
            {"space": {"head": {"choices": ["linear", "transformer"]}}},
            "space.head: unknown head 'transformer'; valid heads: cosine, linear, mlp",
        ),
        (
            {"space": {"head": {"choices": {"mlp": {"width": 3}}}}},
            "space.head.choices.mlp.width: head 'mlp' has no parameter 'width'; its parameters: activation, dropout, hidden",
        ),
        (
            {"space": {"head": {"choices": {"mlp": {"dropout": {"type": "float", "low": 0.5, "high": 1.0}}}}}},
            "space.head.choices.mlp.dropout: head 'mlp' parameter 'dropout' is 1.0, outside the valid range 0.0 <= dropout < 1.0",
        ),
        ({"space": {"learning_rate": 0.1}}, "space.learning_rate: unknown search term"),
        ({"space": {"lr": -0.1}}, "space.lr: lr must be greater than 0, got -0.1"),
        ({"space": {"batch_size": [32, 64]}}, "space.batch_size: expected one number, got the list [32, 64]; to search among values write {choices: [32, 64]}"),
        ({"space": {"batch_size": {"type": "float", "low": 8, "high": 64}}}, "space.batch_size: batch_size is an integer, not a float range; write type: int"),
        ({"space": {"label_smoothing": 1.0}}, "space.label_smoothing: label_smoothing must be in [0, 1), got 1.0"),
        ({"space": {"frozen_stages": -1}}, "space.frozen_stages: frozen_stages must be at least 0, got -1"),
        ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, "data.val_fraction 0.6 + data.test_fraction 0.5 leave no training images"),
    ],
)
def test_invalid_study_messages(changes, message):
    problems = problems_of(tiny_study_dict(**changes))
    assert any(message in problem for problem in problems), problems


def test_missing_model_name():
    mapping = tiny_study_dict()
    mapping["model"] = {"image_size": 32}
    assert problems_of(mapping) == [
        "model.name: missing; give a timm model name, or model.factory: "
        "'package.module:function' for a model of your own"
    ]


def test_all_problems_reported_at_once():
    mapping = tiny_study_dict(budget={"trials": 0}, search={"concurrency": 0}, space={"lr": {"choices": []}})
    problems = problems_of(mapping)
    assert len(problems) == 3
    text = str(StudyError(problems))
    assert text.startswith("3 problems in the study:\n  - ")


def test_yaml_exponent_without_dot_accepted(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: t\nmodel: {name: resnet10t, image_size: 32}\nbudget: {time_limit: 6e2}\n"
        "space:\n  lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
    )
    study = load_study(path)
    assert study.budget.time_limit == 600.0
    assert study.space["lr"].low == pytest.approx(1e-4)


def test_load_study_errors(tmp_path):
    with pytest.raises(StudyError, match="study file '.*missing.yaml' not found"):
        load_study(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(StudyError, match="invalid YAML"):
        load_study(bad)
    python_tag = tmp_path / "tag.yaml"
    python_tag.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(StudyError, match="invalid YAML"):
        load_study(python_tag)


def test_resolved_yaml_round_trip(tmp_path):
    study = Study.from_dict(
        tiny_study_dict(
            space={
                "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "head": {"choices": {"linear": {}, "mlp": {"hidden": {"type": "int", "low": 8, "high": 64}}}},
                "batch_size": 32,
            }
        )
    )
    path = tmp_path / "resolved.yaml"
    path.write_text(study.to_yaml())
    again = load_study(path)
    assert again.to_dict() == study.to_dict()
    assert yaml.safe_load(path.read_text())["search"]["concurrency"] == 1


def test_python_api_equals_yaml(tmp_path):
    mapping = tiny_study_dict()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(mapping))
    assert load_study(path).to_dict() == Study.from_dict(mapping).to_dict()


def test_concurrency_above_trials_warns(caplog):
    Study.from_dict(tiny_study_dict(search={"concurrency": 8}))
    assert "search.concurrency 8 is more than budget.trials 2" in caplog.text


def test_exponent_without_dot_reads_as_number(tmp_path):
    """PyYAML reads 1e-3 as text (YAML 1.1); a study file reads it as a number."""
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: exponent\n"
        "model: {name: resnet10t, image_size: 32}\n"
        "space:\n"
        "  lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
        "  weight_decay: 1e-3\n"
    )
    study = load_study(path)
    assert study.space["weight_decay"].values() == [0.001]
    assert study.to_dict()["space"]["lr"]["low"] == 1e-4


def test_warmup_longer_than_budget_warns(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="search.study"):
        Study.from_dict(tiny_study_dict(budget={"trials": 1, "max_epochs": 1}, space={"warmup_epochs": 5}))
    assert (
        "space.warmup_epochs reaches 5 but budget.max_epochs is 1, so such trials never leave the "
        "warmup; keep warmup_epochs below 1"
    ) in caplog.text
