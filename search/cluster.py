"""Running a study on several machines: per-trial resources and checkpoint storage.

Every Ray node writes its trials' checkpoints to the experiment folder directly. On a cluster of
several machines that folder must therefore be storage that every node reaches at the same path
(a network file system), or a URI such as ``s3://bucket/folder``. ``cluster.checkpoint_storage``
names it; without it the experiment folder is ``RUN/tune``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from search.study import Study, StudyError

logger = logging.getLogger(__name__)

__all__ = [
    "check_checkpoint_storage",
    "describe_cluster",
    "experiment_folder",
    "trial_resources",
    "warn_if_storage_not_shared",
]

MIB = 2**20


def trial_resources(study: Study) -> dict[str, float]:
    """Return the Ray resources one trial reserves: CPUs, GPUs (fractions share a GPU), memory."""
    resources: dict[str, float] = {"cpu": study.resources.cpus, "gpu": study.resources.gpus}
    if study.resources.memory_mb is not None:
        resources["memory"] = study.resources.memory_mb * MIB
    return resources


def experiment_folder(study: Study, run_dir: Path) -> str:
    """Return the folder (or URI) under which Ray Tune keeps the ``tune`` experiment folder."""
    location = study.cluster.checkpoint_storage
    if location is None:
        return str(run_dir)
    return f"{location.rstrip('/')}/{study.name}"


def check_checkpoint_storage(study: Study) -> None:
    """Check that ``cluster.checkpoint_storage`` can be written from this machine.

    Raises:
        StudyError: when the folder cannot be created or written, or the URI has no file system.
    """
    location = study.cluster.checkpoint_storage
    if location is None:
        return
    if "://" in location:
        _check_uri(location)
        return
    folder = Path(location) / study.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise StudyError(
            f"cluster.checkpoint_storage: cannot write to {location!r} ({error.strerror or error}); "
            "give a folder that this machine and every Ray node can write, such as a network file "
            "system mounted at the same path on each node"
        ) from None


def _check_uri(location: str) -> None:
    import pyarrow.fs

    try:
        pyarrow.fs.FileSystem.from_uri(location)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError) as error:
        raise StudyError(
            f"cluster.checkpoint_storage: cannot open {location!r}: {error}; give a URI that "
            "pyarrow supports (s3://, gs://, hdfs://) with its credentials set, or an absolute path"
        ) from None


def warn_if_storage_not_shared(study: Study, run_dir: Path) -> None:
    """Warn when the cluster spans several hosts but checkpoints go to the driver's run directory."""
    import ray

    if study.cluster.checkpoint_storage is not None:
        return
    hosts = {node.get("NodeManagerHostname") for node in ray.nodes() if node.get("Alive")}
    if len(hosts) > 1:
        logger.warning(
            "The Ray cluster spans %d hosts but cluster.checkpoint_storage is not set, so every "
            "node writes checkpoints to %s; make that path shared storage on every node, or set "
            "cluster.checkpoint_storage",
            len(hosts),
            os.path.join(run_dir, "tune"),
        )


def describe_cluster() -> dict[str, Any]:
    """Return the alive nodes and the cluster's total resources, for the run's log."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return {"nodes": len(nodes), "resources": ray.cluster_resources()}
