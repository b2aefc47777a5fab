"""Device selection, precision, memory format and the per-trial memory limit, on the CPU.

NOTE: no CUDA device exists where these tests run. So the CUDA branches of search.devices
(pinned memory, channels-last, bf16 by default) are checked only through their CPU switches.
"""

import logging

import numpy as np
import pytest
import torch

from search.devices import TrialDevice, is_out_of_memory, memory_limit, select_device


def tiny_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))


def test_cpu_default_is_float32():
    device = select_device(0)
    assert device.device.type == "cpu"
    assert device.autocast_dtype is None
    assert not device.channels_last
    assert not device.pin_memory


def test_gpus_without_cuda_falls_back_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="search.devices"):
        device = select_device(0.5)
    assert device.device.type == "cpu"
    assert "resources.gpus is 0.5 but torch sees no CUDA device" in caplog.text


def test_bf16_autocast_returns_float32():
    device = select_device(0, precision="bf16")
    model = device.prepare_model(tiny_model())
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    output = device.forward(model, torch.randn(2, 3, 8, 8))
    assert seen == [torch.bfloat16]
    assert output.dtype == torch.float32


def test_bf16_autocast_reaches_a_copy_of_the_model():
    """timm's EMA deep-copies the model; its forward must use its own weights under autocast."""
    import copy

    device = select_device(0, precision="bf16")
    model = device.prepare_model(tiny_model())
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.zero_()
    output = device.forward(twin, torch.randn(2, 3, 8, 8))
    assert output.dtype == torch.float32
    assert torch.count_nonzero(output) == 0


def test_prepared_model_keeps_state_dict_keys():
    plain = tiny_model()
    keys = list(plain.state_dict())
    select_device(0, precision="bf16").prepare_model(plain)
    assert list(plain.state_dict()) == keys


def test_channels_last_model_and_batch():
    device = TrialDevice(torch.device("cpu"), channels_last=True)
    model = device.prepare_model(tiny_model())
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = device.to_device(np.zeros((2, 3, 8, 8), dtype=np.uint8))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    labels = device.to_device(np.zeros(2, dtype=np.int64))
    assert labels.device.type == "cpu"


@pytest.mark.slow
def test_compiled_model_matches_eager():
    model = tiny_model()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    keys = list(model.state_dict())
    TrialDevice(torch.device("cpu"), compile_mode="default").prepare_model(model)
    assert model._compiled_call_impl is not None
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert list(model.state_dict()) == keys


def test_memory_limit_raises_and_is_lifted():
    device = select_device(0)
    with memory_limit(64, device):
        with pytest.raises(RuntimeError) as error:
            torch.empty(128 * 2**20, dtype=torch.uint8).fill_(1)
    assert is_out_of_memory(error.value)
    assert torch.empty(128 * 2**20, dtype=torch.uint8).fill_(1).sum() == 128 * 2**20


def test_memory_limit_skipped_on_cuda_device():
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS)
    with memory_limit(64, TrialDevice(torch.device("cuda"))):
        assert resource.getrlimit(resource.RLIMIT_AS) == before


def test_other_runtime_errors_are_not_out_of_memory():
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))


def test_onednn_failure_counts_only_under_limit():
    error = RuntimeError("could not create a primitive")
    assert not is_out_of_memory(error)
    assert is_out_of_memory(error, memory_limited=True)
