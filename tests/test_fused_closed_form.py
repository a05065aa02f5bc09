"""The fused group's fast paths equal what they replace: the hand-written backward
(:class:`ClosedFormStep`) each member's own torch update, the stacked evaluation each member's
:func:`runner.loop.evaluate`, and a checkpoint serialised by the writer's thread the one
serialised at submit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from runner.batches import InMemorySplit
from runner.checkpoint import CheckpointWriter, LAST
from runner.launchers.stacked import FusedStep, StackedModel, StackedSplit, stacked_evaluate
from runner.launchers.stacked_grad import ClosedFormStep, closed_form
from runner.launchers.stacked_optim import StackedOptimizer
from runner.losses import MeanSquaredError, SparseCategoricalCrossentropy
from runner.loop import evaluate

ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.Sigmoid, lambda: nn.LeakyReLU(0.1)]


def chain(activation, flatten: bool) -> nn.Sequential:
    return nn.Sequential(*([nn.Flatten()] if flatten else []), nn.Linear(6, 5), activation(), nn.Linear(5, 4), activation(), nn.Linear(4, 3))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss_fn, batch, clip", [(SparseCategoricalCrossentropy(), 1, None), (SparseCategoricalCrossentropy(), 4, 0.3), (MeanSquaredError(), 3, None)])
def test_closed_form_updates_equal_each_members_own_torch_update(activation, loss_fn, batch, clip):
    torch.manual_seed(0)
    K, steps = 3, 6
    flatten = batch == 4
    models = [chain(activation, flatten) for _ in range(K)]
    singles = [copy.deepcopy(m) for m in models]
    lrs = [0.05, 0.2, 0.5]
    shape = (2, 3) if flatten else (6,)
    x = torch.randn(K, steps * batch, *shape)
    if isinstance(loss_fn, SparseCategoricalCrossentropy):
        y = torch.randint(0, 3, (K, steps * batch))
    else:
        y = torch.randn(K, steps * batch, 3)
    stacked = StackedModel(models)
    optimizer = StackedOptimizer([torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(models, lrs)], stacked.flat, stacked.grad, stacked.shapes)
    step = ClosedFormStep(stacked, loss_fn, optimizer, None if clip is None else torch.full((K, 1), clip))
    assert closed_form(step)
    fused_losses, fused_norms = [], []
    for i in range(steps):
        rows = slice(i * batch, (i + 1) * batch)
        loss, norm = step(x[:, rows], y[:, rows], optimizer.lr)
        fused_losses.append(loss)
        fused_norms.append(norm)
    for k, model in enumerate(singles):
        single = torch.optim.SGD(model.parameters(), lr=lrs[k], momentum=0.9)
        for i in range(steps):
            rows = slice(i * batch, (i + 1) * batch)
            single.zero_grad()
            loss = loss_fn(model(x[k, rows]), y[k, rows])
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip is not None else float("inf"))
            single.step()
            torch.testing.assert_close(fused_losses[i][k], loss.detach(), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(fused_norms[i][k], norm, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(stacked.flat[k], torch.nn.utils.parameters_to_vector(model.parameters()).detach(), atol=1e-6, rtol=1e-5)


def test_a_model_with_an_activation_without_a_closed_form_keeps_autograd():
    models = [nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3)) for _ in range(2)]
    stacked = StackedModel.__new__(StackedModel)  # GELU is not stackable by batched matmuls: build the ops by hand
    stacked.template = list(models[0])
    stacked.shapes = [p.shape for p in models[0].parameters()]
    stacked._bind(torch.stack([torch.nn.utils.parameters_to_vector(m.parameters()).detach() for m in models]))
    optimizer = StackedOptimizer([torch.optim.SGD(m.parameters(), lr=0.1) for m in models], stacked.flat, stacked.grad, stacked.shapes)
    assert not closed_form(FusedStep(stacked, SparseCategoricalCrossentropy(), optimizer, None))


@pytest.mark.parametrize("classification", [True, False])
def test_stacked_evaluation_equals_each_members_own(classification):
    torch.manual_seed(1)
    K, n = 3, 23
    models = [chain(nn.Tanh, False) for _ in range(K)]
    loss_fn = SparseCategoricalCrossentropy() if classification else MeanSquaredError()
    splits = []
    for _ in range(K):
        X = torch.randn(n, 6)
        labels = torch.randint(0, 3, (n,)) if classification else None
        Y = labels if classification else torch.randn(n, 3)
        splits.append(InMemorySplit(X, Y, labels))
    loss, acc = stacked_evaluate(StackedModel(models), loss_fn, StackedSplit.of(splits), batch_size=5)
    for k, (model, split) in enumerate(zip(models, splits)):
        want_loss, want_acc = evaluate(model, loss_fn, split, 7)
        torch.testing.assert_close(loss[k], want_loss, atol=1e-6, rtol=1e-6)
        if classification:
            torch.testing.assert_close(acc[k], want_acc)
        else:
            assert acc is None and want_acc is None


def test_a_snapshot_serialised_by_the_writer_thread_is_the_checkpoint_serialised_at_submit(tmp_path):
    state = {"model": nn.Linear(3, 2).state_dict(), "step": 7, "nested": {"a": [1.5, torch.arange(4)]}}
    for name, snapshot in (("now", False), ("later", True)):
        with CheckpointWriter(tmp_path / name) as writer:
            writer.submit(state, snapshot=snapshot)
    now, later = (torch.load(tmp_path / name / LAST, weights_only=True) for name in ("now", "later"))
    assert now.keys() == later.keys() and now["step"] == later["step"] == 7
    for key in state["model"]:
        torch.testing.assert_close(later["model"][key], now["model"][key])
    assert later["nested"]["a"][0] == 1.5
    torch.testing.assert_close(later["nested"]["a"][1], torch.arange(4))
