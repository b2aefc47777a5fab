"""The Optuna storage of a run: where it is, how it is shown in logs, and reading it back."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "RESOLVED_STUDY_FILE",
    "STORAGE_FILE",
    "mask_url",
    "open_storage",
    "open_run",
    "storage_url",
    "trial_config",
]

STORAGE_FILE = "study.db"
RESOLVED_STUDY_FILE = "study.yaml"
CONFIG_ATTR = "config"
FAIL_REASON_ATTR = "fail_reason"
STOP_REASON_ATTR = "stop_reason"
# Written by the runner for every trial: the count of pretrained tensors kept and the names
# of the tensors initialised anew. With cost objectives it also writes ``cost/<metric>``.
WEIGHTS_KEPT_ATTR = "weights_kept"
WEIGHTS_NEW_ATTR = "weights_new"
COST_ATTR_PREFIX = "cost/"
# With several objectives Optuna stores no intermediate values, so the first objective's
# value after each epoch is kept in this user attribute, a list indexed by epoch - 1.
EPOCH_VALUES_ATTR = "epoch_values"


def storage_url(study, run_dir: Path) -> str:
    """Return the study's SQLAlchemy URL: its ``storage`` or SQLite in the run directory."""
    if study.storage:
        return study.storage
    return f"sqlite:///{(Path(run_dir) / STORAGE_FILE).resolve()}"


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid storage URL>"


def open_storage(url: str):
    """Return an Optuna RDB storage for ``url``; a SQLite file waits up to 60 s for locks."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    from sqlalchemy.exc import SQLAlchemyError

    from search.study import StudyError

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as error:
        # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; psycopg2 needs postgresql+psycopg2://.
        raise StudyError(
            f"storage: the database driver for {mask_url(url)} is not installed ({error}); {_driver_fix(url)}"
        ) from None
    except SQLAlchemyError as error:
        # The first line of SQLAlchemy's message names the cause; the rest repeats the statement.
        cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        if url.startswith("sqlite"):
            fix = "check that the file's folder exists and is writable"
        else:
            fix = "check that the database server runs, listens at that address and accepts this user"
        raise StudyError(f"storage: cannot open {mask_url(url)}: {cause}; {fix}") from None


def _driver_fix(url: str) -> str:
    if url.startswith("postgresql"):
        return "run pip install psycopg2-binary and write the URL as postgresql+psycopg2://..."
    if url.startswith("mysql"):
        return "run pip install PyMySQL and write the URL as mysql+pymysql://..."
    return "install the SQLAlchemy driver that the URL's scheme names"


def open_run(run_dir: str | Path):
    """Load the Optuna study stored for the run in ``run_dir``.

    Raises:
        FileNotFoundError: when ``run_dir`` contains no run.
    """
    import optuna

    from search.study import load_study

    run_dir = Path(run_dir)
    study_file = run_dir / RESOLVED_STUDY_FILE
    if not study_file.is_file():
        raise FileNotFoundError(
            f"no run found in {str(run_dir)!r}: {RESOLVED_STUDY_FILE} is missing; give the run "
            "directory that `ftsearch run` wrote (runs/<study name> by default)"
        )
    study = load_study(study_file)
    url = storage_url(study, run_dir)
    try:
        optuna_study = optuna.load_study(study_name=study.name, storage=open_storage(url))
    except KeyError:
        raise FileNotFoundError(
            f"the storage {mask_url(url)} has no study named {study.name!r}; the run in "
            f"{str(run_dir)!r} has not started a trial yet"
        ) from None
    return study, optuna_study


def trial_config(trial) -> dict[str, Any]:
    """Return the configuration a stored trial was trained with, decoded from its attributes."""
    return json.loads(trial.user_attrs.get(CONFIG_ATTR, "{}"))
