"""Will a step fit? Estimate its memory before training, so BGD on too much data fails with
status ``oom`` and a hint, instead of dying mid-run — and never by changing the batch size."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from runner.errors import ConfigError, RunnerError

# Forward activations, their gradients, and the autograd temporaries in between.
ACTIVATION_COPIES = 3
# Parameter, gradient, and up to two optimizer states (Adam's moments).
PARAMETER_COPIES = 4


class OutOfMemory(RunnerError):
    """The configured run needs more memory than the device has free."""

    def __init__(self, needed: int, available: int, device: torch.device, batch_size: int):
        self.needed, self.available = needed, available
        super().__init__(
            f"one update at batch size {batch_size} needs about {needed / 2**20:,.0f} MB on {device}, "
            f"and {available / 2**20:,.0f} MB are free. Set micro_batch_size (e.g. micro_batch_size="
            f"{max(1, batch_size * available // (2 * needed)) if needed else batch_size}) to compute the same "
            "update in chunks; the batch size is never changed for you"
        )


def activation_elements_per_sample(model: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> int:
    """Elements of every layer's output for one sample (a dry forward pass, no gradients)."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output[0].numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *in_shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the driver's count; CPU: MemAvailable); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def step_bytes(model: nn.Module, in_shape: tuple[int, ...], device: torch.device, rows_at_once: int, data_copy_bytes: int) -> int:
    """Estimated extra memory of training: one chunk's activations, parameter-sized buffers,
    and the epoch's permuted copy of the data (0 when batches are gathered)."""
    element = next(model.parameters()).element_size()
    activations = activation_elements_per_sample(model, in_shape, device) * rows_at_once * element * ACTIVATION_COPIES
    parameters = sum(p.numel() for p in model.parameters()) * element * PARAMETER_COPIES
    return activations + parameters + data_copy_bytes


def check_fits(model: nn.Module, in_shape: tuple[int, ...], device: torch.device, batch_size: int, micro_batch_size: int | None, data_copy_bytes: int) -> int:
    """Raise :class:`OutOfMemory` if a step will not fit; return the estimate in bytes."""
    rows = min(batch_size, micro_batch_size or math.inf)
    needed = step_bytes(model, in_shape, device, int(rows), data_copy_bytes)
    free = available_bytes(device)
    if free is not None and needed > free:
        raise OutOfMemory(needed, free, device, batch_size)
    return needed


def host_bytes_available() -> int | None:
    """Memory this process may still allocate on the host (MemAvailable), None if unknown."""
    return available_bytes(torch.device("cpu"))


def check_host_fits(key: str, value: Any, needed: int, what: str) -> None:
    """Refuse ``key=value`` before allocating, if ``what`` would need more than the free host memory."""
    free = host_bytes_available()
    if free is not None and needed > free:
        raise ConfigError(key, value, f"{what} that fits in memory: it needs about {format_size(needed)}, and {format_size(free)} are available")


def format_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} EiB"


def check_model_fits(key: str, value: Any, build_model: Callable[[], nn.Module]) -> None:
    """Count the parameters ``build_model`` would allocate without allocating them (on the meta
    device), and refuse a model whose parameters and optimizer buffers exceed host memory."""
    with torch.device("meta"):
        probe = build_model()
    count = sum(p.numel() for p in probe.parameters())
    check_host_fits(key, value, count * 4 * PARAMETER_COPIES, f"a model ({count:,} parameters)")


def release_device_memory() -> None:
    """Give cached CUDA memory back between jobs that share a process (a no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
