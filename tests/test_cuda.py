"""GPU path: same contract on CUDA, and no host-device synchronisation inside an epoch.

Deselected by default (marker ``cuda``); skipped cleanly where CUDA is absent.
Run on a GPU machine with: ``python -m pytest -m cuda``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from runner.loggers import MemoryLogger
from runner.loop import batch_slices, epoch_order, train_one_epoch
from runner.progress import NoProgress
from runner.train import build_run, fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "lars"])
@pytest.mark.parametrize("batch_size", [1, 32, "full"])
def test_an_epoch_on_cuda_never_waits_for_the_device(optimizer, batch_size, make_cfg):
    run = build_run(make_cfg("device=cuda", f"optimizer={optimizer}", f"batch_size={batch_size}", "dataset=digits"))
    slices = batch_slices(len(run.train), run.batch_size, drop_last=False)[:300]
    order = epoch_order(run.order_generator, len(run.train), True, run.device)
    source = run.train.source(order, run.bounded_memory)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any .item()/.cpu()/sync inside raises
    try:
        trace = train_one_epoch(run.step, run.optimizer, run.iteration_scheduler, source, slices, NoProgress())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trace.losses.device.type == "cuda" and len(trace.losses) == len(slices)
    assert torch.isfinite(trace.losses).all()


def test_cuda_run_matches_the_cpu_contract(make_cfg):
    run = build_run(make_cfg("device=cuda", "dataset=iris", "epochs=2", "batch_size=16"))
    logger = MemoryLogger()
    summary = fit(run, logger)
    assert summary["device"].startswith("cuda") and summary["iterations"] == 16
    assert [s for s, _ in logger.scalars["loss/train_iter"]] == list(range(16))


# ------------------------------------------------------------------ cuda_graph=true
def _losses_and_weights(run):
    logger = MemoryLogger()
    summary = fit(run, logger)
    assert summary["status"] == "done"
    losses = torch.tensor([v for _, v in logger.scalars["loss/train_iter"]], dtype=torch.float64)
    return losses, [p.detach().clone() for p in run.model.parameters()]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "lars"])
def test_the_captured_update_gives_the_losses_of_the_eager_one(optimizer, make_cfg):
    # 1438 digits at batch 32: 44 full batches (3 warm-up, 1 capture, 40 replays) and a
    # partial one (eager) per epoch; two epochs, so replays continue after a partial batch.
    overrides = ("device=cuda", "cuda_graph=true", f"optimizer={optimizer}", "batch_size=32", "epochs=2", "dataset=digits")
    graphed = build_run(make_cfg(*overrides))
    eager = build_run(make_cfg(*overrides))
    eager = replace(eager, step=eager.step.eager)  # same optimizer settings (capturable), no graph
    losses_graphed, weights_graphed = _losses_and_weights(graphed)
    losses_eager, weights_eager = _losses_and_weights(eager)
    assert len(losses_graphed) == 2 * 45
    torch.testing.assert_close(losses_graphed, losses_eager)
    for a, b in zip(weights_graphed, weights_eager):
        torch.testing.assert_close(a, b)


def test_replaying_the_captured_update_never_waits_for_the_device(make_cfg):
    run = build_run(make_cfg("device=cuda", "cuda_graph=true", "optimizer=adam", "batch_size=32", "dataset=digits"))
    order = epoch_order(run.order_generator, len(run.train), True, run.device)
    source = run.train.source(order, run.bounded_memory)
    slices = batch_slices(len(run.train), run.batch_size, drop_last=False)
    train_one_epoch(run.step, run.optimizer, run.iteration_scheduler, source, slices[:5], NoProgress())  # warm-up + capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trace = train_one_epoch(run.step, run.optimizer, run.iteration_scheduler, source, slices[5:], NoProgress())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(trace.losses) == len(slices) - 5 and torch.isfinite(trace.losses).all()
