"""A study stored in PostgreSQL: run, resume with a larger budget, read back.

The server's URL comes from FTSEARCH_TEST_POSTGRES_URL (`.ci/postgres start` prints one). Without
a reachable server the tests skip, unless CI is set: there they fail.
"""

import os
import uuid

import optuna
import pytest

from search.runner import _init_ray, run
from search.storage import mask_url
from search.study import Study
from tests.conftest import tiny_study_dict

pytestmark = pytest.mark.slow

DEFAULT_URL = "postgresql+psycopg2://ftsearch:ftsearch@127.0.0.1:55432/ftsearch"


def postgres_url():
    import sqlalchemy

    url = os.environ.get("FTSEARCH_TEST_POSTGRES_URL", DEFAULT_URL)
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except (sqlalchemy.exc.OperationalError, ImportError) as error:
        message = f"no PostgreSQL server at {mask_url(url)} ({type(error).__name__}); run .ci/postgres start"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(scope="module")
def postgres_runs(tmp_path_factory):
    import ray

    url = postgres_url()
    started = _init_ray(None)
    name = f"pg-{uuid.uuid4().hex[:8]}"
    study = Study.from_dict(
        tiny_study_dict(name=name, storage=url, budget={"trials": 2, "max_epochs": 1}, search={"sampler": "random"})
    )
    run_dir = tmp_path_factory.mktemp("runs") / name
    first = run(study, run_dir=run_dir, progress=False)
    first_trials = first.optuna_study.trials
    larger = study.replace(budget={"trials": 3, "max_epochs": 1})
    second = run(larger, run_dir=run_dir, progress=False, resume=True)
    yield url, first, first_trials, second
    if started:
        ray.shutdown()
    optuna.delete_study(study_name=name, storage=url)


def test_trials_stored_in_postgres(postgres_runs):
    url, first, first_trials, _ = postgres_runs
    assert len(first_trials) == 2
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in first_trials)
    stored = optuna.load_study(study_name=first.optuna_study.study_name, storage=url)
    assert [trial.value for trial in stored.trials[:2]] == [trial.value for trial in first_trials]


def test_resume_extends_budget(postgres_runs):
    _, _, first_trials, second = postgres_runs
    trials = second.optuna_study.trials
    assert len(trials) == 3
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    assert [trial.params for trial in trials[:2]] == [trial.params for trial in first_trials]


def test_result_masks_password(postgres_runs):
    _, first, _, _ = postgres_runs
    assert first.storage == "postgresql+psycopg2://ftsearch:***@127.0.0.1:55432/ftsearch"
