"""The training terms reach timm's optimizer, scheduler, loss, EMA and transforms (no Ray)."""

import logging
import math

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler, PlateauLRScheduler, StepLRScheduler, TanhLRScheduler
from timm.utils import ModelEmaV3
from torchvision import transforms

from search.augment import augmentation_active, build_train_transform
from search.data import Dataset
from search.devices import select_device
from search.loss import build_training_loss
from search.model import build_model
from search.optim import build_ema, build_optimizer, build_scheduler, check_optimizers, clip_gradients, scaled_lr
from search.stopping import EarlyStopping
from search.study import Study, StudyError
from search.trainable import TrialSettings, _TrainingLoop
from spaces.terms import TERMS, TRAINING_TERMS, optimizer_names, resolve_config
from tests.conftest import tiny_study_dict

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
STEPS_PER_EPOCH = 10


def config(**values):
    return resolve_config(values)


def resnet(**model_config):
    model, _ = build_model("resnet10t", 10, model_config)
    return model


def tiny_dataset(count=24, channels=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, channels, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int64)
    return Dataset(tuple(str(i) for i in range(10)), images, labels, images[:8], labels[:8], images[:2], labels[:2])


def training_loop(trial_config, data=None, max_epochs=2, metric="val_accuracy", mode="max", channels=3, model=None):
    data = data or tiny_dataset(channels=channels)
    settings = TrialSettings(
        "resnet10t", channels, max_epochs, 0, 1, 0, {"resnet10t": (MEAN[:channels], STD[:channels])}, metric, mode
    )
    if model is None:
        model, _ = build_model("resnet10t", 10, {"frozen_stages": trial_config["frozen_stages"]}, in_chans=channels)
    return _TrainingLoop(model, trial_config, data, settings, "resnet10t", select_device(0))


def groups_of(optimizer, model):
    """Map each parameter name to its optimizer group."""
    ids = {id(param): name for name, param in model.named_parameters()}
    return {ids[id(param)]: group for group in optimizer.param_groups for param in group["params"]}


# Terms


def test_training_terms_registered():
    for term in TRAINING_TERMS:
        assert TERMS[term.name] is term
        assert term.target == "training"
        assert term.description


def test_default_config_keeps_plain_loop():
    trial_config = config()
    loop = training_loop(trial_config)
    assert type(loop.optimizer).__name__ == "AdamW"
    assert isinstance(loop.scheduler, CosineLRScheduler)
    assert isinstance(loop.loss.criterion, torch.nn.CrossEntropyLoss)
    assert loop.loss.mixup is None
    assert loop.ema is None
    assert loop.augment is None
    assert not augmentation_active(trial_config)
    assert [group["weight_decay"] for group in loop.optimizer.param_groups] == [0.0, 0.01]


# Optimizer


@pytest.mark.parametrize(
    "name, class_name, nesterov",
    [("adamw", "AdamW", None), ("sgd", "SGD", True), ("momentum", "SGD", False), ("lamb", "Lamb", None), ("adan", "Adan", None)],
)
def test_optimizer_term_picks_timm_optimizer(name, class_name, nesterov):
    model = resnet()
    optimizer = build_optimizer(model, config(optimizer=name, momentum=0.8))
    assert type(optimizer).__name__ == class_name
    if nesterov is not None:
        assert optimizer.param_groups[0]["nesterov"] is nesterov
        assert optimizer.param_groups[0]["momentum"] == 0.8


def test_weight_decay_skips_norms_and_biases():
    model = resnet()
    groups = groups_of(build_optimizer(model, config(weight_decay=0.05)), model)
    assert groups["conv1.0.weight"]["weight_decay"] == 0.05
    assert groups["fc.weight"]["weight_decay"] == 0.05
    assert groups["bn1.weight"]["weight_decay"] == 0.0
    assert groups["fc.bias"]["weight_decay"] == 0.0


def test_frozen_parameters_not_optimized():
    model = resnet(frozen_stages=4)
    groups = groups_of(build_optimizer(model, config()), model)
    assert set(groups) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize(
    "scaling, expected",
    [("none", 1.0e-3), ("linear", 1.0e-3 * 64 / 256), ("sqrt", 1.0e-3 * math.sqrt(64 / 256))],
)
def test_lr_scaling_rule(scaling, expected):
    trial_config = config(lr=1.0e-3, batch_size=64, lr_scaling=scaling)
    assert scaled_lr(trial_config) == pytest.approx(expected)
    model = resnet()
    optimizer = build_optimizer(model, trial_config)
    build_scheduler(optimizer, trial_config, 2, STEPS_PER_EPOCH, "max")
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([expected] * 2)


