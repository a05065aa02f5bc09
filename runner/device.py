"""Choose the training device once, from ``cfg.device``."""

from __future__ import annotations

import re

import torch

from runner.errors import ConfigError

ALLOWED = "auto, cpu, cuda, cuda:N (N = a GPU index) or mps"


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device that exists on this machine.

    ``auto`` prefers CUDA, then Apple's MPS, then the CPU. Asking for a device that is not
    there is an error, never a silent fallback: a run labelled ``cuda`` must have used one.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device", spec, f"a device this machine has; MPS is not available here ({ALLOWED})")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise ConfigError("device", spec, ALLOWED)
    if not torch.cuda.is_available():
        raise ConfigError("device", spec, "a device this machine has; CUDA is not available here (use device=auto or cpu)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError("device", spec, f"cuda:0 .. cuda:{torch.cuda.device_count() - 1} on this machine")
    return torch.device("cuda", index)
