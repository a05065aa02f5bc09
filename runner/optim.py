"""Optimizers that torch does not ship."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["LARS"]


def _check(name: str, value: Any, positive: bool = False) -> float:
    """A finite number >= 0 (> 0 when ``positive``), or ValueError naming ``name``."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number {bound})")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number {bound})")
    return float(value)


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, "Large Batch
    Training of Convolutional Networks", arXiv:1708.03888, Algorithm 1).

    Each parameter tensor ``w`` (a "layer") with gradient ``g`` gets its own trust ratio,
    so that the step is a fixed fraction of the weight's norm whatever the gradient's scale::

        local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)
        v        = momentum * v + lr * local_lr * (g + weight_decay * w)
        w        = w - v

    ``local_lr`` is 1 where ``||w|| == 0`` or ``||g|| == 0``: the ratio would be 0 there and
    a zero-initialised weight (a bias, say) would never move. The global ``lr`` is the
    paper's ``gamma_t``; its polynomial decay is left to a learning-rate scheduler.

    The norms stay on the device and the ``||w|| == 0`` case is a ``torch.where``, so a
    step never waits on the accelerator.

    Args:
        params: parameters, or dicts defining parameter groups (any option can be set per group).
        lr: the global learning rate (paper: ``gamma``), >= 0.
        momentum: the momentum factor ``m``, >= 0.
        weight_decay: the L2 coefficient ``beta``, >= 0; it enters the gradient and the ratio.
        trust_coefficient: the LARS coefficient ``eta``, > 0.
        eps: added to the ratio's denominator to keep it finite, >= 0.

    The velocity ``v`` is kept per parameter as ``state["momentum_buffer"]``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0005,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ):
        defaults = dict(
            lr=_check("lr", lr),
            momentum=_check("momentum", momentum),
            weight_decay=_check("weight_decay", weight_decay),
            trust_coefficient=_check("trust_coefficient", trust_coefficient, positive=True),
            eps=_check("eps", eps),
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group, checking any option it overrides like the constructor does."""
        for name in ("lr", "momentum", "weight_decay", "eps"):
            if name in param_group:
                _check(name, param_group[name])
        if "trust_coefficient" in param_group:
            _check("trust_coefficient", param_group["trust_coefficient"], positive=True)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs one update.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            weight_decay = group["weight_decay"]
            trust_coefficient = group["trust_coefficient"]
            eps = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")

                w_norm = torch.linalg.vector_norm(p)
                g_norm = torch.linalg.vector_norm(g)
                ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
                local_lr = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))

                update = g.add(p, alpha=weight_decay).mul_(local_lr)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    # v starts at 0, so the first velocity is the scaled update itself.
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf.mul_(momentum).add_(update, alpha=lr)
                p.sub_(buf)
        return loss