def test_head_lr_scale_multiplies_head_groups():
    model = resnet()
    trial_config = config(lr=1.0e-3, head_lr_scale=10.0)
    optimizer = build_optimizer(model, trial_config)
    build_scheduler(optimizer, trial_config, 2, STEPS_PER_EPOCH, "max")
    groups = groups_of(optimizer, model)
    assert groups["fc.weight"]["lr_scale"] == 10.0
    assert groups["fc.bias"]["lr_scale"] == 10.0
    assert groups["fc.weight"]["lr"] == pytest.approx(1.0e-2)
    assert groups["fc.bias"]["weight_decay"] == 0.0
    assert "lr_scale" not in groups["conv1.0.weight"]
    assert groups["conv1.0.weight"]["lr"] == pytest.approx(1.0e-3)


def test_layer_decay_scales_layers():
    model = resnet()
    trial_config = config(lr=1.0e-3, layer_decay=0.5, head_lr_scale=4.0)
    optimizer = build_optimizer(model, trial_config)
    build_scheduler(optimizer, trial_config, 2, STEPS_PER_EPOCH, "max")
    groups = groups_of(optimizer, model)
    # resnet10t's layer groups: stem, layer1..layer4, then the classifier on top (6 groups).
    assert groups["conv1.0.weight"]["lr_scale"] == pytest.approx(0.5**5)
    assert groups["layer1.0.conv1.weight"]["lr_scale"] == pytest.approx(0.5**4)
    assert groups["layer4.0.conv1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert groups["fc.weight"]["lr_scale"] == pytest.approx(4.0)
    assert groups["conv1.0.weight"]["lr"] == pytest.approx(1.0e-3 * 0.5**5)
    assert groups["bn1.weight"]["weight_decay"] == 0.0


# Schedule


@pytest.mark.parametrize(
    "schedule, scheduler_class",
    [("cosine", CosineLRScheduler), ("tanh", TanhLRScheduler), ("step", StepLRScheduler), ("plateau", PlateauLRScheduler), ("constant", StepLRScheduler)],
)
def test_schedule_term_picks_timm_scheduler(schedule, scheduler_class):
    optimizer = build_optimizer(resnet(), config(schedule=schedule))
    scheduler = build_scheduler(optimizer, config(schedule=schedule), 4, STEPS_PER_EPOCH, "max")
    assert type(scheduler) is scheduler_class


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant", "tanh"])
def test_warmup_starts_at_warmup_lr(schedule):
    trial_config = config(schedule=schedule, lr=1.0e-2, warmup_epochs=0.5, warmup_lr=1.0e-4, head_lr_scale=2.0)
    model = resnet()
    optimizer = build_optimizer(model, trial_config)
    scheduler = build_scheduler(optimizer, trial_config, 4, STEPS_PER_EPOCH, "max")
    groups = groups_of(optimizer, model)
    assert groups["conv1.0.weight"]["lr"] == pytest.approx(1.0e-4)
    assert groups["fc.weight"]["lr"] == pytest.approx(2.0e-4)
    scheduler.step_update(STEPS_PER_EPOCH // 2)
    assert groups["conv1.0.weight"]["lr"] == pytest.approx(1.0e-2, rel=0.2)
    assert groups["conv1.0.weight"]["lr"] > 5.0e-3


def test_cosine_ends_at_min_lr_ratio():
    trial_config = config(lr=1.0e-2, min_lr_ratio=0.1)
    optimizer = build_optimizer(resnet(), trial_config)
    scheduler = build_scheduler(optimizer, trial_config, 2, STEPS_PER_EPOCH, "max")
    scheduler.step_update(2 * STEPS_PER_EPOCH)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0e-3)


def test_step_schedule_decays_every_decay_epochs():
    trial_config = config(schedule="step", lr=1.0e-2, decay_epochs=1.0, decay_rate=0.5)
    optimizer = build_optimizer(resnet(), trial_config)
    scheduler = build_scheduler(optimizer, trial_config, 4, STEPS_PER_EPOCH, "max")
    scheduler.step_update(STEPS_PER_EPOCH - 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0e-2)
    scheduler.step_update(2 * STEPS_PER_EPOCH)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-3)


