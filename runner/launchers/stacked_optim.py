"""One optimizer for K stacked runs: torch's update rules on ``(K, P)`` tensors.

Every member's parameters are one row of a flat ``(K, P)`` buffer, and so are its gradients
and each piece of optimizer state. A step is then one set of kernels for all K runs, each
run with its own hyperparameters (``(K, 1)`` columns broadcast along the row) — K separate
``torch.optim`` instances would cost K times the per-operation overhead this exists to save.

The rules follow torch's single-tensor implementations (``torch/optim/sgd.py``, ``adam.py``,
``rmsprop.py``, ``adagrad.py`` of torch 2.13) operation for operation, so a member's update
equals what its own optimizer would compute up to float rounding. The state converts to and
from each member's real optimizer (:meth:`StackedOptimizer.store` / :meth:`load`), so a
member's checkpoint is the single-run format: a run interrupted fused resumes alone, and back.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer

# Optimizer class name -> the hyperparameters that must agree within a group (they choose
# which code path runs or which state exists); all others are per member.
STRUCTURAL = {
    "SGD": ("nesterov", "maximize", "has_momentum"),
    "Adam": ("amsgrad", "maximize", "decoupled_weight_decay"),
    "AdamW": ("amsgrad", "maximize", "decoupled_weight_decay"),
    "RMSprop": ("centered", "maximize", "has_momentum"),
    "Adagrad": ("maximize",),
}


def structural_key(optimizer: Optimizer) -> tuple[Any, ...] | str:
    """What must agree between two members' optimizers to share a stacked one, or why it cannot."""
    name = type(optimizer).__name__
    if name not in STRUCTURAL or type(optimizer).__module__.split(".")[0] != "torch":
        return f"optimizer {name} has no stacked implementation (fused: SGD, Adam, AdamW, RMSprop, Adagrad)"
    if len(optimizer.param_groups) != 1:
        return "the optimizer has several parameter groups"
    group = {**optimizer.param_groups[0], "has_momentum": optimizer.param_groups[0].get("momentum", 0) != 0}
    return (name, *(group.get(key) for key in STRUCTURAL[name]))


