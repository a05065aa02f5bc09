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
# One noise chunk's per-sample gradients (runner.instruments.noise.full_gradient), held about
# this many times at its peak: vmap's result and its temporaries, the flat concatenation, the
# deviation from the shift and its square (measured: 5.85 and 5.87 x chunk x parameters x 4
# bytes of peak RSS for chunks of 64 and 128 through a 1.1M-parameter MLP on the CPU).
NOISE_GRADIENT_COPIES = 6


class OutOfMemory(RunnerError):
    """The configured run needs more memory than the device has free."""

    def __init__(self, needed: int, available: int, device: torch.device, batch_size: int, noise_rows: int | None = None):
        self.needed, self.available = needed, available
        if noise_rows is not None:
            # The gradient-noise measurement, not the update, is what does not fit.
            super().__init__(
                f"measuring the gradient noise (noise.micro_batch_size={noise_rows} per-sample gradients at once) needs about "
                f"{needed / 2**20:,.0f} MB on {device}, and {available / 2**20:,.0f} MB are free. Lower noise.micro_batch_size "
                f"(e.g. noise.micro_batch_size={max(1, noise_rows * available // (2 * needed))}): the measurement is the same, in smaller chunks"
            )
            return
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


def noise_bytes(model: nn.Module, in_shape: tuple[int, ...], device: torch.device, rows: int) -> int:
    """Estimated memory of one gradient-noise chunk of ``rows`` samples: their per-sample
    gradients (:data:`NOISE_GRADIENT_COPIES` times) and their activations."""
    element = next(model.parameters()).element_size()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    activations = activation_elements_per_sample(model, in_shape, device) * ACTIVATION_COPIES
    return rows * (trainable * NOISE_GRADIENT_COPIES + activations) * element


def check_fits(
    model: nn.Module, in_shape: tuple[int, ...], device: torch.device, batch_size: int, micro_batch_size: int | None,
    data_copy_bytes: int, noise_rows: int | None = None,
) -> int:
    """Raise :class:`OutOfMemory` if a step, or a gradient-noise measurement of ``noise_rows``
    samples at once (between updates: one or the other is live), will not fit; return the estimate in bytes."""
    rows = min(batch_size, micro_batch_size or math.inf)
    needed = step_bytes(model, in_shape, device, int(rows), data_copy_bytes)
    free = available_bytes(device)
    if free is not None and needed > free:
        raise OutOfMemory(needed, free, device, batch_size)
    if noise_rows:
        # The measurement runs before an update's forward pass: the parameter buffers and the
        # epoch's data copy are live, the update's activations are not.
        base = step_bytes(model, in_shape, device, 0, data_copy_bytes)
        measuring = base + noise_bytes(model, in_shape, device, noise_rows)
        if free is not None and measuring > free:
            raise OutOfMemory(measuring, free, device, batch_size, noise_rows=noise_rows)
        needed = max(needed, measuring)
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
