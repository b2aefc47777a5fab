"""Logging integrations beyond the Optuna storage: MLflow, when the study names a tracking URI.

TensorBoard needs nothing here: Ray Tune's default TBXLoggerCallback writes an event file
into every trial folder (``RUN/tune/trial_*/events.out.tfevents.*``).
"""

from __future__ import annotations

import logging

from search.storage import mask_url
from search.study import Study, StudyError

logger = logging.getLogger(__name__)

__all__ = ["tracking_callbacks"]


def tracking_callbacks(study: Study) -> list:
    """Return the Ray Tune logger callbacks the study's ``tracking`` section requests.

    Raises:
        StudyError: when ``tracking.mlflow_uri`` is set but MLflow is not installed.
    """
    uri = study.tracking.mlflow_uri
    if uri is None:
        return []
    try:
        import mlflow  # noqa: F401 - Ray's callback imports it only when the run starts
    except ImportError:
        raise StudyError(
            f"tracking.mlflow_uri: {mask_url(uri)!r} is set but MLflow is not installed; "
            "run pip install 'ftsearch[mlflow]' or remove tracking.mlflow_uri"
        ) from None
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    experiment = study.tracking.mlflow_experiment or study.name
    logger.info("Logging every trial to MLflow at %s, experiment %r", mask_url(uri), experiment)
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, tags={"study": study.name})]
