"""The instruments on CUDA: no host-device synchronisation inside an epoch, and the same numbers
as on the CPU. Deselected by default (marker ``cuda``); skipped cleanly where CUDA is absent."""

from __future__ import annotations

import pytest
import torch

from runner.loggers import MemoryLogger
from runner.loop import epoch_order, train_one_epoch
from runner.progress import NoProgress
from runner.train import build_run, fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("batch_size", [1, 32])
def test_an_instrumented_epoch_never_waits_for_the_device(batch_size, make_cfg):
    run = build_run(make_cfg("device=cuda", "dataset=digits", f"batch_size={batch_size}", "noise.every=7", "trajectory.record=true"))
    slices = run.slices[:100]
    source = run.train.source(epoch_order(run.order_generator, len(run.train), True, run.device), run.bounded_memory)
    run.instruments.start_segment(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any .item()/.cpu()/sync inside raises
    try:
        trace = train_one_epoch(run.step, run.optimizer, run.iteration_scheduler, source, slices, NoProgress())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    logger = MemoryLogger()
    run.instruments.end_segment(logger, len(slices))
    assert [s for s, _ in logger.scalars["noise/b_simple"]] == list(range(0, len(slices), 7))
    assert len(run.instruments.members[0].steps) == len(slices)  # the path: one point per update
    assert torch.isfinite(trace.losses).all()


def test_noise_on_cuda_matches_the_cpu(make_cfg):
    values = {}
    for device in ("cpu", "cuda"):
        run = build_run(make_cfg(f"device={device}", "dataset=linreg", "dataset.d=3", "model=linear", "loss=mse", "noise.every=4", "epochs=2"))
        logger = MemoryLogger()
        fit(run, logger)
        values[device] = {tag: logger.scalars[tag] for tag in logger.scalars if tag.startswith("noise/")}
    for tag, points in values["cpu"].items():
        assert [s for s, _ in values["cuda"][tag]] == [s for s, _ in points]
        assert [v for _, v in values["cuda"][tag]] == pytest.approx([v for _, v in points], rel=1e-4), tag
