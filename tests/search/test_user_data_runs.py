"""Studies on image folders and CSV files, end to end on real Ray Tune with resnet10t at 32 px."""

import json

import numpy as np
import optuna
import pytest
import timm
import torch
import yaml

from search.checkpoints import load_trial_model
from search.cli import main
from search.evaluate import score_test_split
from search.preflight import prepare
from search.runner import run
from search.storage import open_run, trial_config
from search.study import Study
from spaces.terms import TERMS
from tests.conftest import tiny_study_dict
from tests.search.image_data import write_class_folders

pytestmark = pytest.mark.slow

COMPLETE = optuna.trial.TrialState.COMPLETE


@pytest.fixture(scope="module")
def folder_run(ray_session, tmp_path_factory):
    """A 2-trial study on an image folder of 3 classes, split 60/20/20 by fractions."""
    root = write_class_folders(tmp_path_factory.mktemp("data") / "images", {"red": 16, "green": 16, "blue": 16})
    study = Study.from_dict(
        tiny_study_dict(
            name="folder",
            data={"source": "folder", "path": str(root), "val_fraction": 0.2, "test_fraction": 0.2},
            search={"sampler": "random"},
            space={"lr": {"choices": [3.0e-3, 1.0e-2]}, "batch_size": 8},
        )
    )
    result = run(study, run_dir=tmp_path_factory.mktemp("runs") / "folder", progress=False)
    return study, result


@pytest.fixture(scope="module")
def folder_test(folder_run):
    """The test-split scores of the folder study, with its default recipe trained once."""
    _, result = folder_run
    return score_test_split(result.run_dir, progress=False)


@pytest.fixture(scope="module")
def csv_run(ray_session, tmp_path_factory):
    """A 2-trial study on a CSV file with a split column, run through `ftsearch run --test`."""
    folder = tmp_path_factory.mktemp("csv")
    write_class_folders(folder / "pictures", {"a": 12, "b": 12})
    rows = ["file,kind,part"]
    for name in "ab":
        for index in range(12):
            part = "train"
            if index >= 8:
                part = "val" if index < 10 else "test"
            rows.append(f"pictures/{name}/{index:03d}.png,{name},{part}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    mapping = tiny_study_dict(
        name="csv",
        data={"source": "csv", "path": "labels.csv", "path_column": "file", "label_column": "kind", "split_column": "part"},
        search={"sampler": "random"},
        space={"lr": {"choices": [3.0e-3, 1.0e-2]}, "batch_size": 8},
    )
    study_file = folder / "study.yaml"
    study_file.write_text(yaml.safe_dump(mapping))
    run_dir = folder / "run"
    assert main(["run", str(study_file), "--run-dir", str(run_dir), "--no-progress", "--test"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def grayscale_run(ray_session, tmp_path_factory):
    """One trial of a grayscale folder with model.in_chans 1 and 3-channel pretrained weights."""
    folder = tmp_path_factory.mktemp("gray")
    write_class_folders(folder / "images", {"dark": 10, "light": 10}, mode="L")
    torch.save(timm.create_model("resnet10t", num_classes=5).state_dict(), folder / "resnet10t.pth")
    study = Study.from_dict(
        tiny_study_dict(
            name="gray",
            model={"in_chans": 1, "pretrained": "resnet10t.pth"},
            data={"source": "folder", "path": "images"},
            budget={"trials": 1},
            space={"batch_size": 8},
        ),
        source=folder / "study.yaml",
    )
    result = run(study, run_dir=folder / "run", progress=False)
    return study, result


def test_folder_study_trials_complete(folder_run):
    study, result = folder_run
    trials = result.optuna_study.trials
    assert len(trials) == study.budget.trials
    assert all(trial.state == COMPLETE for trial in trials)
    assert all(0.0 <= trial.value <= 1.0 for trial in trials)


def test_folder_study_saves_absolute_data_path(folder_run):
    study, result = folder_run
    saved, _ = open_run(result.run_dir)
    assert saved.data.path == study.data.path
    assert saved.data.source == "folder"


def test_test_split_result_saved(folder_test, folder_run):
    _, result = folder_run
    saved = json.loads((result.run_dir / "test.json").read_text())
    assert saved == folder_test
    assert [recipe["recipe"] for recipe in saved["recipes"]] == ["best", "default"]
    assert saved["images"] == 10
    assert saved["classes"] == 3
    assert saved["recipes"][0]["trial"] == result.best_trial.number
    assert saved["recipes"][0]["objective"] == result.best_trial.value


def test_best_test_accuracy_matches_checkpoint(folder_test, folder_run):
    study, result = folder_run
    prepared = prepare(study)
    dataset = prepared.dataset
    loaded = load_trial_model(result.run_dir, study, result.best_trial, dataset.num_classes, prepared.normalization)
    mean = torch.tensor(loaded.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std).view(1, -1, 1, 1)
    with torch.inference_mode():
        logits = loaded.model((torch.from_numpy(dataset.test_x).float() / 255.0 - mean) / std)
    labels = torch.from_numpy(dataset.test_y)
    best = folder_test["recipes"][0]
    assert best["test_accuracy"] == pytest.approx(float(np.mean(logits.argmax(1).numpy() == dataset.test_y)))
    assert best["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_default_recipe_takes_term_defaults(folder_test, folder_run):
    _, result = folder_run
    _, default = open_run(result.run_dir / "default")
    (trial,) = default.trials
    assert trial.state == COMPLETE
    config = trial_config(trial)
    for name, term in TERMS.items():
        if name != "batch_size":
            assert config[name] == term.default, name
    # The 28 training images are fewer than the default batch size of 64.
    assert config["batch_size"] == 28
    assert folder_test["recipes"][1]["config"] == config
    assert folder_test["recipes"][1]["epochs"] == 1


def test_test_command_reuses_default_recipe(folder_test, folder_run, capsys):
    _, result = folder_run
    assert main(["test", str(result.run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Test split of folder: 10 images, 3 classes" in out
    assert "recipe   trial  epochs  val_accuracy  test_accuracy  test_loss" in out
    _, default = open_run(result.run_dir / "default")
    assert len(default.trials) == 1


def test_csv_study_with_test_flag(csv_run):
    study, optuna_study = open_run(csv_run)
    assert [trial.state for trial in optuna_study.trials] == [COMPLETE, COMPLETE]
    dataset = prepare(study).dataset
    assert (len(dataset.train_y), len(dataset.val_y), len(dataset.test_y)) == (16, 4, 4)
    saved = json.loads((csv_run / "test.json").read_text())
    assert [recipe["recipe"] for recipe in saved["recipes"]] == ["best", "default"]
    assert saved["images"] == 4


def test_grayscale_study_trains_one_channel_model(grayscale_run):
    study, result = grayscale_run
    (trial,) = result.optuna_study.trials
    assert trial.state == COMPLETE
    prepared = prepare(study)
    assert prepared.dataset.train_x.shape[1:] == (1, 32, 32)
    assert prepared.weights["resnet10t"] is not None
    assert len(prepared.normalization["resnet10t"][0]) == 1
    loaded = load_trial_model(result.run_dir, study, trial, prepared.dataset.num_classes, prepared.normalization)
    first_conv = next(module for module in loaded.model.modules() if isinstance(module, torch.nn.Conv2d))
    assert first_conv.in_channels == 1


def test_saved_study_finds_relative_weight_file(grayscale_run):
    study, result = grayscale_run
    saved, _ = open_run(result.run_dir)
    assert saved.model.pretrained == str(study.source.parent / "resnet10t.pth")
    assert prepare(saved, load_data=False).weights["resnet10t"] is not None
