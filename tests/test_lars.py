"""runner.optim.LARS against Algorithm 1 of You, Gitman & Ginsburg (2017), by hand and in NumPy."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from runner.optim import LARS

F64 = torch.float64


def ref_step(w, g, v, *, lr, momentum, weight_decay, trust_coefficient, eps):
    """One LARS update in NumPy float64: returns (new w, new v)."""
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    if w_norm > 0 and g_norm > 0:
        local_lr = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    else:
        local_lr = 1.0
    v = momentum * v + lr * local_lr * (g + weight_decay * w)
    return w - v, v


def test_two_steps_by_hand():
    w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001, eps=0.0)

    w.grad = torch.tensor([0.6, 0.8], dtype=F64)
    opt.step()
    # ||w|| = 5, ||g|| = 1: local_lr = 0.001 * 5 / (1 + 0.01 * 5) = 0.005 / 1.05
    # v = 0.1 * 0.005 / 1.05 * ([0.6, 0.8] + 0.01 * [3, 4]) = [0.0003, 0.0004]
    v1 = [0.0003, 0.0004]
    assert_close(opt.state[w]["momentum_buffer"], torch.tensor(v1, dtype=F64))
    assert_close(w.detach(), torch.tensor([2.9997, 3.9996], dtype=F64))

    w.grad = torch.tensor([0.6, 0.8], dtype=F64)
    opt.step()
    # w = 0.9999 * [3, 4], so ||w|| = 4.9995.
    local_lr = 0.001 * 4.9995 / (1.0 + 0.01 * 4.9995)
    d = [0.6 + 0.01 * 2.9997, 0.8 + 0.01 * 3.9996]
    v2 = [0.9 * v1[i] + 0.1 * local_lr * d[i] for i in range(2)]
    assert_close(opt.state[w]["momentum_buffer"], torch.tensor(v2, dtype=F64))
    assert_close(w.detach(), torch.tensor([2.9997 - v2[0], 3.9996 - v2[1]], dtype=F64))


def test_zero_weight_and_zero_gradient_use_unit_local_lr():
    zero_w = torch.zeros(3, dtype=F64, requires_grad=True)
    zero_g = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    opt = LARS([zero_w, zero_g], lr=0.5, momentum=0.9, weight_decay=0.1)
    zero_w.grad = torch.tensor([1.0, 2.0, -2.0], dtype=F64)
    zero_g.grad = torch.zeros(2, dtype=F64)
    opt.step()
    # ||w|| = 0: v = lr * 1 * (g + wd * 0); the weight moves despite starting at zero.
    assert_close(zero_w.detach(), torch.tensor([-0.5, -1.0, 1.0], dtype=F64))
    # ||g|| = 0: v = lr * 1 * wd * w, plain weight decay.
    assert_close(zero_g.detach(), torch.tensor([1.0 - 0.05, -2.0 + 0.1], dtype=F64))


def _quadratic_grads(params, curvature, shift):
    """g = c * w + s for each parameter, the gradient of sum(c w^2 / 2 + s w)."""
    for p, c, s in zip(params, curvature, shift):
        p.grad = c * p.detach() + s


def test_three_steps_two_groups_against_numpy():
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(4, 3)), np.zeros(3), rng.normal(size=(5,))]
    curvature = [rng.uniform(0.5, 2.0, size=a.shape) for a in init]
    shift = [rng.normal(size=a.shape) for a in init]
    params = [torch.tensor(a, dtype=F64, requires_grad=True) for a in init]
    groups = [
        {"params": params[:2]},  # the weight and its zero-initialised bias
        {"params": params[2:], "lr": 0.5, "momentum": 0.5, "trust_coefficient": 0.02},
    ]
    opt = LARS(groups, lr=0.1, momentum=0.9, weight_decay=0.0005, trust_coefficient=0.001, eps=1e-8)
    settings = [
        dict(lr=0.1, momentum=0.9, weight_decay=0.0005, trust_coefficient=0.001, eps=1e-8),
        dict(lr=0.5, momentum=0.5, weight_decay=0.0005, trust_coefficient=0.02, eps=1e-8),
    ]
    group_of = [0, 0, 1]

    w = [a.copy() for a in init]
    v = [np.zeros_like(a) for a in init]
    for _ in range(3):
        _quadratic_grads(params, [torch.tensor(c) for c in curvature], [torch.tensor(s) for s in shift])
        opt.step()
        for i in range(3):
            g = curvature[i] * w[i] + shift[i]
            w[i], v[i] = ref_step(w[i], g, v[i], **settings[group_of[i]])
        for i in range(3):
            assert_close(params[i].detach(), torch.tensor(w[i]), rtol=1e-12, atol=1e-14)
            assert_close(opt.state[params[i]]["momentum_buffer"], torch.tensor(v[i]), rtol=1e-12, atol=1e-14)
    # The zero bias moved on the first step (unit local lr) and then by the trust ratio.
    assert np.abs(w[1]).min() > 0


def test_lr_changes_between_steps_are_used():
    w = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.1, eps=0.0)
    opt.param_groups[0]["lr"] = 0.5  # what a scheduler does
    w.grad = torch.tensor([0.0, 2.0], dtype=F64)
    opt.step()
    # local_lr = 0.1 * 5 / 2 = 0.25; v = 0.5 * 0.25 * [0, 2]
    assert_close(w.detach(), torch.tensor([3.0, 3.75], dtype=F64))


def test_closure_and_missing_gradients():
    w = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    frozen = torch.ones(2, dtype=F64, requires_grad=True)
    opt = LARS([w, frozen], lr=0.1, momentum=0.0, weight_decay=0.0, trust_coefficient=1.0, eps=0.0)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert_close(loss, torch.tensor(2.0, dtype=F64))
    # g = 2w, so local_lr = ||w|| / ||2w|| = 0.5 and the step is 0.1 * 0.5 * 2w = 0.1 w.
    assert_close(w.detach(), torch.tensor([0.9, -0.9], dtype=F64))
    assert_close(frozen.detach(), torch.ones(2, dtype=F64))
    assert frozen not in opt.state
    assert opt.step() is None


def _train(model, opt, steps, gen_seed):
    gen = torch.Generator().manual_seed(gen_seed)
    for _ in range(steps):
        x = torch.randn(8, 3, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = LARS(model.parameters(), lr=0.2, trust_coefficient=0.01)
    _train(model, opt, 3, gen_seed=1)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    clone = copy.deepcopy(model)
    for p in clone.parameters():
        p.data.normal_()  # prove the load, not the copy, restores everything
    clone.load_state_dict(saved["model"])
    clone_opt = LARS(clone.parameters(), lr=0.2, trust_coefficient=0.01)
    clone_opt.load_state_dict(saved["opt"])
    assert all("momentum_buffer" in s for s in clone_opt.state.values())
    assert len(clone_opt.state) == len(list(clone.parameters()))

    _train(model, opt, 3, gen_seed=2)
    _train(clone, clone_opt, 3, gen_seed=2)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)


def test_step_runs_on_meta_tensors():
    """Meta tensors carry no data, so any host sync (.item(), if on a value) would raise."""
    w = torch.empty(4, 3, device="meta", requires_grad=True)
    w.grad = torch.empty(4, 3, device="meta")
    opt = LARS([w])
    opt.step()
    assert opt.state[w]["momentum_buffer"].device.type == "meta"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("lr", -0.1),
        ("lr", math.nan),
        ("lr", math.inf),
        ("momentum", -0.5),
        ("weight_decay", -1e-4),
        ("trust_coefficient", 0.0),
        ("trust_coefficient", -0.001),
        ("eps", -1e-8),
    ],
)
def test_invalid_arguments_raise(name, value):
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=f"{name}.*{value}"):
        LARS([w], **{name: value})
    with pytest.raises(ValueError, match=f"{name}.*{value}"):
        LARS([{"params": [w], name: value}])


def test_non_numeric_argument_raises():
    with pytest.raises(ValueError, match="momentum"):
        LARS([torch.zeros(2, requires_grad=True)], momentum="0.9")


def test_defaults_and_docstring():
    opt = LARS([torch.zeros(2, requires_grad=True)])
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 0.0005)
    assert (group["trust_coefficient"], group["eps"]) == (0.001, 1e-8)
    assert "Large Batch" in LARS.__doc__ and "trust_coefficient * ||w||" in LARS.__doc__
