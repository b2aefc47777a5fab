"""Where a trial computes: the torch device, its precision and memory, and the per-trial memory limit.

On a CUDA device a trial trains in bf16 autocast (where the GPU supports it) with channels-last
tensors, copies batches from pinned host memory without blocking, and may compile its model
with ``torch.compile``. On the CPU it trains in float32 unless the study requests bf16.

NOTE: the CUDA branches were written against torch 2.14's documented API but have only been
run on CPU machines; the tests exercise the same logic on the CPU.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "TrialDevice",
    "free_memory",
    "is_out_of_memory",
    "memory_limit",
    "select_device",
    "worker_placement",
]

MIB = 2**20
# Messages of torch's allocators when an allocation fails: CPU (DefaultCPUAllocator) and CUDA.
_OUT_OF_MEMORY_TEXTS = ("can't allocate memory", "out of memory")
# oneDNN's message when it cannot allocate scratch space for a CPU kernel. Other causes give the
# same text, so it counts as out of memory only while memory_limit is in force.
_ONEDNN_SETUP_FAILURE = "could not create a primitive"


@dataclass(frozen=True)
class TrialDevice:
    """The device a trial trains on and how it uses it."""

    device: Any
    autocast_dtype: Any = None
    channels_last: bool = False
    pin_memory: bool = False
    compile_mode: str = "none"

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def prepare_model(self, model):
        """Move ``model`` to the device and set its memory format and compilation.

        The model is changed in place, so its ``state_dict`` keys stay those of the plain model
        and checkpoints load into a model built without this device. Precision is applied per
        call by :meth:`forward`, not stored on the model, so copies such as timm's EMA of the
        model run under the same autocast.
        """
        import torch

        if self.channels_last:
            model.to(self.device, memory_format=torch.channels_last)
        else:
            model.to(self.device)
        if self.compile_mode != "none":
            model.compile(mode=None if self.compile_mode == "default" else self.compile_mode)
        return model

    def forward(self, model, x):
        """Return ``model(x)``, run under autocast when the device has a lower precision.

        Outputs come back as float32, so losses and metrics stay float32.
        """
        if self.autocast_dtype is None:
            return model(x)
        import torch

        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            output = model(x)
        return output.float() if torch.is_tensor(output) else output

    def to_device(self, array):
        """Return a numpy array as a tensor on the device, copied from pinned memory on CUDA."""
        import torch

        tensor = torch.from_numpy(array)
        if self.pin_memory:
            tensor = tensor.pin_memory()
        tensor = tensor.to(self.device, non_blocking=True)
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def describe(self) -> str:
        precision = "float32" if self.autocast_dtype is None else f"{self.autocast_dtype} autocast"
        return f"{self.device}, {precision}, compile {self.compile_mode}"


def select_device(gpus: float, precision: str = "auto", compile_mode: str = "none") -> TrialDevice:
    """Return the device for a trial that Ray gave ``gpus`` GPUs (fractions included).

    Ray sets ``CUDA_VISIBLE_DEVICES`` for the worker, so ``cuda`` is the GPU Ray assigned.
    A trial given GPUs on a machine where torch finds none trains on the CPU, with a warning.
    """
    import torch

    cuda = gpus > 0 and torch.cuda.is_available()
    if gpus > 0 and not cuda:
        logger.warning("resources.gpus is %s but torch sees no CUDA device; the trial trains on the CPU", gpus)
    device = torch.device("cuda" if cuda else "cpu")
    dtype = None
    if precision == "bf16":
        dtype = torch.bfloat16
    elif precision == "auto" and cuda and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    return TrialDevice(device, dtype, channels_last=cuda, pin_memory=cuda, compile_mode=compile_mode)


def worker_placement(device: TrialDevice) -> dict[str, Any]:
    """Return where this trial runs: Ray node, host, process, device and the resources Ray assigned."""
    import socket

    import ray

    placement: dict[str, Any] = {"hostname": socket.gethostname(), "pid": os.getpid(), "device": str(device.device)}
    if ray.is_initialized():
        context = ray.get_runtime_context()
        placement["node_id"] = context.get_node_id()
        placement["gpu_ids"] = [str(gpu) for gpu in context.get_accelerator_ids().get("GPU", [])]
        placement["resources"] = {name: float(amount) for name, amount in context.get_assigned_resources().items()}
    return placement


def _virtual_memory_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmSize missing from /proc/self/status")


@contextlib.contextmanager
def memory_limit(memory_mb: int | None, device: TrialDevice):
    """Let the trial's process map at most ``memory_mb`` MiB more than it has mapped now.

    The soft ``RLIMIT_AS`` limit is lowered for the duration and restored afterwards, because
    Ray reuses the worker process for later trials. Allocations past it raise in torch, and the
    trial ends FAIL as out of memory. CUDA trials are not limited this way: the CUDA runtime
    maps far more virtual memory than it uses, so a GPU's own out-of-memory error applies.

    NOTE: the limit counts new mappings only, so memory that an earlier trial on the same worker
    left mapped (the allocator keeps freed blocks) is reused without counting against it.
    """
    if memory_mb is None or device.is_cuda or not hasattr(resource, "RLIMIT_AS"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _virtual_memory_bytes() + memory_mb * MIB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def is_out_of_memory(error: BaseException, memory_limited: bool = False) -> bool:
    """Return whether ``error`` is a failed allocation, on the CPU or a CUDA device.

    ``memory_limited`` means that ``memory_limit`` capped the CPU trial, so that a oneDNN kernel
    that failed to set up counts as out of memory too.
    """
    if isinstance(error, MemoryError):
        return True
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    texts = (*_OUT_OF_MEMORY_TEXTS, _ONEDNN_SETUP_FAILURE) if memory_limited else _OUT_OF_MEMORY_TEXTS
    return any(text in str(error) for text in texts)


def free_memory(device: TrialDevice) -> None:
    """Collect the failed trial's tensors and hand cached CUDA blocks back to the device."""
    gc.collect()
    if device.is_cuda:
        import torch

        torch.cuda.empty_cache()
