"""ftsearch's engine: study files, the trainable, the Ray Tune + Optuna runner and storage.

Example::

    import search

    study = search.load_study("studies/digits.yaml")
    result = search.run(study)
    print(result.best_trial.value)
"""

import logging

from search.study import Study, StudyError, load_study

__all__ = ["Study", "StudyError", "load_study", "run", "validate"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def run(study, run_dir=None, address=None, progress=True, resume=False):
    """Run ``study`` to its budget; see :func:`search.runner.run`."""
    from search.runner import run as run_study

    return run_study(study, run_dir=run_dir, address=address, progress=progress, resume=resume)


def validate(study):
    """Check ``study`` against timm and its data before any trial; see :func:`search.preflight.prepare`."""
    from search.preflight import prepare

    return prepare(study)