def test_plateau_decays_on_objective():
    trial_config = config(schedule="plateau", lr=1.0e-2, plateau_patience=1, decay_rate=0.5, min_lr_ratio=0.0)
    optimizer = build_optimizer(resnet(), trial_config)
    scheduler = build_scheduler(optimizer, trial_config, 4, STEPS_PER_EPOCH, "max")
    assert scheduler.lr_scheduler.mode == "max"
    assert scheduler.lr_scheduler.patience == 1
    for epoch, accuracy in enumerate([0.5, 0.5, 0.5], start=1):
        scheduler.step(epoch, accuracy)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5.0e-3)


def test_plateau_warmup_rounded_to_whole_epochs(caplog):
    trial_config = config(schedule="plateau", lr=1.0e-2, warmup_epochs=0.5, warmup_lr=1.0e-4)
    optimizer = build_optimizer(resnet(), trial_config)
    with caplog.at_level(logging.WARNING, logger="search.optim"):
        scheduler = build_scheduler(optimizer, trial_config, 4, STEPS_PER_EPOCH, "max")
    assert "warmup_epochs 0.5 rounded up to 1: the plateau schedule warms up in whole epochs" in caplog.text
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0e-4)
    scheduler.step(1, 0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0e-2)


def test_plateau_state_restored_from_checkpoint(tmp_path):
    trial_config = config(schedule="plateau")
    loop = training_loop(trial_config, max_epochs=3)
    loop.scheduler.step(1, 0.75)
    loop.save(tmp_path / "trial.pt", 1)
    restored = training_loop(trial_config, max_epochs=3)
    restored.scheduler.load_state_dict(torch.load(tmp_path / "trial.pt", weights_only=True)["scheduler"])
    assert restored.scheduler.lr_scheduler.best == 0.75


# Clipping


def test_clip_grad_norm_limits_total_norm():
    model = resnet()
    model(torch.randn(2, 3, 32, 32)).sum().mul(1000).backward()
    clip_gradients(model, config(clip_grad=0.5))
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert total.item() == pytest.approx(0.5, rel=1e-3)


def test_clip_grad_value_limits_elements():
    model = resnet()
    model(torch.randn(2, 3, 32, 32)).sum().mul(1000).backward()
    clip_gradients(model, config(clip_grad=0.01, clip_mode="value"))
    largest = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    assert largest == pytest.approx(0.01)


def test_clip_grad_zero_leaves_gradients():
    model = resnet()
    model(torch.randn(2, 3, 32, 32)).sum().mul(1000).backward()
    before = [p.grad.clone() for p in model.parameters()]
    clip_gradients(model, config(clip_grad=0.0))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


# Loss and mixup


def test_mixup_terms_reach_timm_mixup():
    loss = build_training_loss(
        config(mixup_alpha=0.4, cutmix_alpha=1.0, mixup_prob=0.7, mixup_switch_prob=0.3, label_smoothing=0.1), 10
    )
    assert isinstance(loss.mixup, Mixup)
    assert isinstance(loss.criterion, SoftTargetCrossEntropy)
    assert loss.mixup.mixup_alpha == 0.4
    assert loss.mixup.cutmix_alpha == 1.0
    assert loss.mixup.mix_prob == 0.7
    assert loss.mixup.switch_prob == 0.3
    assert loss.mixup.label_smoothing == 0.1
    assert loss.mixup.num_classes == 10


def test_mixup_drops_last_image_of_odd_batch():
    loss = build_training_loss(config(mixup_alpha=0.4), 10)
    x, target = loss.prepare(torch.randn(5, 3, 8, 8), torch.arange(5))
    assert x.shape[0] == 4
    assert target.shape == (4, 10)
    assert target.sum(dim=1) == pytest.approx(torch.ones(4))


def test_label_smoothing_without_mixup():
    loss = build_training_loss(config(label_smoothing=0.2), 10)
    assert loss.mixup is None
    assert loss.criterion.label_smoothing == 0.2


# EMA


def test_ema_decay_builds_model_ema():
    assert build_ema(resnet(), config()) is None
    ema = build_ema(resnet(), config(ema_decay=0.99))
    assert isinstance(ema, ModelEmaV3)
    assert ema.decay == 0.99
    assert ema.use_warmup


