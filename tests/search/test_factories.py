"""Models and data from Python factories: validation messages and the wine MLP study on real Ray."""

import itertools
import json
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from search.cli import main
from search.factories import timm_only_terms
from search.preflight import prepare
from search.runner import _init_ray, run
from search.study import Study, StudyError, load_study
from spaces.terms import TERMS

REPO = Path(__file__).resolve().parents[2]
WINE_STUDY = REPO / "studies" / "wine_mlp.yaml"
# Each test imports its own copy of the factory module, so no test reuses another's cached import.
MODULE_NUMBERS = itertools.count()

FACTORY_MODULE = """
import numpy as np
import torch
from torch import nn

VALUE = 3


def features(settings):
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = rng.normal(size=(40, 5)) + y[:, None]
    return {"train": (x[:30], y[:30]), "val": (x[30:], y[30:]), "classes": ["a", "b"]}


def whole_set(settings):
    y = np.arange(60) % 3
    return np.eye(3)[y] + 0.1, torch.from_numpy(y)


def images(settings):
    y = np.arange(20) % 2
    x = np.random.default_rng(0).integers(0, 255, size=(20, 1, 8, 8), dtype=np.uint8)
    return x, y


def number(settings):
    return 42


def unequal(settings):
    return {"train": (np.zeros((4, 5)), np.zeros(3, dtype=int)), "val": (np.zeros((2, 5)), np.zeros(2, dtype=int))}


def float_labels(settings):
    return np.zeros((10, 5)), np.zeros(10)


def raises(settings):
    raise RuntimeError("the file is gone")


def mlp(data, width=8, depth=1):
    layers = [nn.Flatten(), nn.Linear(int(np.prod(data.input_shape)), width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, data.num_classes))


def needs_width(data, width):
    return mlp(data, width)


def not_a_module(data):
    return {"layers": 2}


def wrong_classes(data):
    return nn.Linear(data.input_shape[0], data.num_classes + 1)


def wrong_input(data):
    return nn.Linear(data.input_shape[0] + 1, data.num_classes)


def frozen(data):
    model = nn.Linear(data.input_shape[0], data.num_classes)
    model.requires_grad_(False)
    return model
"""


