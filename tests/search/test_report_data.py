"""Report data and drawing on Optuna studies built directly in SQLite, one per hard case."""

import math
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search import report, report_data

optuna.logging.set_verbosity(optuna.logging.WARNING)

START = datetime(2026, 1, 1, 12, 0, 0)
LR = FloatDistribution(1e-6, 1e-1, log=True)
WIDTH = IntDistribution(16, 64)
ACTIVATION = CategoricalDistribution([None, "relu", "silu"])
SIZES = CategoricalDistribution(["[64, 128]", "[32]"])


def new_study(tmp_path, name="hard", **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}", **kwargs)


def add(study, number, state=TrialState.COMPLETE, value=None, params=None, curve=None, start=0.0, seconds=10.0, values=None):
    """Add a finished trial that started ``start`` seconds after START and ran ``seconds``."""
    params = params if params is not None else {}
    distributions = {"lr": LR, "width": WIDTH, "activation": ACTIVATION, "sizes": SIZES, "head": CategoricalDistribution(["linear", "mlp"]), "head/mlp/hidden": WIDTH}
    trial = optuna.trial.FrozenTrial(
        number=number,
        state=state,
        value=value if values is None else None,
        values=values,
        datetime_start=START + timedelta(seconds=start),
        datetime_complete=START + timedelta(seconds=start + seconds),
        params=params,
        distributions={name: distributions[name] for name in params},
        user_attrs={},
        system_attrs={},
        intermediate_values=dict(curve or {}),
        trial_id=number,
    )
    study.add_trial(trial)


def draw_everything(study):
    """Draw every figure and the page; return the data, the figures and the HTML."""
    data = report.collect_data(study)
    figures = report.build_figures(data)
    page = report.render_report("hard case", study, data, figures)
    return data, figures, page


def test_display_label_reads_like_a_study_file():
    assert report_data.display_label(None) == "null"
    assert report_data.display_label("[64, 128]") == "[64, 128]"
    assert report_data.display_label(True) == "true"
    assert report_data.display_label(0.000123456) == "0.0001235"
    assert report_data.display_label("mlp") == "mlp"


