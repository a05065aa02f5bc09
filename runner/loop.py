"""The training loop, in small functions.

Vocabulary (exact, everywhere in this project):
  * an **iteration** is one parameter update;
  * an **epoch** is one pass over the training set;
  * iterations per epoch = ceil(N / B), or floor(N / B) with ``drop_last``.

The data lives on the training device as tensors. Each epoch draws a permutation from a
seeded generator; batches are slices of positions in that order, fetched from an
:class:`~runner.batches.EpochSource` — no DataLoader. Nothing in an epoch waits for the
device: per-iteration values stay on it and come back once, at epoch end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from runner import tags
from runner.batches import EpochSource, InMemorySplit, Split
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


class _NoStop:
    requested = False


NO_STOP = _NoStop()


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
            self.scheduler.step(metrics.get(tags.LOSS_VAL, metrics[tags.LOSS_FULL]))
        else:
            self.scheduler.step()


class FlatGradients:
    """Every parameter's ``.grad`` is a view into one flat buffer.

    Zeroing the gradients and measuring their global norm are then one kernel each,
    instead of one per parameter: on a small model at batch size 1 that is the
    difference between a few percent of overhead and a quarter. Backward accumulates
    into the existing ``.grad`` tensors in place, so the views stay attached.
    """

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for p in params:
            p.grad = self.flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def zero(self) -> None:
        self.flat.zero_()

    def norm(self) -> Tensor:
        return torch.linalg.vector_norm(self.flat)

    def clip_(self, norm: Tensor, max_norm: float | None) -> None:
        """Scale the gradient down to ``max_norm`` when its norm exceeds it (on the device, no sync)."""
        if max_norm is not None:
            self.flat.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))

    def attached(self) -> bool:
        """True while every ``.grad`` still lives in the buffer (checked by tests)."""
        base = self.flat.untyped_storage().data_ptr()
        return all(p.grad is not None and p.grad.untyped_storage().data_ptr() == base for p in self.params)


def dense_trunk(model: nn.Module) -> nn.Module | None:
    """``model`` without its leading ``nn.Flatten``, or None when it has none.

    The dense models flatten their input first. Fed batches that are already flat rows,
    the update can skip that module: the layers after it see the same contiguous values,
    so the result is bit for bit the same, and calling one module less per update is a
    few percent of a batch-1 update on a small model. The trunk shares the model's
    layers (a plain ``nn.Sequential`` of the same modules), so training it trains the model,
    and ``model.train()``/``model.eval()`` switch its layers too.
    """
    if isinstance(model, nn.Sequential) and len(model) > 1:
        first = model[0]
        if isinstance(first, nn.Flatten) and first.start_dim == 1 and first.end_dim == -1:
            return nn.Sequential(*list(model)[1:])
    return None


@dataclass
class EpochTrace:
    """What one epoch recorded at each iteration. Tensors stay on the training device."""

    losses: Tensor  # (iterations,) the batch loss each update was computed from
    grad_norms: Tensor  # (iterations,) global L2 norm of the gradient each update used
    lrs: list[float]  # learning rate each update used (first parameter group)
    batch_sizes: list[int]
    wall_times: list[float]  # host time when each update was issued (time.time())


def train_step(
    model: nn.Module,
    loss_fn: Loss,
    optimizer: Optimizer,
    grads: FlatGradients,
    source: EpochSource,
    positions: slice,
    grad_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One update: zero grads → fetch batch → forward → loss → backward → measure (and clip) gradient → step.

    Returns the batch loss and the gradient's global norm before clipping, as device tensors.
    """
    grads.zero()
    x, y = source.take(positions)
    loss = loss_fn(model(x), y)
    loss.backward()
    grad_norm = grads.norm()
    grads.clip_(grad_norm, grad_clip)
    optimizer.step()
    return loss.detach(), grad_norm


