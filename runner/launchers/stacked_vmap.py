"""K copies of any module stacked by ``torch.func``: ``vmap(functional_call)`` over a leading member dimension.

The runner's own models are chains of Linear layers and stack as batched matmuls
(:class:`runner.launchers.stacked.StackedModel`); a user's model (``model=custom``) may be any
``nn.Module``. Its members' parameters keep the same layout — one row of a flat ``(K, P)``
buffer each, in ``model.parameters()`` order, with a ``(K, P)`` gradient buffer — and each
parameter is a ``(K, *shape)`` view of it; the forward is the module's own ``forward`` called
through :func:`torch.func.functional_call` under :func:`torch.func.vmap`. Stacking is exact only
for a forward that is a pure function of parameters and input, so :func:`vmap_refusal` refuses
a model with buffers (BatchNorm's running statistics change in forward) or one that draws
random numbers (dropout: ``randomness="error"``); such a job runs alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from runner.errors import first_line
from runner.launchers.stacked import StackedModel, quiet_layout_warning


def vmap_refusal(model: nn.Module, sample: Tensor) -> str | None:
    """Why ``model`` cannot be stacked by ``vmap(functional_call)``, or None when it can.

    ``sample``: a batch of the training inputs; a trial forward of two members on it finds
    what only running the forward can (random numbers drawn, an op vmap cannot batch).
    """
    name = type(model).__name__
    if any(True for _ in model.buffers()):
        return f"model {name} has buffers (state changed by forward, e.g. BatchNorm), which vmap does not stack"
    if any(not p.requires_grad for p in model.parameters()):
        return f"model {name} has frozen parameters"
    params = {n: p.detach().unsqueeze(0).expand(2, *p.shape) for n, p in model.named_parameters()}
    try:
        with torch.no_grad():
            vmap(lambda p, x: functional_call(model, p, (x,)), randomness="error")(params, sample.unsqueeze(0).expand(2, *sample.shape))
    except Exception as err:  # noqa: BLE001 - any failure means: train it alone, as a single run does
        return f"model {name} cannot be stacked by vmap(functional_call) ({first_line(err)})"
    return None


class VmapStackedModel(StackedModel):
    """:class:`StackedModel`'s interface (``flat``, ``grad``, ``shapes``, ``write_into``, ``keep``,
    ``(K, B, ...) -> (K, B, outputs)``) for any module, through ``vmap(functional_call)``."""

    def __init__(self, models: Sequence[nn.Module]):
        quiet_layout_warning()
        self.base = models[0]
        self.names = [name for name, _ in models[0].named_parameters()]
        self.shapes = [p.shape for p in models[0].parameters()]
        device = next(models[0].parameters()).device
        rows = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]
        self._forward = vmap(self._member_forward, randomness="error")
        self._bind(torch.stack(rows).to(device))

    def _member_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, params, (x,))

    def _bind(self, flat: Tensor) -> None:
        """Make ``flat`` the weights (and a fresh gradient buffer) and rebuild the parameter views."""
        self.flat = flat.contiguous()
        self.grad = torch.zeros_like(self.flat)
        K = self.flat.shape[0]
        self.params: list[Tensor] = []
        self.named: dict[str, Tensor] = {}
        offset = 0
        for name, shape in zip(self.names, self.shapes):
            n = shape.numel()
            leaf = self._leaf(offset, n, lambda t, shape=shape: t.view(K, *shape))
            offset += n
            self.params.append(leaf)
            self.named[name] = leaf

    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(self.named, x)


def stacked_model(models: Sequence[nn.Module]) -> Any:
    """The batched-matmul stack for a chain of Linear layers (faster), else the vmap stack."""
    from runner.launchers.stacked import stackable_layers

    return StackedModel(models) if not isinstance(stackable_layers(models[0]), str) else VmapStackedModel(models)
