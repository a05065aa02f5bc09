"""Learning-rate schedules as factories ``(optimizer, total_steps, **hparams) -> scheduler``.

``total_steps`` is the number of scheduler steps in the whole run: ``epochs`` when
``scheduler.interval=epoch``, ``epochs * iterations_per_epoch`` when ``interval=iteration``.
Schedules that need the run's length (cosine) take it from there, so a sweep over
``epochs`` or ``batch_size`` never needs a hand-edited ``T_max``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LRScheduler,
    ReduceLROnPlateau,
    StepLR,
)

from runner.errors import ConfigError
from runner.text import plural

INTERVALS = ("epoch", "iteration")


def constant(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """The lr never changes (``scheduler=none``): every run steps a scheduler, so the loop has one path."""
    return LambdaLR(optimizer, lambda step: 1.0)


def step(optimizer: Optimizer, total_steps: int, step_size: int, gamma: float) -> LRScheduler:
    """lr × gamma every ``step_size`` scheduler steps."""
    if step_size < 1:
        raise ConfigError("scheduler.step_size", step_size, "an integer >= 1")
    if not gamma > 0:
        raise ConfigError("scheduler.gamma", gamma, "a number > 0")
    return StepLR(optimizer, step_size=step_size, gamma=gamma)


def exponential(optimizer: Optimizer, total_steps: int, gamma: float) -> LRScheduler:
    """lr × gamma at every scheduler step."""
    if not gamma > 0:
        raise ConfigError("scheduler.gamma", gamma, "a number > 0")
    return ExponentialLR(optimizer, gamma=gamma)


def cosine(optimizer: Optimizer, total_steps: int, eta_min: float) -> LRScheduler:
    """Half a cosine from the base lr down to ``eta_min`` over the whole run."""
    if not 0 <= eta_min:
        raise ConfigError("scheduler.eta_min", eta_min, "a number >= 0")
    return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=eta_min)


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int, eta_min: float) -> LRScheduler:
    """Linear warm-up from lr/warmup_steps to lr over ``warmup_steps``, then cosine to ``eta_min``."""
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(
            "scheduler.warmup_steps", warmup_steps, f"an integer in [0, {total_steps}) (the run has {plural(total_steps, 'scheduler step')})"
        )
    if not 0 <= eta_min:
        raise ConfigError("scheduler.eta_min", eta_min, "a number >= 0")
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    decay_steps = total_steps - warmup_steps

    def factor(base_lr: float):
        floor = eta_min / base_lr if base_lr > 0 else 0.0

        def at(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = min(step - warmup_steps, decay_steps) / decay_steps
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return at

    return LambdaLR(optimizer, [factor(lr) for lr in base_lrs])


def plateau(
    optimizer: Optimizer, total_steps: int, factor: float, patience: int, threshold: float, min_lr: float
) -> ReduceLROnPlateau:
    """lr × factor when the monitored loss (validation, else full training loss) stalls for ``patience`` epochs."""
    if not 0 < factor < 1:
        raise ConfigError("scheduler.factor", factor, "a number in (0, 1)")
    if patience < 0:
        raise ConfigError("scheduler.patience", patience, "an integer >= 0")
    return ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, threshold=threshold, min_lr=min_lr)


FACTORIES = {f.__name__: f for f in (constant, step, exponential, cosine, warmup_cosine, plateau)}
# Plateau decides from an epoch-level loss; per iteration it would need a host sync each step.
EPOCH_ONLY = {"plateau"}
# These shape the lr over the run's length, so the length must be known in advance.
NEEDS_RUN_LENGTH = {"cosine", "warmup_cosine"}