def test_ema_metrics_reported_beside_raw():
    loop = training_loop(config(ema_decay=0.9, lr=1.0e-2, batch_size=8))
    metrics = loop.run_epoch(0)
    assert 0.0 <= metrics["val_accuracy_ema"] <= 1.0
    assert metrics["val_loss_ema"] > 0
    ema_weight = loop.ema.module.state_dict()["fc.weight"]
    assert not torch.equal(ema_weight, loop.model.state_dict()["fc.weight"])


def test_ema_weights_saved_and_restored(tmp_path):
    from ray import tune

    loop = training_loop(config(ema_decay=0.9))
    loop.run_epoch(0)
    (tmp_path / "checkpoint").mkdir()
    loop.save(tmp_path / "checkpoint" / "trial.pt", 1)
    restored = training_loop(config(ema_decay=0.9))
    assert restored.restore(tune.Checkpoint.from_directory(tmp_path / "checkpoint")) == 1
    expected = loop.ema.module.state_dict()["fc.weight"]
    assert torch.equal(restored.ema.module.state_dict()["fc.weight"], expected)
    assert restored.num_updates == loop.num_updates


# Augmentation


def transform_ops(transform):
    return list(transform.transforms)


def test_augment_terms_reach_timm_transform():
    trial_config = config(randaugment_ops=3, randaugment_magnitude=7, crop_scale_min=0.3, hflip=0.4, random_erasing_prob=0.2)
    assert augmentation_active(trial_config)
    ops = transform_ops(build_train_transform(trial_config, 32, MEAN, STD))
    assert [type(op) for op in ops] == [
        RandomResizedCropAndInterpolation,
        transforms.RandomHorizontalFlip,
        RandAugment,
        MaybeToTensor,
        transforms.Normalize,
        RandomErasing,
    ]
    assert ops[0].scale == (0.3, 1.0)
    assert ops[0].size == (32, 32)
    assert ops[1].p == 0.4
    assert ops[2].num_layers == 3
    assert {op.magnitude for op in ops[2].ops} == {7}
    assert ops[4].mean.tolist() == list(MEAN)
    assert ops[4].std.tolist() == list(STD)
    assert ops[5].probability == 0.2


def test_color_jitter_without_randaugment():
    ops = transform_ops(build_train_transform(config(color_jitter=0.3), 32, MEAN, STD))
    jitter = [op for op in ops if isinstance(op, transforms.ColorJitter)]
    assert len(jitter) == 1
    assert jitter[0].brightness == (0.7, 1.3)


def test_color_jitter_dropped_with_randaugment_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="search.augment"):
        ops = transform_ops(build_train_transform(config(color_jitter=0.3, randaugment_ops=1), 32, MEAN, STD))
    assert not any(isinstance(op, transforms.ColorJitter) for op in ops)
    assert "color_jitter 0.3 ignored: timm's transform drops color jitter when RandAugment is on" in caplog.text


def test_flip_matches_plain_path_mirrored():
    """With only a certain flip, the augmented batch is the plain normalized batch mirrored."""
    trial_config = config(hflip=1.0)
    loop = training_loop(trial_config)
    index = np.arange(4)
    augmented, labels = loop._train_batch(index)
    plain, plain_labels = loop._batch(loop.data.train_x, loop.data.train_y, index)
    assert torch.allclose(augmented, torch.flip(plain, dims=[-1]), atol=1e-5)
    assert torch.equal(labels, plain_labels)


def test_augmented_grayscale_batch():
    trial_config = config(randaugment_ops=2, crop_scale_min=0.5, random_erasing_prob=0.5)
    loop = training_loop(trial_config, channels=1)
    x, y = loop._train_batch(np.arange(6))
    assert x.shape == (6, 1, 32, 32)
    assert x.dtype == torch.float32
    assert y.shape == (6,)


# Early stopping


@pytest.mark.parametrize(
    "mode, values, stop_epoch",
    [("max", [0.5, 0.6, 0.6, 0.55], 4), ("min", [1.0, 0.9, 0.95, 0.8], None), ("max", [0.5, 0.4, 0.3, 0.2], 3)],
)
def test_early_stopping_patience(mode, values, stop_epoch):
    stopping = EarlyStopping(2, "val_accuracy", mode)
    stops = [stopping.update(epoch, {"val_accuracy": value}) for epoch, value in enumerate(values, start=1)]
    first_stop = next((epoch for epoch, stop in enumerate(stops, start=1) if stop), None)
    assert first_stop == stop_epoch


