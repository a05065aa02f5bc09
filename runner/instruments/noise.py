"""Gradient noise: the simple noise scale of McCandlish et al., measured exactly on the training set.

McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training" (2018): a
mini-batch of B samples estimates the full gradient G with an error whose size is
tr(Σ)/B, where Σ is the covariance of one sample's gradient. The ratio

    B_simple = tr(Σ) / |G|²

is the batch size at which that error is as large as the gradient itself: batches much
smaller than B_simple are mostly noise (each sample still counts, so doubling B about halves
the updates needed), much larger ones barely improve the estimate (the extra samples are
wasted). Its value over training estimates the *critical batch size*.

Here nothing is estimated: every ``noise.every`` iterations, at the weights the update
starts from, the gradient of every training sample enters, over chunks of
``noise.micro_batch_size`` samples, the float64 sums

    G      = (1/n) Σ_i g_i
    tr(Σ)  = (1/n) Σ_i |g_i − G|²        (1/n: the covariance of the gradient of a sample
                                          drawn uniformly from the n training samples, the
                                          distribution a mini-batch draws from)

The sums are taken around the first sample's gradient (the shifted-data algorithm), which
keeps tr(Σ) free of the cancellation of ``mean|g|² − |G|²`` and makes it exactly 0 when
every sample's gradient is the same. Two methods compute them (:func:`gradient_method`
picks one per model, once):

- ``closed form`` (:mod:`runner.instruments.dense_norms`): for chains of dense layers (the
  runner's ``linear``, ``logistic`` and ``mlp``), from each sample's layer inputs and output
  gradients (one batched forward and backward per chunk) without forming any g_i:
  |g_i − g_0|² and G factor into per-layer products. About the cost of evaluating the
  training set once with its backward pass.
- ``torch.func`` (every other model: convolutions, a user's module): each sample's g_i by
  ``vmap(grad(...))``, then the sums above.

Both give the same values (within 1e-6 relative in float32; the closed form rounds less).

The measurement changes nothing in the run: it reads detached weights, never touches
``.grad``, and draws no random numbers (``vmap`` is called with ``randomness="error"``, so a
model that would draw some, e.g. dropout, is refused instead of shifting the random stream;
the closed form takes only layers that cannot draw any, and sends every other model to
``vmap``; the runner's models draw none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.optim import Optimizer

from runner.batches import Split
from runner.instruments.dense_norms import chunk_rows, dense_chain, dense_full_gradient
from runner.losses import Loss

log = logging.getLogger(__name__)

# Logged tags, in the order of the values each measurement stacks.
TAGS = ("noise/b_simple", "noise/b_crit", "noise/grad_var", "noise/cos_to_full", "noise/full_grad_norm")


@dataclass
class FullGradient:
    """The full-training-set gradient and its per-sample spread, as float64 device tensors."""

    gradient: Tensor  # G, flat, in the order of ``model.parameters()``
    trace: Tensor  # tr(Σ) with 1/n normalisation
    n: int

    @property
    def b_simple(self) -> Tensor:
        """tr(Σ) / |G|²."""
        return self.trace / self.gradient.square().sum()


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name, detached (reading them cannot reach ``.grad``)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def per_sample_gradient_fn(model: nn.Module, loss_fn: Loss) -> Any:
    """``(params, X, Y) -> {name: (len(X), *shape)}``: each sample's gradient of its own loss.

    ``loss_fn.per_sample`` on a batch of one is the sample's loss exactly as the batch mean
    averages it (a batch's gradient is the mean of these).
    """
    buffers = dict(model.named_buffers())

    def sample_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        outputs = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return loss_fn.per_sample(outputs, y.unsqueeze(0)).sum()

    return vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="error")


CLOSED_FORM = "closed form"
TORCH_FUNC = "torch.func"


def gradient_method(model: nn.Module, loss_fn: Loss, split: Split) -> str:
    """:data:`CLOSED_FORM` when ``model`` is a chain of dense layers the closed form covers
    (:func:`runner.instruments.dense_norms.dense_chain`), else :data:`TORCH_FUNC`."""
    feature_shape = next(split.chunks(1))[0].shape[1:]
    return CLOSED_FORM if dense_chain(model, loss_fn, feature_shape) is not None else TORCH_FUNC


def full_gradient(model: nn.Module, loss_fn: Loss, split: Split, chunk_size: int, method: str | None = None) -> FullGradient:
    """G and tr(Σ) over every sample of ``split`` at the model's current weights, by ``method``
    (default: :func:`gradient_method`'s choice).

    Memory: one chunk's per-sample gradients, ``chunk_size`` x parameters floats (twice, in
    float64) on the torch.func path; the closed form takes larger chunks in no more memory
    (:func:`runner.instruments.dense_norms.chunk_rows`). No host synchronisation: the results
    stay on the device.
    """
    method = method or gradient_method(model, loss_fn, split)
    if method == CLOSED_FORM:
        layers = dense_chain(model, loss_fn, next(split.chunks(1))[0].shape[1:])
        assert layers is not None, f"{type(model).__name__} is not a chain of dense layers"
        chunks = split.chunks(chunk_rows(layers, chunk_size))
        gradient, trace = dense_full_gradient(layers, loss_fn, chunks, len(split))
        return FullGradient(gradient=gradient, trace=trace, n=len(split))
    return per_sample_full_gradient(model, loss_fn, split, chunk_size)


def per_sample_full_gradient(model: nn.Module, loss_fn: Loss, split: Split, chunk_size: int) -> FullGradient:
    """:func:`full_gradient` by ``torch.func``: every sample's gradient, ``chunk_size`` at a time."""
    params = trainable(model)
    per_sample = per_sample_gradient_fn(model, loss_fn)
    shift = shifted_sum = square_sum = None
    for x, y, _labels in split.chunks(chunk_size):
        grads = per_sample(params, x, y)
        flat = torch.cat([grads[name].reshape(len(x), -1) for name in params], dim=1)
        if shift is None:
            shift = flat[0].clone()
            shifted_sum = torch.zeros(shift.shape, dtype=torch.float64, device=shift.device)
            square_sum = torch.zeros((), dtype=torch.float64, device=shift.device)
        # Differences in the model's dtype (exact 0 for equal gradients), sums in float64.
        deviation = flat - shift
        shifted_sum += deviation.sum(dim=0, dtype=torch.float64)
        square_sum += deviation.square().sum(dtype=torch.float64)
    n = len(split)
    mean_deviation = shifted_sum / n
    # (1/n) Σ|g_i − G|² = (1/n) Σ|d_i|² − |mean d|², with d_i = g_i − g_0.
    trace = (square_sum / n - mean_deviation.square().sum()).clamp(min=0.0)
    return FullGradient(gradient=shift.double() + mean_deviation, trace=trace, n=n)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """cos(a, b) in float64."""
    a, b = a.double(), b.double()
    return a.dot(b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))


