"""The training loop, in small functions.

Vocabulary (exact, everywhere in this project):
  * an **iteration** is one parameter update;
  * an **epoch** is one pass over the training set;
  * iterations per epoch = ceil(N / B), or floor(N / B) with ``drop_last``.

The data lives on the training device as tensors. Each epoch draws a permutation from a
seeded generator, gathers the epoch's data in that order once, and takes batches as
contiguous slices of it — no DataLoader, no per-iteration gather. Nothing in an epoch
waits for the device: per-iteration values stay on it and come back once, at epoch end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import get_total_norm
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from runner.losses import Loss


def iterations_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Updates in one pass over ``n`` samples: ceil(n / B), or floor(n / B) with ``drop_last``."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def batch_slices(n: int, batch_size: int, drop_last: bool) -> list[slice]:
    """The batches of one epoch as index ranges into the epoch's (permuted) data."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, iterations_per_epoch(n, batch_size, drop_last) * batch_size, batch_size)]


def epoch_order(generator: torch.Generator, n: int, shuffle: bool, device: torch.device) -> Tensor:
    """This epoch's sample order: a fresh permutation from ``generator``, or 0..n-1 without shuffling.

    The permutation is drawn on the CPU from a CPU generator, so the order stream for a
    seed is the same on every device.
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return order.to(device, non_blocking=True)


class NoSchedulerStep:
    """Stands in for the scheduler at the interval it is not stepped at (keeps the loop branch-free)."""

    def step(self, *args: object) -> None:
        pass


class EpochScheduler:
    """Steps a scheduler once per epoch; ``ReduceLROnPlateau`` is given the loss it watches
    (validation loss, else the full training loss)."""

    def __init__(self, scheduler: object):
        self.scheduler = scheduler

    def step(self, metrics: dict[str, float]) -> None:
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metrics.get("loss/val", metrics["loss/train_full"]))
        else:
            self.scheduler.step()


@dataclass
class EpochTrace:
    """What one epoch recorded at each iteration. Tensors stay on the training device."""

    losses: Tensor  # (iterations,) the batch loss each update was computed from
    grad_norms: Tensor  # (iterations,) global L2 norm of the gradient each update used
    lrs: list[float]  # learning rate each update used (first parameter group)
    batch_sizes: list[int]
    wall_times: list[float]  # host time when each update was issued (time.time())


def train_step(model: nn.Module, loss_fn: Loss, optimizer: Optimizer, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One update: zero_grad → forward → loss → backward → (measure gradient) → step.

    Returns the batch loss and the gradient's global norm, both as device tensors.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    grad_norm = get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    return loss.detach(), grad_norm


def train_one_epoch(
    model: nn.Module,
    loss_fn: Loss,
    optimizer: Optimizer,
    iteration_scheduler: object,
    X: Tensor,
    Y: Tensor,
    order: Tensor,
    slices: list[slice],
    progress: object,
    deadline: float = math.inf,
) -> EpochTrace:
    """One pass over the training data in ``order``, one update per slice.

    Stops early, after the update during which ``deadline`` (a ``time.time()`` value)
    passed: that is how a time budget ends a run in the middle of an epoch.
    """
    model.train()
    X_epoch, Y_epoch = X.index_select(0, order), Y.index_select(0, order)
    losses, grad_norms, lrs, wall_times = [], [], [], []
    for batch in slices:
        lrs.append(optimizer.param_groups[0]["lr"])
        wall_times.append(time.time())
        loss, grad_norm = train_step(model, loss_fn, optimizer, X_epoch[batch], Y_epoch[batch])
        iteration_scheduler.step()
        losses.append(loss)
        grad_norms.append(grad_norm)
        progress.iteration(loss)
        if time.time() >= deadline:
            break
    return EpochTrace(
        losses=torch.stack(losses),
        grad_norms=torch.stack(grad_norms),
        lrs=lrs,
        batch_sizes=[b.stop - b.start for b in slices[: len(losses)]],
        wall_times=wall_times,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Loss, X: Tensor, Y: Tensor, labels: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor | None]:
    """Mean loss (and accuracy when ``labels`` are given) over the whole of ``X``.

    Computed in chunks of ``batch_size`` from per-sample losses, so the result is the
    exact mean over all samples whatever the chunking. Returns device tensors.
    """
    model.eval()
    n = len(X)
    loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
    correct = torch.zeros((), dtype=torch.int64, device=X.device)
    for start in range(0, n, batch_size):
        chunk = slice(start, start + batch_size)
        outputs = model(X[chunk])
        loss_sum += loss_fn.per_sample(outputs, Y[chunk]).sum(dtype=torch.float64)
        if labels is not None:
            correct += (loss_fn.predict_classes(outputs) == labels[chunk]).sum()
    model.train()
    return loss_sum / n, (correct.double() / n if labels is not None else None)