def test_early_stopping_off_never_stops():
    stopping = EarlyStopping(0, "val_loss", "min")
    assert not any(stopping.update(epoch, {"val_loss": 1.0}) for epoch in range(1, 6))


def test_trial_stops_itself_when_stalled():
    """A model that cannot change (frozen, lr 1e-30) stalls, so patience 1 stops it after epoch 2."""
    trial_config = config(frozen_stages=4, lr=1.0e-30, early_stopping_patience=1)
    loop = training_loop(trial_config, max_epochs=3)
    first = loop.run_epoch(0)
    second = loop.run_epoch(1)
    assert first["finished"] is False
    assert "stop_reason" not in first
    assert second["val_accuracy"] == first["val_accuracy"]
    assert second["finished"] is True
    assert second["stop_reason"].startswith("stopped itself after epoch 2 of 3: val_accuracy did not improve")


def test_last_epoch_is_finished():
    loop = training_loop(config(), max_epochs=1)
    metrics = loop.run_epoch(0)
    assert metrics["finished"] is True
    assert "stop_reason" not in metrics


# Validation


@pytest.mark.parametrize(
    "space, message",
    [
        ({"optimizer": "adamx"}, "space.optimizer: unknown optimizer 'adamx' (did you mean "),
        ({"optimizer": {"choices": ["sgd", "lamb2"]}}, "space.optimizer: unknown optimizer 'lamb2'"),
        ({"optimizer": "adahessian"}, "space.optimizer: unknown optimizer 'adahessian'"),
        ({"optimizer": "kron"}, "space.optimizer: unknown optimizer 'kron'"),
        ({"lr_scaling": "square"}, "space.lr_scaling: unknown lr_scaling 'square' (did you mean sqrt?); valid names: linear, none, sqrt"),
        ({"schedule": "cosin"}, "space.schedule: unknown schedule 'cosin' (did you mean cosine"),
        ({"schedule": "none"}, "space.schedule: unknown schedule 'none' (did you mean cosine?); valid names: constant, cosine, plateau, step, tanh"),
        ({"clip_mode": "l2"}, "space.clip_mode: unknown clip_mode 'l2'; valid names: agc, norm, value"),
        ({"momentum": 1.0}, "space.momentum: momentum must be in [0, 1), got 1.0"),
        ({"head_lr_scale": 0}, "space.head_lr_scale: head_lr_scale must be greater than 0, got 0"),
        ({"layer_decay": 1.5}, "space.layer_decay: layer_decay must be in (0, 1], got 1.5"),
        ({"layer_decay": {"type": "float", "low": 0.0, "high": 0.9}}, "space.layer_decay: layer_decay must be in (0, 1], got 0.0"),
        ({"min_lr_ratio": 2}, "space.min_lr_ratio: min_lr_ratio must be in [0, 1], got 2"),
        ({"warmup_epochs": -1}, "space.warmup_epochs: warmup_epochs must be 0 or more, got -1"),
        ({"warmup_epochs": {"type": "int", "low": 0, "high": 2}}, "space.warmup_epochs: warmup_epochs is a float; write type: float"),
        ({"warmup_lr": -1e-5}, "space.warmup_lr: warmup_lr must be 0 or more, got -1e-05"),
        ({"decay_epochs": 0}, "space.decay_epochs: decay_epochs must be greater than 0, got 0"),
        ({"decay_rate": 0}, "space.decay_rate: decay_rate must be in (0, 1], got 0"),
        ({"plateau_patience": 1.5}, "space.plateau_patience: expected an integer, got 1.5"),
        ({"clip_grad": -1.0}, "space.clip_grad: clip_grad must be 0 or more, got -1.0"),
        ({"mixup_alpha": -0.1}, "space.mixup_alpha: mixup_alpha must be 0 or more, got -0.1"),
        ({"cutmix_alpha": "big"}, "space.cutmix_alpha: expected a number, got 'big'"),
        ({"mixup_prob": 1.5}, "space.mixup_prob: mixup_prob must be in [0, 1], got 1.5"),
        ({"mixup_switch_prob": -0.5}, "space.mixup_switch_prob: mixup_switch_prob must be in [0, 1], got -0.5"),
        ({"ema_decay": 1.0}, "space.ema_decay: ema_decay must be in [0, 1), got 1.0"),
        ({"early_stopping_patience": -1}, "space.early_stopping_patience: early_stopping_patience must be at least 0, got -1"),
        ({"randaugment_ops": -2}, "space.randaugment_ops: randaugment_ops must be at least 0, got -2"),
        ({"randaugment_magnitude": 11}, "space.randaugment_magnitude: randaugment_magnitude must be in [0, 10], got 11"),
        ({"randaugment_magnitude": 9.5}, "space.randaugment_magnitude: expected an integer, got 9.5"),
        ({"crop_scale_min": 0}, "space.crop_scale_min: crop_scale_min must be in (0, 1], got 0"),
        ({"hflip": 2}, "space.hflip: hflip must be in [0, 1], got 2"),
        ({"color_jitter": -0.4}, "space.color_jitter: color_jitter must be 0 or more, got -0.4"),
        ({"random_erasing_prob": 1.1}, "space.random_erasing_prob: random_erasing_prob must be in [0, 1], got 1.1"),
    ],
)
def test_invalid_training_term_message(space, message):
    with pytest.raises(StudyError) as error:
        Study.from_dict(tiny_study_dict(space=space))
    assert message in str(error.value)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(StudyError) as error:
        Study.from_dict(tiny_study_dict(space={"optimizer": "adamx"}))
    assert "; valid names: " in str(error.value)
    for name in ("adamw", "sgd", "lamb", "adan", "momentum"):
        assert f" {name}," in str(error.value)
    assert "adahessian" not in optimizer_names()


