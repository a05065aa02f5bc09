"""Steps to target, measured exactly: the training loss after update s on a geometric grid of s.

A run of the scaling study (``scaling.target`` set) evaluates its loss on the whole training
set at the weights after update s for every s of the grid

    s_0 = 1,   s_{k+1} = max(s_k + 1, floor(s_k * ratio))

(every update while the grid is denser than the integers, then a factor ≤ ``ratio`` apart)
and at every epoch end, logs it under :data:`TAG` with the iteration as step, and stops at
the first evaluation where it is ≤ the target. So S, the updates to the target, is known
within a factor ``ratio`` whatever the batch size. The loops only end their segments at the
grid's points (:meth:`TargetProbe.clip`) and call :meth:`TargetProbe.reached` there: the
inner loop stays free of checks.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

import numpy as np
import torch

from runner.instruments.noise import full_gradient
from runner.loop import evaluate

log = logging.getLogger("runner.epochs")

TAG = "scaling/train_full_by_update"  # the target metric, step = the update after which it was evaluated
B_SIMPLE_TAG = "scaling/b_simple_by_update"  # B_simple at those weights (powers of two and the target's)
STOP_REASON = "target_reached"


def grid_points(ratio: float, last: int) -> list[int]:
    """The grid's updates up to ``last`` (inclusive)."""
    points = [1]
    while points[-1] < last:
        points.append(max(points[-1] + 1, int(points[-1] * ratio)))
    return points


class TargetProbe:
    """Where segments must end, and the target check at those ends, for one run's config."""

    def __init__(self, target: float, ratio: float, noise_chunk: int, last: int):
        self.target, self.noise_chunk = target, noise_chunk
        self.points = grid_points(ratio, max(last, 1))
        self._set = set(self.points)

    def clip(self, end: int, position: int, iteration: int) -> int:
        """A segment end (a position in the epoch) no later than the next grid point."""
        k = bisect.bisect_right(self.points, iteration)
        if k == len(self.points):
            return end
        return min(end, position + self.points[k] - iteration)

    def on_grid(self, iteration: int) -> bool:
        return iteration in self._set

    def reached(self, run: Any, logger: Any, iteration: int, loss: float | None = None) -> bool:
        """Evaluate (unless ``loss`` is given: an epoch end's value), log, and say whether the
        target is reached. B_simple is measured at powers of two and where the target is reached."""
        hit, loss = self.measure(run, logger, iteration, loss)
        if hit:
            self.announce(loss, iteration)
        return hit

    def measure(self, run: Any, logger: Any, iteration: int, loss: float | None = None) -> tuple[bool, float]:
        """:meth:`reached` without its log line (the TensorBoard values are written): whether
        the target is reached, and the loss. A fused group switches to a member's log file
        only for the members that have a line to write."""
        if loss is None:
            with torch.no_grad():
                loss = float(evaluate(run.model, run.loss_fn, run.train, run.cfg.eval_batch_size)[0])
        logger.log(TAG, loss, iteration)
        hit = float(np.float32(loss)) <= self.target  # as the event file holds it: the analysis finds the same S
        if self.noise_chunk and (hit or iteration & (iteration - 1) == 0):
            full = full_gradient(run.model, run.loss_fn, run.train, self.noise_chunk)
            logger.log(B_SIMPLE_TAG, float(full.b_simple), iteration)
        return hit, loss

    def announce(self, loss: float, iteration: int) -> None:
        log.info("Target reached: whole-training-set loss %.4g <= %g after update %d; stopping.", loss, self.target, iteration)


def target_probe(run: Any) -> TargetProbe | None:
    """The run's probe, or None when ``scaling.target`` is not set (the study is off)."""
    cfg = run.cfg.scaling
    if cfg.target is None:
        return None
    last = run.plan.total_iterations or 0
    return TargetProbe(float(cfg.target), float(cfg.ratio), int(cfg.noise_micro_batch_size), last)
