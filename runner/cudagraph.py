"""``cuda_graph=true``: the update captured once as a CUDA graph, then replayed.

At batch size 1 on a GPU an update is a few dozen tiny kernels, and launching them from
Python costs more than running them. A CUDA graph records the launches of one whole update
(zero the gradient, forward, loss, backward, gradient norm and clipping, optimizer step)
and replays them with one call.

Exact by construction, following torch's recipe for whole-network capture
(``torch.cuda.graphs``, "Whole-network capture" in the CUDA semantics notes):

* the first :data:`WARMUP` updates run eagerly on a side stream: they are real updates of
  the run, and they create everything capture must not allocate (optimizer state such as
  momentum buffers, cuBLAS workspaces, autograd's buffers);
* the next full-size batch is copied into static input buffers and one update is captured;
  capture runs nothing, so the graph is replayed at once to make that update;
* every later full-size batch is copied into the same buffers and the graph replayed;
  the loss and gradient norm it leaves in its static outputs are cloned before the next
  replay overwrites them;
* a batch of another size (the last, partial batch of an epoch) runs eagerly: same kernels,
  same state, outside the graph;
* optimizers that keep their step count on the host (Adam, RMSprop...) are switched to
  ``capturable=True``, so that count lives on the device and advances inside the graph;
  eager and captured updates then run the same arithmetic.

The learning rate is a Python number that the captured step bakes in, so the option takes
only a constant learning rate (:func:`check_cuda_graph`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from runner.batches import EpochSource
from runner.errors import ConfigError
from runner.optim import LARS

# Eager updates before capture (torch's example uses 3; the first creates optimizer state).
WARMUP = 3

Step = Callable[[EpochSource, slice], tuple[Tensor, Tensor]]


def check_cuda_graph(cfg: Any, device: torch.device) -> None:
    """Refuse ``cuda_graph=true`` where a captured update cannot be exact (before any data loads)."""
    if not cfg.cuda_graph:
        return
    if device.type != "cuda":
        raise ConfigError(
            "cuda_graph", True, f"only on a CUDA device, and this run is on {device.type} (use device=cuda on a machine with a GPU, or cuda_graph=false)"
        )
    if cfg.micro_batch_size is not None:
        raise ConfigError("cuda_graph", True, "only with whole batches, micro_batch_size=null (an accumulated update is not captured)")
    if cfg.noise.every or cfg.trajectory.record:
        # The instruments hook into each update from the host (the noise measurement reads the
        # update's gradient in an optimizer hook): a replayed graph would skip them.
        raise ConfigError("cuda_graph", True, "only with the instruments off, noise.every=0 and trajectory.record=false (they hook into each eager update)")
    scheduler = cfg.scheduler._target_.rsplit(".", 1)[-1]
    if scheduler != "constant":
        raise ConfigError(
            "cuda_graph", True, f"only with scheduler=none, a constant learning rate (the captured update bakes it in), not {scheduler}"
        )


def make_capturable(optimizer: Optimizer) -> None:
    """Switch ``optimizer`` to keep its state on the device, or refuse it (before its first step).

    torch's SGD and the runner's LARS keep no state on the host; optimizers with a
    ``capturable`` option keep their step count there unless it is set.
    """
    if "capturable" in optimizer.defaults:
        for group in optimizer.param_groups:
            group["capturable"] = True
    elif not isinstance(optimizer, (torch.optim.SGD, LARS)):
        raise ConfigError(
            "cuda_graph", True, f"only with an optimizer that can be captured (sgd, momentum, nesterov, lars, or one with a capturable "
            f"option such as adam); {type(optimizer).__name__} keeps its state on the host"
        )


class _StaticBatch:
    """The source the captured update reads: the same two buffers every replay."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def take(self, positions: slice) -> tuple[Tensor, Tensor]:
        return self.x, self.y


class GraphedStep:
    """A step function ``(source, positions) -> (loss, grad_norm)`` that replays a captured update.

    ``eager`` is the same update without capture (what the first updates and partial
    batches run, and what a test compares the graph with).
    """

    def __init__(self, eager: Step, batch_size: int, device: torch.device):
        self.eager = eager
        self.batch_size = batch_size
        self.device = device
        self._done = 0
        self._side: torch.cuda.Stream | None = None  # made at the first warm-up update
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: _StaticBatch | None = None
        self._out: tuple[Tensor, Tensor] | None = None

    def __call__(self, source: EpochSource, positions: slice) -> tuple[Tensor, Tensor]:
        if positions.stop - positions.start != self.batch_size:
            return self.eager(source, positions)  # a partial batch: another shape than the graph's
        if self._done < WARMUP:
            self._done += 1
            return self._warm_up(source, positions)
        x, y = source.take(positions)
        if self._graph is None:
            self._capture(x, y)
        self._static.x.copy_(x)
        self._static.y.copy_(y)
        self._graph.replay()
        loss, grad_norm = self._out
        return loss.clone(), grad_norm.clone()  # the next replay overwrites the static outputs

    def _warm_up(self, source: EpochSource, positions: slice) -> tuple[Tensor, Tensor]:
        # On a side stream, as torch's recipe asks, so that lazily created resources are not
        # created on the stream that will be captured.
        if self._side is None:
            self._side = torch.cuda.Stream(device=self.device)
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            loss, grad_norm = self.eager(source, positions)
        current.wait_stream(self._side)
        for tensor in (loss, grad_norm):  # made on the side stream, read on the current one
            tensor.record_stream(current)
        return loss, grad_norm

    def _capture(self, x: Tensor, y: Tensor) -> None:
        self._static = _StaticBatch(torch.empty_like(x), torch.empty_like(y))
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._out = self.eager(self._static, slice(0, self.batch_size))