def _column(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


def _column64(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=torch.float64, device=like.device).unsqueeze(1)


class StackedOptimizer:
    """The update of K members' optimizers (same class and structural flags) as one.

    Args:
        optimizers: each member's real optimizer (one parameter group over its model's
            parameters): the source of its hyperparameters and, via :meth:`load`, its state.
        params: the ``(K, P)`` parameter buffer (updated in place).
        grads: the ``(K, P)`` gradient buffer.
        shapes: each parameter's shape, in ``model.parameters()`` order (the row's layout).
    """

    def __init__(self, optimizers: Sequence[Optimizer], params: Tensor, grads: Tensor, shapes: Sequence[torch.Size]):
        self.kind = type(optimizers[0]).__name__
        self.params, self.grads, self.shapes = params, grads, list(shapes)
        groups = [opt.param_groups[0] for opt in optimizers]
        self.flags = groups[0]
        # Hyperparameters in float64, as torch holds them (Python floats); what torch derives
        # from them in Python (1 - beta, step sizes) is derived here in float64 too and rounded
        # to the parameters' dtype once, as torch's kernels round a Python scalar: the updates
        # then match torch's to the last bit wherever the kernels do.
        self.hp64 = {key: _column64([float(g[key]) for g in groups], params) for key in self._per_member_keys()}
        if self.kind in ("Adam", "AdamW"):
            self.hp64["beta1"] = _column64([g["betas"][0] for g in groups], params)
            self.hp64["beta2"] = _column64([g["betas"][1] for g in groups], params)
        self._derive()
        self.lr = _column64([g["lr"] for g in groups], params)
        # Chosen once: without weight decay in any member, the decay term is not computed at all.
        self._decayed = self._coupled_decay if any(g["weight_decay"] != 0 for g in groups) else _unchanged
        self.state: dict[str, Tensor] = {}
        self.steps = 0
        self.load(optimizers)

    def _derive(self) -> None:
        dtype = self.params.dtype
        self.hp = {key: value.to(dtype) for key, value in self.hp64.items()}
        self.one_minus = {key: (1 - value).to(dtype) for key, value in self.hp64.items() if key in ("beta1", "beta2", "alpha", "dampening")}

    def _per_member_keys(self) -> tuple[str, ...]:
        return {
            "SGD": ("momentum", "dampening", "weight_decay"),
            "Adam": ("weight_decay", "eps"),
            "AdamW": ("weight_decay", "eps"),
            "RMSprop": ("alpha", "eps", "weight_decay", "momentum"),
            "Adagrad": ("lr_decay", "weight_decay", "eps", "initial_accumulator_value"),
        }[self.kind]

    # ------------------------------------------------------------------ state <-> real optimizers
    def _state_names(self) -> tuple[str, ...]:
        flags = self.flags
        if self.kind == "SGD":
            return ("momentum_buffer",) if flags["momentum"] != 0 else ()
        if self.kind in ("Adam", "AdamW"):
            return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if flags["amsgrad"] else ())
        if self.kind == "RMSprop":
            return ("square_avg",) + (("momentum_buffer",) if flags["momentum"] > 0 else ()) + (("grad_avg",) if flags["centered"] else ())
        return ("sum",)

    def load(self, optimizers: Sequence[Optimizer]) -> None:
        """Take each member's optimizer state (fresh, or restored from a checkpoint) into the rows."""
        states = [[opt.state.get(p, {}) for p in opt.param_groups[0]["params"]] for opt in optimizers]
        self.steps = 0
        first = states[0][0]
        if "step" in first:
            self.steps = int(first["step"])
        elif self.kind == "SGD" and "momentum_buffer" in first:
            self.steps = 1  # SGD keeps no count: only whether its buffer exists
        self.state = {}
        for name in self._state_names():
            rows = []
            for member in states:
                if name in member[0] and member[0][name] is not None:
                    rows.append(torch.cat([s[name].detach().reshape(-1) for s in member]))
                else:
                    rows.append(torch.zeros(self.params.shape[1], dtype=self.params.dtype))
            self.state[name] = torch.stack(rows).to(self.params.device)
        if self.kind == "Adagrad" and self.steps == 0 and not states[0][0]:
            self.state["sum"] = self.hp["initial_accumulator_value"].expand_as(self.params).clone()

    def store(self, optimizers: Sequence[Optimizer]) -> None:
        """Write the rows back as each member's own optimizer state (its ``state_dict()`` is then
        exactly what that member's single run would checkpoint)."""
        for k, opt in enumerate(optimizers):
            for p, pieces in zip(opt.param_groups[0]["params"], self._split(k)):
                if self.steps == 0 and self.kind != "Adagrad":
                    opt.state.pop(p, None)
                    continue
                state = opt.state[p]
                for name, value in pieces.items():
                    state[name] = value
                if self.kind != "SGD":
                    state["step"] = torch.tensor(float(self.steps))

    def _split(self, k: int) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = [{} for _ in self.shapes]
        for name, rows in self.state.items():
            offset = 0
            for j, shape in enumerate(self.shapes):
                n = shape.numel()
                out[j][name] = rows[k, offset : offset + n].detach().clone().view(shape)
                offset += n
        return out

    def keep(self, members: Tensor) -> None:
        """Continue with the rows ``members`` only (the others stopped: diverged, early stop)."""
        self.hp64 = {key: value.index_select(0, members) for key, value in self.hp64.items()}
        self._derive()
        self.lr = self.lr.index_select(0, members)
        self.state = {key: value.index_select(0, members) for key, value in self.state.items()}

    def rebind(self, params: Tensor, grads: Tensor) -> None:
        self.params, self.grads = params, grads

    # ------------------------------------------------------------------ the update
    def _coupled_decay(self, grad: Tensor, p: Tensor) -> Tensor:
        return grad.addcmul(p, self.hp["weight_decay"])

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        """One update of every row with the learning rates ``lr`` (a float64 ``(K, 1)`` column)."""
        grad = self.grads if not self.flags.get("maximize") else -self.grads
        getattr(self, f"_{self.kind.lower()}")(self.params, grad, lr)
        self.steps += 1

    def _sgd(self, p: Tensor, grad: Tensor, lr: Tensor) -> None:
        hp = self.hp
        grad = self._decayed(grad, p)
        if "momentum_buffer" in self.state:
            buf = self.state["momentum_buffer"]
            if self.steps == 0:
                buf.copy_(grad)
            else:
                buf.mul_(hp["momentum"]).addcmul_(grad, self.one_minus["dampening"])
            grad = grad.addcmul(buf, hp["momentum"]) if self.flags["nesterov"] else buf
        p.addcmul_(grad, lr.to(p.dtype), value=-1)

    def _adam(self, p: Tensor, grad: Tensor, lr: Tensor) -> None:
        hp, state = self.hp, self.state
        step = self.steps + 1
        if self.flags.get("decoupled_weight_decay") or self.kind == "AdamW":
            p.mul_((1 - lr * self.hp64["weight_decay"]).to(p.dtype))
        else:
            grad = self._decayed(grad, p)
        state["exp_avg"].lerp_(grad, self.one_minus["beta1"])
        state["exp_avg_sq"].mul_(hp["beta2"]).addcmul_(grad, grad * self.one_minus["beta2"])
        bias1 = 1 - self.hp64["beta1"] ** step
        bias2_sqrt = (1 - self.hp64["beta2"] ** step).sqrt()
        step_size = (lr / bias1).to(p.dtype)
        second = state["exp_avg_sq"]
        if self.flags["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
            second = state["max_exp_avg_sq"]
        denom = (second.sqrt() / bias2_sqrt.to(p)).add_(hp["eps"])
        p.addcdiv_(state["exp_avg"] * step_size, denom, value=-1)

    _adamw = _adam

    def _rmsprop(self, p: Tensor, grad: Tensor, lr: Tensor) -> None:
        hp, state = self.hp, self.state
        grad = self._decayed(grad, p)
        square_avg = state["square_avg"]
        square_avg.mul_(hp["alpha"]).addcmul_(grad, grad * self.one_minus["alpha"])
        if self.flags["centered"]:
            state["grad_avg"].lerp_(grad, self.one_minus["alpha"])
            avg = square_avg.addcmul(state["grad_avg"], state["grad_avg"], value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(hp["eps"])
        lr = lr.to(p.dtype)
        if "momentum_buffer" in state:
            buf = state["momentum_buffer"]
            buf.mul_(hp["momentum"]).addcdiv_(grad, avg)
            p.addcmul_(buf, lr, value=-1)
        else:
            p.addcdiv_(grad * lr, avg, value=-1)

    def _adagrad(self, p: Tensor, grad: Tensor, lr: Tensor) -> None:
        hp, state = self.hp, self.state
        grad = self._decayed(grad, p)
        clr = (lr / (1 + self.steps * self.hp64["lr_decay"])).to(p.dtype)
        state["sum"].addcmul_(grad, grad, value=1)
        std = state["sum"].sqrt().add_(hp["eps"])
        p.addcdiv_(grad * clr, std, value=-1)


def _unchanged(grad: Tensor, p: Tensor) -> Tensor:
    return grad
