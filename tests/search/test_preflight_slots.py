"""Preflight builds every architecture choice and rejects the ones that cannot work."""

import pytest

from search.cli import main
from search.preflight import prepare
from search.study import Study, StudyError
from tests.conftest import tiny_study_dict


def problems_of(mapping):
    with pytest.raises(StudyError) as error:
        prepare(Study.from_dict(mapping), load_data=False)
    return error.value.problems


def test_norm_on_model_without_batch_norm():
    mapping = tiny_study_dict(
        model={"name": "convnext_atto"}, space={"norm": {"choices": ["batchnorm", "layernorm"]}}
    )

    assert problems_of(mapping) == [
        "space.norm: model 'convnext_atto' cannot take norm 'batchnorm': it has no BatchNorm2d "
        "layers to replace. Remove 'batchnorm' from the norm choices or choose another model",
        "space.norm: model 'convnext_atto' cannot take norm 'layernorm': it has no BatchNorm2d "
        "layers to replace. Remove 'layernorm' from the norm choices or choose another model",
    ]


def test_pool_choice_one_backbone_cannot_take():
    mapping = tiny_study_dict(
        space={
            "backbone": {"choices": ["resnet10t", "mobilenetv3_small_050"]},
            "pool": {"choices": ["avg", "catavgmax"]},
        }
    )

    assert problems_of(mapping) == [
        "space.pool: model 'mobilenetv3_small_050' cannot take pool 'catavgmax': layers between "
        "its pool and its classifier take 288 features, so the pooled width cannot double. "
        "Remove 'catavgmax' from the pool choices or choose another model"
    ]


def test_drop_path_on_model_without_it():
    mapping = tiny_study_dict(
        model={"name": "dla46_c"}, space={"drop_path_rate": {"type": "float", "low": 0.0, "high": 0.2}}
    )

    (problem,) = problems_of(mapping)
    assert problem.startswith("space.drop_path_rate: model 'dla46_c' does not accept drop_path_rate")
    assert problem.endswith("Remove drop_path_rate from the space or choose another model")


def test_image_size_model_cannot_take():
    mapping = tiny_study_dict(model={"name": "vit_tiny_patch16_224", "image_size": 32})

    (problem,) = problems_of(mapping)
    assert problem.startswith("model.image_size: vit_tiny_patch16_224 cannot take 32x32 images")
    assert problem.endswith("this model takes exactly 224x224 images, so set image_size: 224, or pick a model made for your size")


def test_unknown_slot_choice_lists_valid_names():
    with pytest.raises(StudyError) as error:
        Study.from_dict(tiny_study_dict(space={"pool": {"choices": ["avg", "mean"]}}))

    assert error.value.problems == [
        "space.pool: unknown pool 'mean'; valid names: avg, avgmax, catavgmax, gem, max"
    ]


def test_every_choice_built_with_cost():
    mapping = tiny_study_dict(
        space={
            "head": {"choices": {"linear": {}, "mlp": {"hidden": {"type": "int", "low": 16, "high": 64}}}},
            "pool": {"choices": ["avg", "gem"]},
            "freeze_bn_stats": {"choices": [False, True]},
        }
    )
    prepared = prepare(Study.from_dict(mapping), load_data=False)
    rows = {(row.slot, row.label): row for row in prepared.slot_choices}

    assert list(rows) == [
        ("model", "(model's own)"),
        ("pool", "avg"),
        ("pool", "gem"),
        ("head", "linear"),
        ("head", "mlp(hidden=16)"),
        ("freeze_bn_stats", "True"),
    ]
    base = rows[("model", "(model's own)")]
    # An MLP head of width 16 replaces the 512 x 10 classifier.
    mlp = rows[("head", "mlp(hidden=16)")]
    assert mlp.params - base.params == (512 * 16 + 16 + 16 * 10 + 10) - (512 * 10 + 10)
    assert mlp.macs - base.macs == 512 * 16 + 16 * 10 - 512 * 10
    assert rows[("pool", "gem")].params == base.params + 1
    assert all(row.problem is None for row in rows.values())


def test_validate_prints_choice_table(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: t\nmodel: {name: resnet10t, image_size: 32}\n"
        "space: {norm: {choices: [batchnorm, groupnorm]}}\n",
        encoding="utf-8",
    )

    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "objectives: val_accuracy (maximize)" in out
    assert "model      slot   choice         params     MACs        pretrained kept" in out
    assert "resnet10t  norm   groupnorm      4,927,618" in out


def test_spaces_command_lists_every_choice(capsys):
    from spaces.modules import SLOTS
    from spaces.terms import TERMS

    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    for name in TERMS:
        assert f"\n  {name} " in out
    for slot, registry in SLOTS.items():
        assert f"Slot {slot}:" in out
        for name in registry:
            assert f"\n  {name} " in out
