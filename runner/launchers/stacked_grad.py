"""A fused update without autograd: the stacked MLP's gradients written out by hand.

At batch size 1 a stacked update is a dozen tiny kernels, and autograd's graph and engine
cost as much as the kernels themselves. For the chains a stacked model can hold (Linear,
leading Flatten, elementwise activations) the backward pass is a few batched matmuls, so
:class:`ClosedFormStep` computes it directly, writing each layer's gradient into the ``(K, P)``
gradient buffer. Each derivative is the formula torch's own backward kernel uses
(``threshold_backward``, ``tanh_backward``, ``sigmoid_backward``, ``leaky_relu_backward``, and
log-softmax's ``grad - exp(out) * sum(grad)``), so gradients agree with autograd's up to float
rounding. The derivative of the loss is closed-form for sparse categorical cross-entropy from
logits (the default loss); any other loss goes through autograd on the outputs only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runner.launchers.stacked import FusedStep, StackedModel
from runner.losses import SparseCategoricalCrossentropy

# Activation class -> (output, input, upstream gradient) -> gradient at the input.
DERIVATIVES: dict[type[nn.Module], Any] = {
    nn.ReLU: lambda layer, out, pre, d: d.mul_(out > 0),
    nn.Tanh: lambda layer, out, pre, d: d.mul_(1 - out * out),
    nn.Sigmoid: lambda layer, out, pre, d: d.mul_((1 - out) * out),
    nn.LeakyReLU: lambda layer, out, pre, d: torch.where(pre > 0, d, d * layer.negative_slope),
}


def closed_form(step: FusedStep) -> bool:
    """Whether the step's model is a chain of Linear layers (not ``torch.func``-stacked) whose
    every activation has a derivative here."""
    return type(step.model) is StackedModel and all(op[0] != "elementwise" or type(op[1]) in DERIVATIVES for op in step.model.ops)


class ClosedFormStep(FusedStep):
    """:class:`FusedStep` with the backward pass written out (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        loss = self.loss_fn
        self._sparse_ce = isinstance(loss, SparseCategoricalCrossentropy) and loss.from_logits
        first = next(i for i, op in enumerate(self.model.ops) if op[0] == "linear")
        self._first_linear = first

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        K, B = x.shape[0], x.shape[1]
        saved = []
        h = x
        for op in model.ops:
            if op[0] == "linear":
                saved.append(h)
                h = torch.baddbmm(op[2], h, op[1])
            elif op[0] == "flatten":
                h = h.reshape(K, B, -1)
                saved.append(None)
            else:
                saved.append(h)
                h = op[1](h)
                saved[-1] = (saved[-1], h)
        losses, d = self._loss_and_gradient(h, y, K, B)
        for i in range(len(model.ops) - 1, self._first_linear - 1, -1):
            op = model.ops[i]
            if op[0] == "linear":
                inputs, weight, bias = saved[i], op[1], op[2]
                # weight.grad is the (K, in, out) view of the buffer's (K, out, in) rows.
                torch.bmm(d.transpose(1, 2), inputs, out=weight.grad.transpose(1, 2))
                bias.grad.copy_(d.sum(dim=1, keepdim=True))
                if i > self._first_linear:
                    d = torch.bmm(d, weight.transpose(1, 2))
            elif op[0] == "elementwise":
                pre, out = saved[i]
                d = DERIVATIVES[type(op[1])](op[1], out, pre, d)
        norms = torch.linalg.vector_norm(model.grad, dim=1, keepdim=True)
        if self.grad_clip is not None:
            model.grad.mul_(torch.clamp(self.grad_clip / (norms + 1e-6), max=1.0))
        self.optimizer.step(lr)
        return losses, norms.squeeze(1)

    def _loss_and_gradient(self, outputs: Tensor, y: Tensor, K: int, B: int) -> tuple[Tensor, Tensor]:
        """Each member's mean loss ``(K,)`` and the gradient of their sum at ``outputs``."""
        if self._sparse_ce:
            log_probs = F.log_softmax(outputs, dim=-1)
            index = y.unsqueeze(-1)
            losses = log_probs.gather(-1, index).squeeze(-1).neg().mean(dim=1)
            # log_softmax's backward of the upstream -1/B at the label: exp(out) * (1/B) - onehot / B.
            d = log_probs.exp().mul_(1.0 / B)
            d.scatter_add_(-1, index, torch.full(index.shape, -1.0 / B, dtype=d.dtype, device=d.device))
            return losses, d
        with torch.enable_grad():
            out = outputs.detach().requires_grad_()
            per_sample = self.loss_fn.per_sample(out.reshape(K * B, *out.shape[2:]), y.reshape(K * B, *y.shape[2:]))
            losses = per_sample.view(K, B).mean(dim=1)
            (d,) = torch.autograd.grad(losses.sum(), out)
        return losses.detach(), d
