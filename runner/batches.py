"""Where an epoch's batches come from: one sample order, several ways to fetch it.

Every source serves ``take(positions)``: the samples at ``order[positions]``, on the
training device, in that order. The sources differ only in speed and memory, never in
which samples a batch holds, so switching source cannot change a result:

* :class:`PermutedCopy` gathers the whole epoch once, then serves views (fastest for
  small batches; holds a second copy of the data).
* :class:`PermutedGather` gathers each request (no second copy: memory bounded by the
  batch, or by the micro-batch when gradients are accumulated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from torch import Tensor


class EpochSource(Protocol):
    def take(self, positions: slice) -> tuple[Tensor, Tensor]:
        """Inputs and targets of the samples at ``order[positions]``."""


class PermutedCopy:
    """The epoch's data gathered once in ``order``; batches are contiguous views of it."""

    def __init__(self, X: Tensor, Y: Tensor, order: Tensor):
        self.X, self.Y = X.index_select(0, order), Y.index_select(0, order)

    def take(self, positions: slice) -> tuple[Tensor, Tensor]:
        return self.X[positions], self.Y[positions]


class PermutedGather:
    """Each request gathered from the unpermuted data: no copy of the whole epoch."""

    def __init__(self, X: Tensor, Y: Tensor, order: Tensor):
        self.X, self.Y, self.order = X, Y, order

    def take(self, positions: slice) -> tuple[Tensor, Tensor]:
        rows = self.order[positions]
        return self.X.index_select(0, rows), self.Y.index_select(0, rows)


class Split(Protocol):
    """One split of the data, ready for training: the loop needs nothing else from it."""

    def __len__(self) -> int: ...

    def source(self, order: Tensor, bounded_memory: bool) -> EpochSource:
        """This epoch's batches in ``order``; ``bounded_memory`` forbids copying the whole epoch."""

    def chunks(self, size: int) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        """The whole split in file order, ``size`` samples at a time: inputs, loss-ready
        targets and class labels (``None`` for regression), for evaluation."""


@dataclass
class InMemorySplit:
    """A split held on the training device as tensors."""

    X: Tensor
    Y: Tensor  # targets as the loss wants them (e.g. one-hot)
    labels: Tensor | None  # class indices, for accuracy
    # Training batches as (batch, features) rows: set when the model's leading nn.Flatten is
    # skipped in the update (runner.loop.dense_trunk); evaluation still sees X as it is.
    flat_batches: bool = False

    def __len__(self) -> int:
        return len(self.X)

    def source(self, order: Tensor, bounded_memory: bool) -> EpochSource:
        X = self.X.flatten(1) if self.flat_batches else self.X  # a view: no copy
        return (PermutedGather if bounded_memory else PermutedCopy)(X, self.Y, order)

    def chunks(self, size: int) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        for start in range(0, len(self.X), size):
            rows = slice(start, start + size)
            yield self.X[rows], self.Y[rows], (self.labels[rows] if self.labels is not None else None)