@pytest.mark.parametrize(
    "space, shown",
    [({}, "left out (0, off)"), ({"ema_decay": {"type": "float", "low": 0.0, "high": 0.99}}, "{'type': 'float', 'low': 0.0, 'high': 0.99}")],
)
def test_ema_objective_needs_ema(space, shown):
    with pytest.raises(StudyError) as error:
        Study.from_dict(tiny_study_dict(objective={"metric": "val_accuracy_ema"}, space=space))
    assert str(error.value) == (
        f"objective.metric: val_accuracy_ema needs the moving average of the weights in every trial, "
        f"but space.ema_decay is {shown}; set space.ema_decay above 0 (e.g. 0.999, or a range whose "
        "low is above 0), or choose val_accuracy or val_loss"
    )


def test_ema_objective_accepted_with_ema():
    study = Study.from_dict(
        tiny_study_dict(objective={"metric": "val_accuracy_ema"}, space={"ema_decay": {"choices": [0.9, 0.99]}})
    )
    assert study.objective.mode == "max"
    assert Study.from_dict(tiny_study_dict(objective={"metric": "val_loss_ema"}, space={"ema_decay": 0.9})).objective.mode == "min"


def test_color_jitter_with_randaugment_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="search.study"):
        Study.from_dict(tiny_study_dict(space={"color_jitter": 0.4, "randaugment_ops": {"type": "int", "low": 0, "high": 2}}))
    assert "space.color_jitter is ignored in trials whose randaugment_ops is above 0" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="APEX optimizers may run where CUDA is present")
def test_optimizer_that_cannot_run_rejected():
    study = Study.from_dict(tiny_study_dict(space={"optimizer": {"choices": ["adamw", "fusedadam"]}}))
    assert check_optimizers(study) == [
        "space.optimizer: 'fusedadam' failed to build and step on cpu with momentum 0.9 (AssertionError: "
        "CUDA required for APEX optimizers); choose another optimizer, or raise the lowest momentum if the "
        "error is about momentum"
    ]


def test_nesterov_without_momentum_rejected():
    study = Study.from_dict(
        tiny_study_dict(space={"optimizer": {"choices": ["momentum", "sgd"]}, "momentum": {"type": "float", "low": 0.0, "high": 0.9}})
    )
    (problem,) = check_optimizers(study)
    assert problem.startswith("space.optimizer: 'sgd' failed to build and step on cpu with momentum 0 (ValueError: Nesterov")


def test_prepare_reports_optimizer_problem():
    from search.preflight import prepare

    study = Study.from_dict(tiny_study_dict(space={"optimizer": "sgd", "momentum": 0.0}))
    with pytest.raises(StudyError, match="space.optimizer: 'sgd' failed to build and step"):
        prepare(study, load_data=False)
