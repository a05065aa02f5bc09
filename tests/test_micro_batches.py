"""Micro-batching: the accumulated update equals the one-shot update, in bounded memory."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from runner.batches import PermutedCopy, PermutedGather
from runner.loggers import MemoryLogger
from runner.loop import FlatGradients, accumulating_train_step, train_step
from runner.train import build_run, fit


@pytest.mark.parametrize("loss", ["mse", "mae", "sparse_categorical_crossentropy", "categorical_hinge", "kl_divergence"])
@pytest.mark.parametrize("micro", [1, 7, 50, 64])  # 7 and 50 leave unequal last chunks of a 120-sample batch
def test_accumulated_update_equals_the_one_shot_update_in_float64(loss, micro, make_cfg):
    torch.set_default_dtype(torch.float64)
    try:
        run = build_run(make_cfg("dataset=iris", f"loss={loss}", "regime=bgd", "model.hidden=[16]"))
        model = run.model.double()
        X, Y = run.train.X.double(), run.train.Y.double() if run.train.Y.is_floating_point() else run.train.Y
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
        whole = slice(0, len(X))
        results = []
        for chunked in (False, True):
            clone = copy.deepcopy(model)
            grads = FlatGradients(list(clone.parameters()))
            opt = torch.optim.SGD(clone.parameters(), lr=0.1)
            if chunked:
                loss_value, norm = accumulating_train_step(clone, run.loss_fn, opt, grads, PermutedGather(X, Y, order), whole, micro)
            else:
                loss_value, norm = train_step(clone, run.loss_fn, opt, grads, PermutedCopy(X, Y, order), whole)
            results.append((loss_value, norm, grads.flat.clone(), [p.detach().clone() for p in clone.parameters()]))
        (l1, n1, g1, w1), (l2, n2, g2, w2) = results
        assert_close(l2, l1, rtol=1e-6, atol=1e-12)
        assert_close(n2, n1, rtol=1e-6, atol=1e-12)
        assert_close(g2, g1, rtol=1e-6, atol=1e-12)
        for a, b in zip(w1, w2):
            assert_close(b, a, rtol=1e-6, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_micro_batched_runs_log_the_same_curve(make_cfg):
    base = ("dataset=iris", "batch_size=40", "epochs=3")
    logs = []
    for extra in ((), ("micro_batch_size=16",)):
        run = build_run(make_cfg(*base, *extra))
        logger = MemoryLogger()
        summary = fit(run, logger)
        logs.append((summary, logger))
    (s1, l1), (s2, l2) = logs
    assert s1["iterations"] == s2["iterations"] == 9  # micro-batches are not iterations
    assert_close([v for _, v in l2.scalars["loss/train_iter"]], [v for _, v in l1.scalars["loss/train_iter"]], rtol=1e-5, atol=1e-6)
    assert s2["train_loss"] == pytest.approx(s1["train_loss"], rel=1e-5)


def test_sources_serve_the_same_batches():
    X, Y = torch.arange(20.0).reshape(10, 2), torch.arange(10)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    for positions in (slice(0, 3), slice(3, 10), slice(9, 10)):
        a, b = PermutedCopy(X, Y, order).take(positions), PermutedGather(X, Y, order).take(positions)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(a[1], order[positions])
