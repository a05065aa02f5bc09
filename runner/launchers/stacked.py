"""K same-shape runs as one stacked model: weights with a leading member dimension, batched matmuls.

A member's parameters are one row of a flat ``(K, P)`` buffer (in ``model.parameters()``
order, the layout :class:`runner.loop.FlatGradients` uses for one run), and each layer's
weight is a view into it; the gradients live likewise in a ``(K, P)`` buffer. Forward is
``torch.baddbmm`` per linear layer over ``(K, B, features)`` batches; the loss is the
project's :meth:`Loss.per_sample` over all ``K * B`` samples, averaged per member; the
backward of the sum over members gives each member the gradient of its own mean loss
(members share no weights, so nothing leaks between them).

Each member keeps its own data: its own training split (splits differ by seed, their sizes
agree) and its own sample order each epoch, drawn from its own generator exactly as
:mod:`runner.epochs` draws it. Batches are views of the epoch's gathered ``(K, N, ...)`` copy.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from runner.launchers.stacked_optim import StackedOptimizer
from runner.losses import Loss
from runner.models import ACTIVATIONS

ELEMENTWISE = tuple(ACTIVATIONS.values())


def quiet_layout_warning() -> None:
    """A member's weight is a strided view of its row; autograd notes that such a ``.grad``
    "may impair performance" and still accumulates into it in place, which is what the buffer
    needs. (Set when a group starts: Hydra's plugin scan discards filters set at import.)"""
    warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def stackable_layers(model: nn.Module) -> list[nn.Module] | str:
    """The model's layers when it is a chain of Flatten, Linear (with bias) and elementwise
    activations — what a stacked model can compute — else why not."""
    if not isinstance(model, nn.Sequential):
        return f"model {type(model).__name__} is not a plain chain of layers"
    layers = list(model)
    for layer in layers:
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            continue
        if isinstance(layer, ELEMENTWISE) or (isinstance(layer, nn.Flatten) and layer is layers[0]):
            continue
        return f"model {type(model).__name__.lower()} has a {type(layer).__name__} layer (fused: Linear, Flatten and elementwise activations only)"
    return layers


class StackedModel:
    """K copies of one architecture with their own weights, initialised from each member's module."""

    def __init__(self, models: Sequence[nn.Module]):
        quiet_layout_warning()
        layers = stackable_layers(models[0])
        assert not isinstance(layers, str), layers
        self.template = layers
        self.shapes = [p.shape for p in models[0].parameters()]
        device = next(models[0].parameters()).device
        rows = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]
        self._bind(torch.stack(rows).to(device))

    def _bind(self, flat: Tensor) -> None:
        """Make ``flat`` the weights (and a fresh gradient buffer) and rebuild the layer views."""
        self.flat = flat.contiguous()
        self.grad = torch.zeros_like(self.flat)
        K = self.flat.shape[0]
        self.params: list[Tensor] = []
        self.ops: list[Any] = []
        offset = 0
        for layer in self.template:
            if isinstance(layer, nn.Linear):
                out_features, in_features = layer.weight.shape
                w, b = out_features * in_features, out_features
                # The leaves are views in the layout baddbmm takes — weight (K, in, out), bias
                # (K, 1, out) — so a forward adds no transpose/unsqueeze nodes to the graph.
                weight = self._leaf(offset, w, lambda t: t.view(K, out_features, in_features).transpose(1, 2))
                bias = self._leaf(offset + w, b, lambda t: t.view(K, 1, out_features))
                offset += w + b
                self.params += [weight, bias]
                self.ops.append(("linear", weight, bias))
            elif isinstance(layer, nn.Flatten):
                self.ops.append(("flatten",))
            else:
                self.ops.append(("elementwise", layer))

    def _leaf(self, offset: int, n: int, shape: Any) -> Tensor:
        view = shape(self.flat[:, offset : offset + n])
        view.requires_grad_()
        # Backward accumulates into an existing .grad in place: the gradients stay in the buffer.
        view.grad = shape(self.grad[:, offset : offset + n])
        return view

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def __call__(self, x: Tensor) -> Tensor:
        """``x``: ``(K, B, *features)`` → ``(K, B, outputs)``."""
        for op in self.ops:
            if op[0] == "linear":
                x = torch.baddbmm(op[2], x, op[1])
            elif op[0] == "flatten":
                x = x.reshape(x.shape[0], x.shape[1], -1)
            else:
                x = op[1](x)
        return x

    def write_into(self, k: int, model: nn.Module) -> None:
        """Member ``k``'s current weights into its own module (for evaluation, checkpoints, ``model.pt``).
        The parameters get new tensors (``vector_to_parameters`` rebinds them), never written into:
        a checkpoint taken earlier is a snapshot its writer may still be serialising."""
        with torch.no_grad():
            nn.utils.vector_to_parameters(self.flat[k].detach().clone(), model.parameters())

    def keep(self, members: Tensor) -> None:
        """Continue with the members at ``members`` only."""
        self._bind(self.flat.detach().index_select(0, members))