@pytest.fixture
def factory_study(tmp_path):
    """Return a builder of studies whose file sits beside a fresh factory module."""
    module = f"factory_module_{next(MODULE_NUMBERS)}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(FACTORY_MODULE), encoding="utf-8")

    def build(model="mlp", data="features", space=None, **sections):
        mapping = {
            "name": "factories",
            "model": {"factory": f"{module}:{model}"},
            "data": {"factory": f"{module}:{data}"},
            "budget": {"trials": 1, "max_epochs": 1},
            # The factory module's data sets are a few dozen samples, fewer than the default batch.
            "space": {"batch_size": 8, **(space or {})},
            **sections,
        }
        return Study.from_dict(mapping, source=tmp_path / "study.yaml")

    build.module = module
    yield build
    sys.modules.pop(module, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def problem_of(study) -> str:
    with pytest.raises(StudyError) as error:
        prepare(study)
    (problem,) = error.value.problems
    return problem


def problems_of(mapping) -> list[str]:
    with pytest.raises(StudyError) as error:
        Study.from_dict(mapping)
    return error.value.problems


# Study checks that need no import.


@pytest.mark.parametrize("term", timm_only_terms())
def test_timm_only_term_rejected_for_factory(term):
    mapping = {"name": "f", "model": {"factory": "tabular:build_mlp"}, "space": {term: {"value": TERMS[term].default}}}
    problems = problems_of(mapping)
    expected = (
        f"space.{term}: the term {term!r} applies only to timm models (model.name), not to "
        "model.factory; remove it, or search it under space.factory_params and use it in the factory"
    )
    assert expected in problems


def test_timm_only_terms_cover_model_terms():
    assert {"backbone", "activation", "head", "frozen_stages"} <= set(timm_only_terms())
    assert "lr" not in timm_only_terms()


def test_factory_params_rejected_for_timm_model():
    mapping = {"name": "f", "model": {"name": "resnet10t"}, "space": {"factory_params": {"depth": 2}}}
    assert problems_of(mapping) == [
        "space.factory_params: only a model factory receives these parameters, but the model is "
        "the timm model 'resnet10t'; set model.factory or remove space.factory_params"
    ]


@pytest.mark.parametrize(
    "model, data, message",
    [
        (
            {"factory": "tabular.build_mlp"},
            {},
            "model.factory: invalid value 'tabular.build_mlp'; write 'package.module:function', "
            "such as 'tabular:build_mlp' for the function build_mlp in tabular.py beside the study file",
        ),
        (
            {"factory": "tabular:build_mlp"},
            {"factory": "load wine"},
            "data.factory: invalid value 'load wine'; write 'package.module:function'",
        ),
        (
            {"name": "resnet10t", "factory": "tabular:build_mlp"},
            {},
            "model: both model.name 'resnet10t' and model.factory 'tabular:build_mlp' are given",
        ),
        (
            {"factory": "tabular:build_mlp", "pretrained": "hub"},
            {},
            "model.pretrained: 'hub' applies only to timm models; a model factory loads its own "
            "weights, so remove model.pretrained",
        ),
        (
            {"image_size": 32},
            {},
            "model.name: missing; give a timm model name, or model.factory: "
            "'package.module:function' for a model of your own",
        ),
        (
            {"factory": "tabular:build_mlp"},
            {"factory": "tabular:load_wine", "source": "cifar"},
            "data: both data.source 'cifar' and data.factory 'tabular:load_wine' are given",
        ),
    ],
)
def test_factory_settings_problems(model, data, message):
    problems = problems_of({"name": "f", "model": model, "data": data})
    assert any(problem.startswith(message) for problem in problems), problems


def test_factory_params_must_be_a_mapping():
    mapping = {"name": "f", "model": {"factory": "tabular:build_mlp"}, "space": {"factory_params": 3}}
    (problem,) = problems_of(mapping)
    assert problem.startswith(
        "space.factory_params: expected a mapping of the model factory's parameter names to specs, got int 3"
    )


def test_factory_params_member_spec_is_checked():
    space = {"factory_params": {"depth": {"type": "int", "low": 4, "high": 1}}}
    (problem,) = problems_of({"name": "f", "model": {"factory": "tabular:build_mlp"}, "space": space})
    assert problem == "space.factory_params.depth: low 4 is greater than high 1; swap them so that low <= high"


def test_study_round_trips_factory_params():
    study = load_study(WINE_STUDY)
    again = Study.from_dict(study.to_dict(), source=study.source)
    assert again.to_dict() == study.to_dict()
    assert set(study.space["factory_params"].space) == {"depth", "width", "activation", "norm", "dropout"}


# Import checks.


def test_missing_module(factory_study, tmp_path):
    study = factory_study()
    study = study.replace(model={"factory": "no_such_module_here:build"})
    assert problem_of(study) == (
        f"model.factory: module 'no_such_module_here' not found in the study file's folder {tmp_path} "
        "or on the Python path; put no_such_module_here.py beside the study file, add its folder "
        "to PYTHONPATH, or install its package"
    )


def test_module_importing_missing_package(factory_study, tmp_path):
    (tmp_path / "broken_factory_module.py").write_text("import no_such_package_xyz\n", encoding="utf-8")
    study = factory_study().replace(model={"factory": "broken_factory_module:build"})
    try:
        assert problem_of(study) == (
            "model.factory: importing module 'broken_factory_module' failed because it imports a "
            "missing module (No module named 'no_such_package_xyz'); install that package"
        )
    finally:
        sys.modules.pop("broken_factory_module", None)


def test_missing_function_suggests_names(factory_study):
    study = factory_study(model="mpl")
    problem = problem_of(study)
    assert problem.startswith(f"model.factory: {factory_study.module} (")
    assert "has no function 'mpl' (did you mean 'mlp'?); its functions: features, float_labels, frozen, images" in problem


def test_data_factory_not_callable(factory_study):
    study = factory_study(data="VALUE")
    assert problem_of(study) == (
        f"data.factory: {factory_study.module}:VALUE is not callable (it is the int 3); name a "
        "function or a class that returns what the factory contract expects"
    )


# Data factory results.


@pytest.mark.parametrize(
    "data, message",
    [
        (
            "number",
            "data.factory: {module}:number returned int; expected a mapping {{'train': (x, y), "
            "'val': (x, y), 'test': (x, y), 'classes': [...]}} (test and classes optional) or a whole set (x, y)",
        ),
        ("unequal", "data.factory: the train split has 4 samples but 3 labels; give one label per sample"),
        (
            "float_labels",
            "data.factory: the whole set y has shape (10,) and dtype float64; expected one integer "
            "class index per sample, shape (N,)",
        ),
        ("raises", "data.factory: {module}:raises raised RuntimeError: the file is gone"),
    ],
)
def test_data_factory_errors(factory_study, data, message):
    study = factory_study(data=data)
    assert problem_of(study) == message.format(module=factory_study.module)


def test_whole_set_is_split_by_study_fractions(factory_study):
    study = factory_study(data="whole_set")
    prepared = prepare(study)
    dataset = prepared.dataset
    assert dataset.kind == "features"
    assert dataset.classes == ("0", "1", "2")
    assert (len(dataset.train_y), len(dataset.val_y), len(dataset.test_y)) == (42, 12, 6)
    assert dataset.train_x.dtype.name == "float32"


def test_features_rejected_for_timm_model(factory_study):
    study = factory_study()
    study = study.replace(model={"name": "resnet10t", "image_size": 32})
    problem = problem_of(study)
    # replace() goes through to_dict, which names a module beside the study file by its file.
    assert problem.startswith("data.factory: /")
    assert (
        f"/{factory_study.module}.py:features returned features of shape (5,), but the "
        "timm model 'resnet10t' takes uint8 images (N, C, H, W)"
    ) in problem


def test_images_resized_for_timm_model(factory_study):
    study = factory_study(data="images").replace(model={"name": "resnet10t", "image_size": 32, "in_chans": 3})
    dataset = prepare(study).dataset
    assert dataset.kind == "image"
    assert dataset.train_x.shape[1:] == (3, 32, 32)
    assert dataset.train_x.dtype.name == "uint8"


# Model factory checks.


@pytest.mark.parametrize(
    "model, message",
    [
        (
            "not_a_module",
            "model.factory: {module}:not_a_module returned dict; expected a torch.nn.Module that maps "
            "inputs (N, 5) to logits (N, 2)",
        ),
        (
            "wrong_classes",
            "model.factory: the model of {module}:wrong_classes returned logits of shape (2, 3) for 2 "
            "samples; expected (2, 2), one logit per class (data.num_classes)",
        ),
        (
            "frozen",
            "model.factory: the model of {module}:frozen has no trainable parameters; return a model with some",
        ),
        (
            "needs_width",
            "model.factory: {module}:needs_width cannot be called as factory(data, **factory_params): "
            "missing a required argument: 'width'; give that parameter a default or add it to space.factory_params",
        ),
    ],
)
def test_model_factory_errors(factory_study, model, message):
    assert problem_of(factory_study(model=model)) == message.format(module=factory_study.module)


def test_model_rejecting_input_shape(factory_study):
    problem = problem_of(factory_study(model="wrong_input"))
    assert problem.startswith(
        f"model.factory: the model of {factory_study.module}:wrong_input failed on 2 training samples of "
        "shape (2, 5): RuntimeError: "
    )
    assert problem.endswith("make it take inputs of shape (N, 5)")


def test_unknown_factory_param_named(factory_study):
    study = factory_study(space={"factory_params": {"widht": {"choices": [4, 8]}}})
    assert problem_of(study) == (
        f"space.factory_params.widht: {factory_study.module}:mlp takes no parameter 'widht' "
        "(did you mean 'width'?); its parameters: width, depth"
    )


def test_factory_params_reach_the_model(factory_study):
    study = factory_study(space={"factory_params": {"width": 7}})
    prepared = prepare(study)
    assert prepared.model_factory.__name__ == "mlp"
    from search.factories import build_factory_model

    model = build_factory_model(prepared.model_factory, {"factory_params": {"width": 7}}, prepared.dataset)
    assert model[1].out_features == 7


# The wine MLP study on real Ray.


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    """The shipped wine study with a smaller budget, run once for the module."""
    import ray

    started = _init_ray(None)
    study = load_study(WINE_STUDY)
    study = study.replace(
        budget={"trials": 6, "max_epochs": 8},
        search={**study.to_dict()["search"], "grace_period": 4, "startup_trials": 4},
    )
    run_dir = tmp_path_factory.mktemp("runs") / "wine"
    result = run(study, run_dir=run_dir, progress=False)
    yield study, result
    if started:
        ray.shutdown()


@pytest.mark.slow
def test_wine_trials_and_states(wine_run):
    study, result = wine_run
    trials = result.optuna_study.trials
    assert len(trials) == study.budget.trials
    states = {trial.state for trial in trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert optuna.trial.TrialState.COMPLETE in states


@pytest.mark.slow
def test_wine_best_accuracy_is_sensible(wine_run):
    _, result = wine_run
    # Chance is about 0.4 on the three wine classes; a trained MLP gets above 0.85.
    assert result.best_trial.value > 0.85


@pytest.mark.slow
def test_wine_trials_store_factory_params(wine_run):
    _, result = wine_run
    trial = result.optuna_study.trials[0]
    assert {"factory_params/depth", "factory_params/width", "lr"} <= set(trial.params)
    config = json.loads(trial.user_attrs["config"])
    assert set(config["factory_params"]) == {"depth", "width", "activation", "norm", "dropout"}
    assert not set(timm_only_terms()) & set(config)


@pytest.mark.slow
def test_wine_best_export_fixes_factory_params(wine_run, tmp_path, capsys):
    _, result = wine_run
    export = tmp_path / "best.yaml"
    assert main(["best", str(result.run_dir), "--export", str(export)]) == 0
    assert "factory_params" in capsys.readouterr().out
    exported = Study.from_dict(load_study(export).to_dict(), source=WINE_STUDY)
    best_params = json.loads(result.best_trial.user_attrs["config"])["factory_params"]
    fixed = exported.space["factory_params"].space
    assert {name: fixed[name].value for name in fixed} == best_params


@pytest.mark.slow
def test_wine_checkpoint_reproduces_accuracy(wine_run):
    import numpy as np
    import torch

    from search.factories import load_factory_trial_model

    study, result = wine_run
    prepared = prepare(study)
    best = result.best_trial
    loaded = load_factory_trial_model(result.run_dir, study, best, prepared)
    assert loaded.epoch == study.budget.max_epochs
    with torch.inference_mode():
        predicted = loaded.model(torch.from_numpy(prepared.dataset.val_x)).argmax(dim=1).numpy()
    accuracy = float(np.mean(predicted == prepared.dataset.val_y))
    assert accuracy == pytest.approx(best.value, abs=1e-9)


def test_saved_study_finds_factory_module(tmp_path):
    """A run directory's study.yaml sits away from tabular.py and still imports it."""
    from search.factories import load_factory

    original = load_study(WINE_STUDY)
    saved = tmp_path / "run" / "study.yaml"
    saved.parent.mkdir()
    saved.write_text(original.to_yaml())

    study = load_study(saved)
    expected = f"{(REPO / 'studies' / 'tabular.py').resolve()}:build_mlp"
    assert study.model.factory == expected
    assert study.to_dict() == original.to_dict()
    assert load_factory(study.model.factory, "model.factory", study).__name__ == "build_mlp"
    assert load_factory(study.data.factory, "data.factory", study).__name__ == "load_wine"


def test_factory_file_path_is_valid_in_a_study():
    import yaml

    mapping = yaml.safe_load(WINE_STUDY.read_text())
    mapping["model"]["factory"] = f"{REPO / 'studies' / 'tabular.py'}:build_mlp"
    study = Study.from_dict(mapping)
    assert study.model.factory == f"{REPO / 'studies' / 'tabular.py'}:build_mlp"


def test_cost_objective_rejected_for_factory_model():
    import yaml

    mapping = yaml.safe_load(WINE_STUDY.read_text())
    mapping["objective"] = {"metrics": [{"metric": "val_accuracy"}, {"metric": "params"}]}
    with pytest.raises(StudyError) as error:
        Study.from_dict(mapping, source=WINE_STUDY)
    assert (
        "objective.metrics[1].metric: the cost metric 'params' is measured on timm models only, "
        "not on model.factory; remove it, or report the cost from your own code"
    ) in str(error.value)


@pytest.mark.slow
def test_wine_run_reports_tests_and_resumes(wine_run, capsys):
    """The commands that reopen a run find the factory module from the run directory."""
    _, result = wine_run
    run_dir = str(result.run_dir)

    assert main(["report", run_dir]) == 0
    html = (result.run_dir / "report.html").read_text()
    assert "Confusion matrix" in html

    assert main(["test", run_dir, "--no-progress"]) == 0
    scores = json.loads((result.run_dir / "test.json").read_text())
    assert [recipe["recipe"] for recipe in scores["recipes"]] == ["best", "default"]
    assert 0.0 <= scores["recipes"][0]["test_accuracy"] <= 1.0

    assert main(["resume", run_dir, "--no-progress"]) == 0
    assert "already has its 6 trials; nothing to run" in capsys.readouterr().err