def test_empty_study_renders_notes(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    data, figures, page = draw_everything(study)
    assert data["history"]["note"] == "no trial completed with a finite value, so there is no history to show"
    assert data["importance"]["note"] == "0 completed trial(s); importances need at least 2"
    assert data["learning_curves"]["note"] == "no trial reported a value after an epoch yet"
    assert data["timeline"]["note"] == "no trial has started yet"
    assert data["confusion"]["note"] == "no run directory, so no checkpoint to evaluate"
    assert all(figure is None for figure in figures.values())
    assert "the study has no trials yet" in page
    assert "no trial completed, so there is no best configuration yet" in page


def test_one_completed_trial(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    add(study, 0, value=0.8, params={"lr": 1e-3, "width": 32}, curve={1: 0.5, 2: 0.8})
    data, figures, page = draw_everything(study)
    assert data["history"]["trials"] == [0]
    assert data["history"]["best"] == [0.8]
    assert data["importance"]["note"] == "1 completed trial(s); importances need at least 2"
    assert data["parallel"]["note"].startswith("1 completed trial(s)")
    assert data["contour"]["note"] == "a contour needs 2 varied parameters; this study has 0"
    assert data["slice"]["note"] == "no parameter varied among the completed trials"
    assert figures["history"] is not None
    assert figures["learning_curves"] is not None
    assert figures["importance"] is None
    assert "Trial 0</b>: value 0.8000 after 2 epochs" in page


def test_history_best_so_far_follows_direction(tmp_path):
    for direction, expected in (("maximize", [0.5, 0.7, 0.7, 0.9]), ("minimize", [0.5, 0.5, 0.3, 0.3])):
        study = new_study(tmp_path / direction, direction=direction)
        for number, value in enumerate([0.5, 0.7, 0.3, 0.9]):
            add(study, number, value=value, params={"lr": 10 ** -(number + 1)})
        assert report_data.history_data(study)["best"] == expected


def test_parameter_that_never_varied_is_left_out(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    for number in range(6):
        lr = 10 ** -(1 + number / 2)
        add(study, number, value=1.0 - lr, params={"lr": lr, "width": 32})
    importance = report_data.importance_data(study)
    assert importance["params"] == ["lr"]
    assert importance["importances"] == [pytest.approx(1.0)]
    assert importance["note"] == "parameters with one value in every completed trial, left out: width"
    parallel = report_data.parallel_data(study)
    assert [dim["name"] for dim in parallel["dimensions"]] == ["lr"]
    assert parallel["dimensions"][0]["log"] is True
    assert report_data.contour_data(study, importance)["note"] == "a contour needs 2 varied parameters; this study has 1"
    _, figures, _ = draw_everything(study)
    assert figures["parallel"] is not None
    assert figures["contour"] is None


def test_only_pruned_and_failed_trials(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    add(study, 0, state=TrialState.PRUNED, params={"lr": 1e-3}, curve={1: 0.3})
    add(study, 1, state=TrialState.FAIL, params={"lr": 1e-2}, start=5.0)
    add(study, 2, state=TrialState.PRUNED, params={"lr": 1e-4}, curve={1: 0.2, 2: 0.25}, start=10.0)
    data, figures, page = draw_everything(study)
    assert data["history"]["trials"] == []
    curves = data["learning_curves"]["curves"]
    assert [(c["trial"], c["cut"], c["steps"]) for c in curves] == [(0, True, [1]), (2, True, [1, 2])]
    assert len(data["timeline"]["trials"]) == 3
    assert figures["learning_curves"] is not None
    assert figures["timeline"] is not None
    assert figures["history"] is None
    table = report_data.trials_table(study)
    assert [row["state"] for row in table["rows"]] == ["PRUNED", "FAIL", "PRUNED"]
    assert table["rows"][0]["values"] == []
    assert "no trial completed, so there is no best configuration yet" in page


def test_none_and_list_choices_keep_their_labels(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    choices = [(None, "[64, 128]"), ("relu", "[32]"), (None, "[32]"), ("silu", "[64, 128]")]
    for number, (activation, sizes) in enumerate(choices):
        add(study, number, value=0.5 + number / 10, params={"activation": activation, "sizes": sizes, "lr": 10 ** -(number + 1)})
    slices = {param["name"]: param for param in report_data.slice_data(study)["params"]}
    assert slices["activation"]["categorical"] is True
    assert slices["activation"]["labels"] == ["null", "relu", "silu"]
    assert slices["activation"]["x"] == ["null", "relu", "null", "silu"]
    assert slices["sizes"]["x"] == ["[64, 128]", "[32]", "[32]", "[64, 128]"]
    parallel = {dim["name"]: dim for dim in report_data.parallel_data(study)["dimensions"]}
    assert parallel["activation"]["values"] == [0, 1, 0, 2]
    table = report_data.trials_table(study)
    assert table["params"] == ["activation", "sizes", "lr"]
    assert table["rows"][0]["params"][:2] == ["null", "[64, 128]"]
    best = report_data.best_configuration(study)["trials"][0]
    assert best["params"]["activation"] == "silu"
    _, figures, page = draw_everything(study)
    assert figures["contour"] is not None
    assert "<td>null</td>" in page
    assert "<td>[64, 128]</td>" in page


def test_nan_values_become_gaps(tmp_path):
    study = new_study(tmp_path, direction="minimize")
    add(study, 0, value=0.4, params={"lr": 1e-3}, curve={1: float("nan"), 2: 0.4})
    add(study, 1, state=TrialState.FAIL, params={"lr": 1e-1}, curve={1: float("inf")}, start=1.0)
    curves = report_data.learning_curves(study)["curves"]
    assert curves[0]["values"] == [None, 0.4]
    assert curves[1]["values"] == [None]
    _, figures, _ = draw_everything(study)
    assert figures["learning_curves"] is not None


def test_conditional_parameter_absent_in_some_trials(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    add(study, 0, value=0.6, params={"head": "linear", "lr": 1e-3})
    add(study, 1, value=0.7, params={"head": "mlp", "head/mlp/hidden": 16, "lr": 1e-2})
    add(study, 2, value=0.9, params={"head": "mlp", "head/mlp/hidden": 64, "lr": 3e-3})
    parallel = {dim["name"]: dim for dim in report_data.parallel_data(study)["dimensions"]}
    assert parallel["head/mlp/hidden"]["values"] == [None, 16.0, 64.0]
    table = report_data.trials_table(study)
    assert table["rows"][0]["params"] == ["linear", "0.001", ""]
    # Optuna's evaluator takes only parameters every completed trial has.
    assert set(report_data.importance_data(study)["params"]) == {"lr", "head"}
    _, figures, _ = draw_everything(study)
    assert figures["parallel"] is not None


def test_timeline_lanes_show_concurrency(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    add(study, 0, value=0.5, params={"lr": 1e-3}, start=0, seconds=10)
    add(study, 1, value=0.6, params={"lr": 1e-2}, start=2, seconds=10)
    add(study, 2, value=0.7, params={"lr": 1e-4}, start=10, seconds=5)
    add(study, 3, value=0.8, params={"lr": 1e-1}, start=13, seconds=5)
    timeline = report_data.timeline_data(study)
    workers = {row["trial"]: row["worker"] for row in timeline["trials"]}
    assert workers == {0: "lane 1", 1: "lane 2", 2: "lane 1", 3: "lane 2"}
    assert timeline["max_concurrent"] == 2


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_pareto_front_of_two_objectives(tmp_path):
    study = new_study(tmp_path, directions=["maximize", "minimize"])
    points = [(0.9, 5.0), (0.8, 2.0), (0.7, 3.0), (0.95, 9.0), (0.6, 1.0)]
    for number, values in enumerate(points):
        add(study, number, values=list(values), params={"lr": 10 ** -(number + 1)})
    study.set_metric_names(["val_accuracy", "seconds"])
    pareto = report_data.pareto_data(study)
    assert pareto["objectives"] == ["val_accuracy", "seconds"]
    assert pareto["directions"] == ["maximize", "minimize"]
    assert pareto["front"] == [True, True, False, True, True]
    assert pareto["note"] is None
    best = report_data.best_configuration(study)
    assert sorted(entry["trial"] for entry in best["trials"]) == [0, 1, 3, 4]
    history = report_data.history_data(study)
    assert history["objective"] == "val_accuracy"
    assert history["note"] == "multi-objective study: this figure shows the first objective, val_accuracy"
    _, figures, page = draw_everything(study)
    assert figures["pareto"] is not None
    assert "4 trials are on the Pareto front." in page


def test_pareto_of_three_objectives_draws(tmp_path):
    study = new_study(tmp_path, directions=["maximize", "minimize", "minimize"])
    for number in range(4):
        add(study, number, values=[number / 4, 4 - number, (number - 2) ** 2], params={"lr": 10 ** -(number + 1)})
    pareto = report_data.pareto_data(study)
    assert pareto["objectives"] == ["value 0", "value 1", "value 2"]
    assert len(pareto["values"]) == 4
    assert report.build_figures({"pareto": pareto})["pareto"] is not None


def test_single_objective_has_no_pareto_section(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    add(study, 0, value=0.5, params={"lr": 1e-3})
    assert report_data.pareto_data(study)["note"] == "single-objective study: no Pareto front"
    _, _, page = draw_everything(study)
    assert 'id="pareto"' not in page


def test_status_lists_running_trials(tmp_path):
    study = new_study(tmp_path, direction="maximize")
    add(study, 0, value=0.5, params={"lr": 1e-3})
    running = study.ask({"lr": LR})
    running.report(0.42, 1)
    status = report_data.status_data(study)
    assert status["total"] == 2
    assert status["counts"]["COMPLETE"] == 1
    assert status["counts"]["RUNNING"] == 1
    assert [entry["trial"] for entry in status["running"]] == [1]
    assert status["running"][0]["epochs"] == 1
    assert status["running"][0]["last_value"] == pytest.approx(0.42)
    text = report.format_status(status)
    assert "Study hard: 2 trials (1 COMPLETE, 1 RUNNING)" in text
    assert "Best: trial 0: value 0.5000; lr=0.001" in text
    assert "Running: trial 1 for" in text
    assert "1 epochs, last value 0.4200" in text


def test_comparison_of_two_studies(tmp_path):
    first = new_study(tmp_path / "a", name="a", direction="maximize")
    second = new_study(tmp_path / "b", name="b", direction="maximize")
    for number, value in enumerate([0.5, 0.8, 0.6]):
        add(first, number, value=value, params={"lr": 10 ** -(number + 1)})
    add(second, 0, value=0.9, params={"width": 32, "lr": 1e-3})
    data = report_data.comparison_data([("a", first), ("b", second)])
    assert [entry["best_value"] for entry in data["runs"]] == [0.8, 0.9]
    assert data["runs"][0]["best_so_far"] == [0.5, 0.8, 0.8]
    assert data["runs"][1]["best_params"] == {"width": "32", "lr": "0.001"}
    assert data["params"] == ["lr", "width"]
    page = report.render_comparison(data)
    assert "<td>a</td>" in page
    assert math.isfinite(data["runs"][1]["best_value"])
