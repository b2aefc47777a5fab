"""Finding and loading the checkpoint a trial left in the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.storage import trial_config
from search.trainable import CHECKPOINT_FILE

__all__ = ["TrialModel", "find_checkpoint", "load_trial_model"]

TUNE_FOLDER = "tune"


@dataclass
class TrialModel:
    """A trial's fine-tuned model in eval mode, with what is needed to feed it images."""

    model: Any
    config: dict[str, Any]
    backbone: str
    epoch: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def find_checkpoint(run_dir: str | Path, trial) -> Path:
    """Return the newest checkpoint file of an Optuna ``trial`` of the run in ``run_dir``.

    Raises:
        FileNotFoundError: when the trial left no checkpoint.
    """
    ray_id = trial.user_attrs.get("ray_trial_id")
    folder = Path(run_dir) / TUNE_FOLDER / f"trial_{ray_id}"
    # Runs with cluster.checkpoint_storage keep trial folders outside the run directory.
    if "trial_folder" in trial.user_attrs:
        folder = Path(trial.user_attrs["trial_folder"])
    checkpoints = sorted(folder.glob(f"checkpoint_*/{CHECKPOINT_FILE}"))
    if ray_id is None or not checkpoints:
        raise FileNotFoundError(
            f"trial {trial.number} left no checkpoint in {folder}; it may have failed before "
            "its first epoch, or the run directory was moved without its tune/ folder"
        )
    return checkpoints[-1]


def load_trial_model(run_dir: str | Path, study, trial, num_classes: int, normalization, prepared=None) -> TrialModel:
    """Rebuild ``trial``'s model from its configuration and load its last checkpoint.

    ``normalization`` maps each backbone to its (mean, std), as ``search.preflight.prepare``
    returns it. No pretrained weights are loaded: the checkpoint contains every tensor. When the
    study's objective is an EMA metric (``val_accuracy_ema``, ``val_loss_ema``), the moving
    average of the weights is loaded, since that is the model the objective scored. A factory
    model is rebuilt by its factory, which needs ``prepared`` (``search.preflight.prepare``).
    """
    import torch

    from search.model import build_model
    from spaces.terms import model_config

    if study.model.factory is not None and prepared is not None:
        from search.factories import load_factory_trial_model

        return load_factory_trial_model(run_dir, study, trial, prepared)
    if study.model.factory is not None:
        raise ValueError(
            f"the model of study {study.name!r} comes from model.factory; load its trials with "
            "search.factories.load_factory_trial_model"
        )
    config = trial_config(trial)
    backbone = config.get("backbone") or study.model.name
    path = find_checkpoint(run_dir, trial)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Freezing only matters for training, and it would warn that no pretrained weights were given.
    build_config = {**model_config(config), "frozen_stages": 0}
    model, _ = build_model(backbone, num_classes, build_config, in_chans=study.model.in_chans)
    use_ema = study.objective.metric.endswith("_ema") and "model_ema" in state
    model.load_state_dict(state["model_ema" if use_ema else "model"])
    model.eval()
    mean, std = normalization[backbone]
    return TrialModel(model, config, backbone, int(state["epoch"]), mean, std)