def accumulating_train_step(
    model: nn.Module,
    loss_fn: Loss,
    optimizer: Optimizer,
    grads: FlatGradients,
    source: EpochSource,
    positions: slice,
    micro_batch_size: int,
    grad_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One update from a batch processed in chunks of ``micro_batch_size``.

    Each chunk's mean loss is weighted by its share of the batch, so the accumulated
    gradient (and the returned loss) equal those of the whole batch at once — exactly,
    up to summation order — while memory is bounded by the chunk, not the batch.
    """
    grads.zero()
    size = positions.stop - positions.start
    loss_sum = torch.zeros((), device=grads.flat.device, dtype=grads.flat.dtype)
    for start in range(positions.start, positions.stop, micro_batch_size):
        chunk = slice(start, min(start + micro_batch_size, positions.stop))
        x, y = source.take(chunk)
        weighted = loss_fn(model(x), y) * ((chunk.stop - chunk.start) / size)
        weighted.backward()
        loss_sum += weighted.detach()
    grad_norm = grads.norm()
    grads.clip_(grad_norm, grad_clip)
    optimizer.step()
    return loss_sum, grad_norm


StepFn = Callable[[EpochSource, slice], tuple[Tensor, Tensor]]


def train_one_epoch(
    step: StepFn,
    optimizer: Optimizer,
    iteration_scheduler: object,
    source: EpochSource,
    slices: list[slice],
    progress: object,
    deadline: float = math.inf,
    stop: object | None = None,
) -> EpochTrace:
    """One pass over ``source``, one update per slice of positions.

    Stops early, before the first update that would start after ``deadline`` (a
    ``time.time()`` value) or after ``stop.requested`` became true: that is how a time
    budget or a signal ends a run in the middle of an epoch, at an iteration boundary.
    """
    stop = stop or NO_STOP
    losses, grad_norms, lrs, wall_times = [], [], [], []
    # Looked up once, not per update: schedulers write "lr" into this same dict in place,
    # so reading it each iteration still sees the rate the coming update uses.
    group = optimizer.param_groups[0]
    clock, step_scheduler, report = time.time, iteration_scheduler.step, progress.iteration
    for positions in slices:
        now = clock()
        # No update starts once the time is up or a stop was asked for (the first always
        # runs: a segment only starts when there is time left).
        if losses and (stop.requested or now >= deadline):
            break
        lrs.append(group["lr"])
        wall_times.append(now)
        loss, grad_norm = step(source, positions)
        step_scheduler()
        losses.append(loss)
        grad_norms.append(grad_norm)
        report(loss)
    return EpochTrace(
        losses=torch.stack(losses),
        grad_norms=torch.stack(grad_norms),
        lrs=lrs,
        batch_sizes=[b.stop - b.start for b in slices[: len(losses)]],
        wall_times=wall_times,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Loss, split: Split, batch_size: int) -> tuple[Tensor, Tensor | None]:
    """Mean loss (and accuracy, for classification) over the whole split.

    Computed in chunks of ``batch_size`` from per-sample losses, so the result is the
    exact mean over all samples whatever the chunking. Returns device tensors.
    """
    model.eval()
    loss_sum = correct = None
    for x, y, labels in split.chunks(batch_size):
        outputs = model(x)
        chunk_loss = loss_fn.per_sample(outputs, y).sum(dtype=torch.float64)
        loss_sum = chunk_loss if loss_sum is None else loss_sum + chunk_loss
        if labels is not None:
            hits = (loss_fn.predict_classes(outputs) == labels).sum()
            correct = hits if correct is None else correct + hits
    model.train()
    n = len(split)
    return loss_sum / n, (correct.double() / n if correct is not None else None)


# Splits evaluated together when their copy is at most this large (the copy is made once per run).
JOINT_EVAL_MAX_BYTES = 64 << 20


@dataclass
class JointEvaluation:
    """The training and validation sets as one tensor, evaluated in one forward pass.

    At an epoch end of a small data set the two forward passes cost mostly their fixed
    overhead: on digits (1438 + 359 samples, MLP) one pass over both takes 1.1-1.2 ms where two take
    1.7. Each split's mean is that of its own rows, as :func:`evaluate` computes it: bit for
    bit where the kernels' row results do not depend on how many rows there are (the MLP and
    CNN on digits, compared on an AMD EPYC; MKL on Intel CPUs can round a row by the product's
    row count), else within float32 rounding of each output (a matrix-vector product, as in
    the linear model): as a different ``eval_batch_size`` gives.
    Used when the splits are held in memory, fit in one evaluation chunk together and
    their copy is small (:data:`JOINT_EVAL_MAX_BYTES`).
    """

    X: Tensor
    Y: Tensor
    labels: Tensor | None
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, splits: Sequence[Split], batch_size: int) -> "JointEvaluation | None":
        """The splits joined, or None where one pass would not do (see the class)."""
        if len(splits) < 2 or not all(isinstance(s, InMemorySplit) for s in splits):
            return None
        if sum(len(s) for s in splits) > batch_size or sum(s.X.nbytes + s.Y.nbytes for s in splits) > JOINT_EVAL_MAX_BYTES:
            return None
        if len({s.labels is None for s in splits}) > 1:
            return None
        labels = None if splits[0].labels is None else torch.cat([s.labels for s in splits])
        return cls(torch.cat([s.X for s in splits]), torch.cat([s.Y for s in splits]), labels, tuple(len(s) for s in splits))

    @property
    def nbytes(self) -> int:
        return self.X.nbytes + self.Y.nbytes + (self.labels.nbytes if self.labels is not None else 0)

    @torch.no_grad()
    def __call__(self, model: nn.Module, loss_fn: Loss) -> list[tuple[Tensor, Tensor | None]]:
        """Each split's (mean loss, accuracy or None), as :func:`evaluate` returns them."""
        model.eval()
        outputs = model(self.X)
        per_sample = loss_fn.per_sample(outputs, self.Y)
        hits = None if self.labels is None else loss_fn.predict_classes(outputs) == self.labels
        model.train()
        results, start = [], 0
        for n in self.sizes:
            rows = slice(start, start + n)
            start += n
            loss = per_sample[rows].sum(dtype=torch.float64) / n
            results.append((loss, hits[rows].sum().double() / n if hits is not None else None))
        return results
