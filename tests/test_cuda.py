"""GPU path: same contract on CUDA, and no host-device synchronisation inside an epoch.

Deselected by default (marker ``cuda``); skipped cleanly where CUDA is absent.
Run on a GPU machine with: ``python -m pytest -m cuda``.
"""

from __future__ import annotations

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