class GradientNoise:
    """Measures the gradient noise every ``every`` iterations; logs it at segment ends.

    At a measured iteration, :meth:`before_update` computes G and tr(Σ) at the weights the
    update starts from, and an optimizer step pre-hook reads the update's own
    mini-batch gradient (after backward, just before ``optimizer.step``; a clipped gradient
    has the same direction) for ``noise/cos_to_full``. The values stay on the device until
    :meth:`flush` moves a segment's worth in one transfer.

    ``noise/b_crit``, the running critical-batch-size estimate, is the mean of every
    ``noise/b_simple`` measured so far in the run (resumed runs continue it from the
    checkpoint).
    """

    key = "noise"

    def __init__(self, model: nn.Module, loss_fn: Loss, split: Split, optimizer: Optimizer, every: int, chunk_size: int):
        self.model, self.loss_fn, self.split, self.optimizer = model, loss_fn, split, optimizer
        self.every, self.chunk_size = every, chunk_size
        self.method = gradient_method(model, loss_fn, split)
        log.info("noise.every=%d: gradient noise measured by %s", every, self.method)
        self.params = [p for p in model.parameters() if p.requires_grad]
        device = self.params[0].device
        self._b_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._count = 0
        self._steps: list[int] = []
        self._values: list[Tensor] = []
        self._pending: tuple[int, FullGradient] | None = None
        # Registered once (removing a hook from inside the hook loop would mutate the dict
        # torch iterates); it returns at once at the iterations that are not measured.
        optimizer.register_step_pre_hook(self._on_step)

    def before_update(self, iteration: int) -> None:
        if iteration % self.every:
            return
        self._pending = (iteration, full_gradient(self.model, self.loss_fn, self.split, self.chunk_size, self.method))

    def _on_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._pending is None:
            return
        iteration, full = self._pending
        self._pending = None
        batch = torch.cat([p.grad.reshape(-1) for p in self.params])
        b_simple = full.b_simple
        self._b_sum = self._b_sum + b_simple
        self._count += 1
        norm = torch.linalg.vector_norm(full.gradient)
        self._values.append(torch.stack([b_simple, self._b_sum / self._count, full.trace, cosine(batch, full.gradient), norm]))
        self._steps.append(iteration)

    def flush(self, logger: Any, end: int) -> None:
        """Log the measurements taken before iteration ``end`` (later ones belong to updates
        that were not kept: a diverged segment's tail)."""
        if not self._values:
            return
        values = torch.stack(self._values).cpu().numpy()  # the segment's one transfer
        steps = np.asarray(self._steps, dtype=np.int64)
        keep = steps < end
        for column, tag in enumerate(TAGS):
            logger.log_series(tag, steps[keep], values[keep, column])
        self._steps, self._values = [], []

    def state_dict(self) -> dict[str, Any]:
        return {"b_sum": float(self._b_sum), "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._b_sum = torch.tensor(state["b_sum"], dtype=torch.float64, device=self._b_sum.device)
        self._count = int(state["count"])

    def finish(self, out: Any, logger: Any, summary: dict[str, Any]) -> None:
        """Nothing is left to write at the end: every measurement went out at its segment's end."""
