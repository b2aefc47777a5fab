"""The study's tracking section and MLflow logging through Ray Tune's MLflowLoggerCallback."""

import sys

import pytest

from search.study import Study, StudyError
from search.tracking import tracking_callbacks
from tests.conftest import tiny_study_dict


def test_tracking_defaults_to_nothing():
    study = Study.from_dict(tiny_study_dict())
    assert study.tracking.mlflow_uri is None
    assert tracking_callbacks(study) == []


@pytest.mark.parametrize(
    ("tracking", "message"),
    [
        (
            {"mlflow_uri": "mlruns"},
            "tracking.mlflow_uri: 'mlruns' is not an MLflow tracking URI (schemes: file, http, https, "
            "sqlite, postgresql, mysql, mssql, databricks); write sqlite:////abs/path/mlflow.db for a local store",
        ),
        ({"mlflow_uri": 5}, "tracking.mlflow_uri: expected text or null, got int 5"),
        ({"mlflow": "file:///x"}, "tracking.mlflow: unknown key in tracking (did you mean 'mlflow_uri'?)"),
    ],
)
def test_invalid_tracking_rejected(tracking, message):
    with pytest.raises(StudyError) as error:
        Study.from_dict(tiny_study_dict(tracking=tracking))
    assert message in str(error.value)


def test_tracking_round_trips_through_yaml(tmp_path):
    study = Study.from_dict(tiny_study_dict(tracking={"mlflow_uri": "file:///tmp/mlruns", "mlflow_experiment": "e"}))
    assert Study.from_dict(study.to_dict()).tracking == study.tracking


def test_missing_mlflow_named_with_the_fix(monkeypatch):
    # None in sys.modules makes `import mlflow` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    study = Study.from_dict(tiny_study_dict(tracking={"mlflow_uri": "http://user:secret@127.0.0.1:5000"}))
    with pytest.raises(StudyError) as error:
        tracking_callbacks(study)
    text = str(error.value)
    assert "tracking.mlflow_uri: 'http://user:***@127.0.0.1:5000' is set but MLflow is not installed" in text
    assert "pip install 'ftsearch[mlflow]' or remove tracking.mlflow_uri" in text
    assert "secret" not in text


@pytest.mark.slow
def test_trial_metrics_reach_local_store(tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install 'ftsearch[mlflow]'")
    import ray

    from search.runner import _init_ray, run

    # MLflow 3 rejects its folder store unless MLFLOW_ALLOW_FILE_STORE is set; SQLite is its local default.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = Study.from_dict(
        tiny_study_dict(name="tracked", budget={"trials": 1, "max_epochs": 2}, tracking={"mlflow_uri": store})
    )
    started = _init_ray(None)
    try:
        result = run(study, run_dir=tmp_path / "run", progress=False)
    finally:
        if started:
            ray.shutdown()
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "val_accuracy")
    assert [point.step for point in history] == [1, 2]
    assert history[-1].value == pytest.approx(result.optuna_study.trials[0].value)
    assert runs[0].data.tags["study"] == "tracked"