@dataclass
class StackedData:
    """Every member's training split, stacked: ``X`` ``(K, N, ...)``, ``Y`` ``(K, N, ...)``."""

    X: Tensor
    Y: Tensor

    @classmethod
    def of(cls, splits: Sequence[Any]) -> "StackedData":
        return cls(torch.stack([s.X for s in splits]), torch.stack([s.Y for s in splits]))

    def epoch(self, orders: Tensor) -> "StackedData":
        """This epoch's data, each member's rows in its own ``orders[k]`` (one gather each)."""
        rows = torch.arange(self.X.shape[0], device=self.X.device).unsqueeze(1)
        return StackedData(self.X[rows, orders], self.Y[rows, orders])

    def keep(self, members: Tensor) -> "StackedData":
        return StackedData(self.X.index_select(0, members), self.Y.index_select(0, members))


@dataclass
class StackedSplit:
    """Every member's evaluation split stacked (``(K, N, ...)``), with its class labels (``None``
    for regression): what :func:`stacked_evaluate` reads."""

    X: Tensor
    Y: Tensor
    labels: Tensor | None

    @classmethod
    def of(cls, splits: Sequence[Any]) -> "StackedSplit":
        labels = None if splits[0].labels is None else torch.stack([s.labels for s in splits])
        return cls(torch.stack([s.X for s in splits]), torch.stack([s.Y for s in splits]), labels)

    def keep(self, members: Tensor) -> "StackedSplit":
        labels = None if self.labels is None else self.labels.index_select(0, members)
        return StackedSplit(self.X.index_select(0, members), self.Y.index_select(0, members), labels)


@torch.no_grad()
def stacked_evaluate(model: StackedModel, loss_fn: Loss, split: StackedSplit, batch_size: int) -> tuple[Tensor, Tensor | None]:
    """:func:`runner.loop.evaluate` for all K members in one forward per chunk: each member's
    mean loss over its whole split (float64 sums of per-sample losses, as there) and accuracy,
    as ``(K,)`` device tensors."""
    K, n = split.X.shape[0], split.X.shape[1]
    loss_sum = correct = None
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        x, y = split.X[:, rows], split.Y[:, rows]
        outputs = model(x)
        flat = outputs.reshape(-1, *outputs.shape[2:])
        chunk = loss_fn.per_sample(flat, y.reshape(-1, *y.shape[2:])).view(K, -1).sum(dim=1, dtype=torch.float64)
        loss_sum = chunk if loss_sum is None else loss_sum + chunk
        if split.labels is not None:
            hits = (loss_fn.predict_classes(flat).view(K, -1) == split.labels[:, rows]).sum(dim=1)
            correct = hits if correct is None else correct + hits
    return loss_sum / n, (correct.double() / n if correct is not None else None)


@dataclass
class SegmentTrace:
    """What a fused segment recorded, per member (rows) and update (columns)."""

    losses: Tensor  # (K, n)
    grad_norms: Tensor  # (K, n)
    wall_times: list[float]
    n: int


class FusedStep:
    """One update of all K members: zero grads → forward → per-member mean loss → backward →
    per-member gradient norm (and clip) → stacked optimizer step."""

    def __init__(self, model: StackedModel, loss_fn: Loss, optimizer: StackedOptimizer, grad_clip: Tensor | None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.grad_clip = grad_clip  # (K, 1) max norms (inf where a member does not clip), or None

    def __call__(self, x: Tensor, y: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        model.grad.zero_()
        K, B = x.shape[0], x.shape[1]
        outputs = model(x)
        per_sample = self.loss_fn.per_sample(outputs.reshape(K * B, *outputs.shape[2:]), y.reshape(K * B, *y.shape[2:]))
        losses = per_sample.view(K, B).mean(dim=1)
        losses.sum().backward()
        norms = torch.linalg.vector_norm(model.grad, dim=1, keepdim=True)
        if self.grad_clip is not None:
            model.grad.mul_(torch.clamp(self.grad_clip / (norms + 1e-6), max=1.0))
        self.optimizer.step(lr)
        return losses.detach(), norms.squeeze(1)


def run_fused_segment(step: FusedStep, data: StackedData, slices: Sequence[slice], lrs: Tensor, stop: Any) -> SegmentTrace:
    """Updates for ``slices`` of this epoch (all members at once), with ``lrs[i]`` the ``(K, 1)``
    learning rates of update ``i``. Stops early, as :func:`runner.loop.train_one_epoch` does,
    before an update once a stop was asked for (the first update always runs)."""
    losses, norms, wall_times = [], [], []
    for i, positions in enumerate(slices):
        now = time.time()
        if losses and stop.requested:
            break
        wall_times.append(now)
        loss, norm = step(data.X[:, positions], data.Y[:, positions], lrs[i])
        losses.append(loss)
        norms.append(norm)
    return SegmentTrace(torch.stack(losses, dim=1), torch.stack(norms, dim=1), wall_times, len(losses))
