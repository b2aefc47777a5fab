"""Scoring a finished run on its held-out test split, beside the default recipe.

``score_test_split`` restores the best trial's checkpoint and measures accuracy and loss on the test
split, which no trial has seen. It compares them with the *default recipe*: the study's model
with the defaults of every search term, trained for ``budget.max_epochs`` as a one-trial study
in ``RUN/default/``. The result is stored as ``RUN/test.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from search.study import Study, StudyError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RUN_FOLDER", "TEST_RESULT_FILE", "default_recipe_study", "evaluate_model", "format_test_table", "score_test_split"]

TEST_RESULT_FILE = "test.json"
DEFAULT_RUN_FOLDER = "default"
EVAL_BATCH_SIZE = 256


def default_recipe_study(study: Study, train_images: int) -> Study:
    """Return a one-trial study of ``study``'s model, data and budget with every search term at its default.

    The one exception: when the training split has fewer images than the default batch size,
    the batch size becomes the number of training images, so the recipe can run at all.
    """
    from spaces.terms import TERMS

    resolved = study.to_dict()
    search = {**resolved["search"], "sampler": "random", "scheduler": "none", "concurrency": 1, "startup_trials": None}
    budget = {**resolved["budget"], "trials": 1, "time_limit": None}
    space = {}
    default_batch_size = TERMS["batch_size"].default
    if train_images < default_batch_size:
        logger.warning(
            "The default recipe trains with batch_size %d instead of the default %d: the train split has %d images",
            train_images,
            default_batch_size,
            train_images,
        )
        space["batch_size"] = train_images
    return study.replace(name=f"{study.name}-default", space=space, search=search, budget=budget, storage=None)


def evaluate_model(model, images: np.ndarray, labels: np.ndarray, mean, std, kind: str = "image") -> tuple[float, float]:
    """Return the mean cross-entropy loss and the accuracy of ``model`` on ``images``.

    ``images`` are uint8 (N, C, H, W), normalized here with ``mean`` and ``std``. With ``kind``
    "features" they are a factory's features, passed to the model as float32 unchanged.
    """
    import torch

    mean_tensor = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(labels), EVAL_BATCH_SIZE):
            x = torch.from_numpy(images[start : start + EVAL_BATCH_SIZE]).float()
            if kind == "image":
                x = (x / 255.0 - mean_tensor) / std_tensor
            y = torch.from_numpy(labels[start : start + EVAL_BATCH_SIZE])
            logits = model(x)
            total_loss += loss_fn(logits, y).item()
            correct += (logits.argmax(dim=1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


def score_test_split(run_dir: str | Path, address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score the best trial and the default recipe of the run in ``run_dir`` on its test split.

    Trains the default recipe into ``RUN/default/`` unless a finished one is there already,
    writes ``RUN/test.json`` and returns its contents.

    Raises:
        FileNotFoundError: when ``run_dir`` contains no run.
        StudyError: when no trial of the run completed, or the default recipe failed.
    """
    from search.preflight import prepare
    from search.results import best_trial
    from search.storage import open_run

    run_dir = Path(run_dir).resolve()
    study, optuna_study = open_run(run_dir)
    best = best_trial(optuna_study)
    if best is None:
        raise StudyError(
            f"no trial of the run in {run_dir} completed, so there is no best configuration to test; "
            "run the study again with more trials, epochs or time"
        )
    prepared = prepare(study)
    dataset = prepared.dataset
    recipes = [_score_trial("best", run_dir, study, best, prepared)]
    default_dir = run_dir / DEFAULT_RUN_FOLDER
    default_study, default_trial = _default_recipe_trial(study, len(dataset.train_y), default_dir, address, progress)
    recipes.append(_score_trial("default", default_dir, default_study, default_trial, prepared))
    result = {
        "study": study.name,
        "split": "test",
        "images": int(len(dataset.test_y)),
        "classes": int(dataset.num_classes),
        "metric": study.objective.metric,
        "recipes": recipes,
    }
    path = run_dir / TEST_RESULT_FILE
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Wrote the test split results to %s", path)
    return result


def _default_recipe_trial(study: Study, train_images: int, default_dir: Path, address, progress: bool):
    """Return the default recipe's study and trial, training it into ``default_dir`` if needed."""
    from search.results import best_trial
    from search.runner import run
    from search.storage import RESOLVED_STUDY_FILE, open_run

    if (default_dir / RESOLVED_STUDY_FILE).is_file():
        default_study, optuna_study = open_run(default_dir)
        trial = best_trial(optuna_study)
        if trial is None:
            raise StudyError(
                f"the default recipe in {default_dir} has no completed trial; remove that folder "
                "and run `ftsearch test` again to retrain it"
            )
        logger.info("Reusing the default recipe trained in %s", default_dir)
        return default_study, trial
    default_study = default_recipe_study(study, train_images)
    logger.info("Training the default recipe for %d epochs into %s", study.budget.max_epochs, default_dir)
    result = run(default_study, run_dir=default_dir, address=address, progress=progress)
    trial = result.best_trial
    if trial is None:
        reason = "no trial ran"
        if result.optuna_study.trials:
            reason = result.optuna_study.trials[-1].user_attrs.get("fail_reason", "unknown")
        raise StudyError(f"the default recipe did not complete its training ({reason}); see {default_dir}")
    return default_study, trial


def _score_trial(recipe: str, run_dir: Path, study: Study, trial, prepared) -> dict[str, Any]:
    from search.checkpoints import load_trial_model

    dataset = prepared.dataset
    loaded = load_trial_model(run_dir, study, trial, dataset.num_classes, prepared.normalization, prepared)
    loss, accuracy = evaluate_model(
        loaded.model, dataset.test_x, dataset.test_y, loaded.mean, loaded.std, dataset.kind
    )
    logger.info("%s recipe (trial %d): test accuracy %.4f, test loss %.4f", recipe, trial.number, accuracy, loss)
    return {
        "recipe": recipe,
        "run_dir": str(run_dir),
        "trial": trial.number,
        "epochs": loaded.epoch,
        "objective": trial.value,
        "test_accuracy": accuracy,
        "test_loss": loss,
        "config": loaded.config,
    }


def format_test_table(result: dict[str, Any]) -> str:
    """Return the recipes of a ``score_test_split`` result as a small text table."""
    header = ("recipe", "trial", "epochs", result["metric"], "test_accuracy", "test_loss")
    lines = [header]
    for recipe in result["recipes"]:
        lines.append(
            (
                recipe["recipe"],
                str(recipe["trial"]),
                str(recipe["epochs"]),
                f"{recipe['objective']:.4f}",
                f"{recipe['test_accuracy']:.4f}",
                f"{recipe['test_loss']:.4f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [f"Test split of {result['study']}: {result['images']} images, {result['classes']} classes"]
    text += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text)
