"""G and tr(Σ) of a chain of dense layers from per-sample gradient norms, without per-sample gradients.

For a linear layer ``z = W a + b`` a sample's gradient of its own loss is ``g = δ aᵀ`` for the
weight and ``δ`` for the bias, with ``a`` the layer's input and ``δ = ∂loss_i/∂z`` the
gradient at its output. Inner products of such outer products factor:

    <g_i, g_j> = (δ_i·δ_j) (a_i·a_j)   (+ δ_i·δ_j for the bias)

so one forward pass that keeps each layer's ``a`` and ``z``, and one backward pass of the
*summed* per-sample losses to the ``z`` (sample i's row of that gradient is its own δ_i:
the layers here never mix samples), give every quantity :mod:`runner.instruments.noise`
needs, in O(batch x widths) memory instead of O(batch x parameters):

    G      = (1/n) Σ_i δ_i a_iᵀ                       (per layer; a float64 matmul)
    tr(Σ)  = (1/n) Σ_i |g_i − g_0|² − |G − g_0|²     (the same shifted-data algorithm as the
                                                      torch.func path, shift g_0 = sample 0's
                                                      gradient, each |g_i − g_0|² expanded by
                                                      the factorisation above)

Precision. Every product and sum is formed in float64 from the model-dtype values of δ and
``a``. For a float32 model, a product of two float32 numbers is exact in float64 (48 of 53
significand bits), so the expansion of |g_i − g_0|² is the float64 value of the exact
quantity for these δ and ``a``, rounded at 1e-16 relative to |g_i|²; its cancellation (x − 2y
+ z, each about |g_i|²) costs a factor |g_i|²/|g_i − g_0|², which would have to reach 1e10 before
the result moved by 1e-6. The torch.func path instead rounds each per-sample gradient, and
its difference from g_0, to float32 (2^-24 ≈ 6e-8 relative), and computes δ and ``a`` one
sample at a time rather than in a batched matmul (a few float32 ulps apart). The two results
therefore differ by the torch.func path's own rounding: measured on digits' MLP over training,
at most 3e-8 relative for G and 1.2e-8 for tr(Σ), for every loss. ``tests/test_noise_closed_form.py``
asserts 1e-6 on float32 runs of the runner's dense models, and on Hypothesis-drawn float64 models,
shapes and data for every loss (there both paths are exact to float64 rounding). Identical samples give tr(Σ) = 0 exactly, as on the torch.func path: every term
x − 2y + z is then formed from bit-identical factors.

What the closed form accepts (:func:`dense_chain`): an ``nn.Sequential`` (or a subclass that
keeps its ``forward``: the runner's ``linear``, ``logistic`` and ``mlp``) of ``nn.Linear``
layers, a leading ``nn.Flatten`` and the runner's elementwise activations, every trainable
parameter a weight or bias of those layers, fed 1-D feature rows, and a loss from
:data:`runner.losses.LOSSES` (each sample's loss depends on its own row only). None of
these modules draws random numbers or reads its train/eval mode, so the measurement is the
same in either mode and draws nothing; anything else (dropout, batch norm, convolutions, a
user's module with its own ``forward``, hooks) goes to the torch.func path, which refuses
randomness as before.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from runner.losses import LOSSES, Loss
from runner.memory import NOISE_GRADIENT_COPIES
from runner.models import ACTIVATIONS

# Modules that act on each element alone and hold no parameters, buffers or randomness.
ELEMENTWISE = frozenset({*ACTIVATIONS.values(), nn.Identity})


def _leaves(module: nn.Module) -> Iterator[nn.Module] | None:
    """The modules a plain ``nn.Sequential`` calls, in order, nested chains unrolled; None when
    ``module``'s forward is not ``nn.Sequential``'s own or something hooks into it."""
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        return None
    if not isinstance(module, nn.Sequential):
        return iter([module])
    if type(module).forward is not nn.Sequential.forward:
        return None
    out: list[nn.Module] = []
    for child in module:
        inner = _leaves(child)
        if inner is None:
            return None
        out += inner
    return iter(out)


def dense_chain(model: nn.Module, loss_fn: Loss, feature_shape: Sequence[int]) -> list[nn.Module] | None:
    """``model``'s layers in forward order when the closed form applies (see the module
    docstring), else None."""
    if type(loss_fn) not in LOSSES.values():
        return None
    leaves = _leaves(model)
    if leaves is None:
        return None
    layers = list(leaves)
    shape = tuple(feature_shape)
    for layer in layers:
        if type(layer) is nn.Flatten and layer.start_dim == 1 and layer.end_dim == -1:
            shape = (math.prod(shape),)
        elif type(layer) is nn.Linear and shape == (layer.in_features,):
            shape = (layer.out_features,)
        elif type(layer) not in ELEMENTWISE or layer._forward_hooks or layer._forward_pre_hooks:
            return None  # also a Linear fed anything but one feature row per sample
    covered = [p for layer in layers if type(layer) is nn.Linear for p in (layer.weight, layer.bias) if p is not None]
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The same tensors in the same order: G's layout is model.parameters()', and a parameter
    # used twice (tied weights) or held outside the layers must go the general way.
    mine = [p for p in covered if p.requires_grad]
    if not trainable or len(mine) != len(trainable) or any(a is not b for a, b in zip(mine, trainable)):
        return None
    if len({id(p) for p in covered}) != len(covered):
        return None
    return layers


# Elements per sample per linear layer unit of width (its input and output): the layer's
# input a and output z, their float64 copies (two each), δ and its float64 copy, products.
CLOSED_FORM_COPIES = 8


def chunk_rows(layers: list[nn.Module], chunk_size: int) -> int:
    """Samples per chunk: as many as fit in the memory ``chunk_size`` per-sample gradients take
    on the torch.func path (:data:`runner.memory.NOISE_GRADIENT_COPIES` copies of every
    parameter per sample, which the run's memory check counted), at
    :data:`CLOSED_FORM_COPIES` elements per sample per unit of layer width. Fewer, larger
    chunks are fewer small operations: on a small MLP that is most of the cost."""
    linears = [layer for layer in layers if type(layer) is nn.Linear]
    parameters = sum(p.numel() for layer in linears for p in layer.parameters() if p.requires_grad)
    widths = sum(layer.in_features + layer.out_features for layer in linears)
    return chunk_size * max(1, parameters * NOISE_GRADIENT_COPIES // (CLOSED_FORM_COPIES * widths))


def _forward(layers: list[nn.Module], loss_fn: Loss, x: Tensor, y: Tensor) -> list[tuple[nn.Linear, Tensor, Tensor]]:
    """(layer, input a, output gradient δ) of every linear layer, for one chunk of samples.

    The weights are read detached and the layer outputs are the only tensors gradients are
    taken for (``autograd.grad``), so no ``.grad`` is touched and no weight gradient is formed.
    """
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []
    h = x
    with torch.enable_grad():
        for layer in layers:
            if type(layer) is nn.Linear:
                bias = layer.bias.detach() if layer.bias is not None else None
                inputs.append(h.detach())
                h = F.linear(h, layer.weight.detach(), bias)
                if not h.requires_grad:  # the first layer: its output is where the graph starts
                    h.requires_grad_(True)
                outputs.append(h)
            else:
                h = layer(h)
        deltas = torch.autograd.grad(loss_fn.per_sample(h, y).sum(), outputs)
    linears = [layer for layer in layers if type(layer) is nn.Linear]
    return list(zip(linears, inputs, deltas))


def dense_full_gradient(layers: list[nn.Module], loss_fn: Loss, chunks: Iterator[tuple[Tensor, Tensor, Tensor | None]], n: int) -> tuple[Tensor, Tensor]:
    """(G flat in ``model.parameters()`` order, tr(Σ) with 1/n), float64, from ``chunks`` of the
    training set (all ``n`` samples)."""
    total: Tensor | None = None  # Σ_i g_i, flat: Σ_i δ_i a_iᵀ and Σ_i δ_i per trainable parameter
    square_sum: Tensor | None = None  # Σ_i |g_i − g_0|²
    shift: list[tuple[Tensor, Tensor]] = []  # per layer: δ_0, a_0 (sample 0's)
    norms0: list[tuple[Tensor, Tensor]] = []  # per layer: |δ_0|², |a_0|²
    for x, y, _labels in chunks:
        per_layer = _forward(layers, loss_fn, x, y)
        first = not shift
        chunk_squares = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        parts: list[Tensor] = []
        for k, (layer, a, delta) in enumerate(per_layer):
            d, a = delta.double(), a.double()
            if first:
                shift.append((d[:1], a[:1]))
            d0, a0 = shift[k]
            # Every dot product by the same expression, so that equal rows of d and a give
            # equal bits (|g_i − g_0|² = 0 exactly for a sample equal to sample 0; where the
            # matrix kernels round a row by the chunk's size, MKL's do, it is then ~1e-17).
            dd, aa = (d * d).sum(1), (a * a).sum(1)  # |δ_i|², |a_i|²
            dd0, aa0 = (d * d0).sum(1), (a * a0).sum(1)  # δ_i·δ_0, a_i·a_0
            if first:
                norms0.append((dd0[:1], aa0[:1]))
            dd00, aa00 = norms0[k]
            if layer.weight.requires_grad:
                # |δ_i a_iᵀ − δ_0 a_0ᵀ|² = |δ_i|²|a_i|² − 2(δ_i·δ_0)(a_i·a_0) + |δ_0|²|a_0|²
                chunk_squares += dd * aa - 2.0 * dd0 * aa0 + dd00 * aa00
                parts.append((d.T @ a).reshape(-1))
            if layer.bias is not None and layer.bias.requires_grad:
                chunk_squares += dd - 2.0 * dd0 + dd00
                parts.append(d.sum(0))
        flat, squares = torch.cat(parts), chunk_squares.sum()
        total = flat if total is None else total + flat
        square_sum = squares if square_sum is None else square_sum + squares
    assert total is not None and square_sum is not None, "no samples"
    gradient = total / n
    g0 = torch.cat(list(_shift_gradient(layers, shift)))
    # (1/n) Σ|g_i − G|² = (1/n) Σ|g_i − g_0|² − |G − g_0|²
    trace = (square_sum / n - (gradient - g0).square().sum()).clamp(min=0.0)
    return gradient, trace


def _shift_gradient(layers: list[nn.Module], shift: list[tuple[Tensor, Tensor]]) -> Iterator[Tensor]:
    """g_0, sample 0's gradient, flat in the layout of G (outer products exact in float64)."""
    linears = [layer for layer in layers if type(layer) is nn.Linear]
    for layer, (d0, a0) in zip(linears, shift):
        if layer.weight.requires_grad:
            yield (d0.T @ a0).reshape(-1)
        if layer.bias is not None and layer.bias.requires_grad:
            yield d0[0]
