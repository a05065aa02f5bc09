"""Learning-rate schedules: the lr each step gets, against the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from runner import schedulers


def lrs(factory, steps: int, lr: float = 1.0, **hparams) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = factory(opt, total_steps=steps, **hparams)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_constant():
    assert lrs(schedulers.constant, 4, lr=0.3) == [0.3] * 4


def test_step_and_exponential():
    assert_close(lrs(schedulers.step, 5, step_size=2, gamma=0.5), [1.0, 1.0, 0.5, 0.5, 0.25])
    assert_close(lrs(schedulers.exponential, 4, gamma=0.9), [1.0, 0.9, 0.81, 0.729])


def test_cosine_spans_the_whole_run():
    seen = lrs(schedulers.cosine, 8, lr=2.0, eta_min=0.2)
    expected = [0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert_close(seen, expected)


def test_warmup_cosine_rises_linearly_then_decays_to_eta_min():
    seen = lrs(schedulers.warmup_cosine, 10, lr=1.0, warmup_steps=4, eta_min=0.1)
    assert_close(seen[:4], [0.25, 0.5, 0.75, 1.0])
    decay = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert_close(seen[4:], decay)


def test_plateau_cuts_the_lr_when_the_loss_stalls():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = schedulers.plateau(opt, total_steps=10, factor=0.5, patience=1, threshold=0.0, min_lr=0.0)
    for loss in (1.0, 0.9, 0.9, 0.9):
        sched.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
