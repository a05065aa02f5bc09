"""How long a run trains: a plan of iterations per epoch, from ``budget`` and ``budget_amount``.

A fair comparison of batch sizes needs a common currency. ``budget=epochs`` gives every
run the same passes over the data; ``samples`` the same number of examples processed;
``updates`` the same number of parameter updates; ``seconds`` the same training time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from runner.errors import ConfigError
from runner.memory import check_host_fits

UNITS = ("epochs", "samples", "updates", "seconds")


@dataclass(frozen=True)
class Plan:
    """``iterations[e]`` updates in epoch ``e+1`` (the last may be partial); ``seconds`` caps training time.

    A time budget cannot be planned in updates: it has ``iterations=None`` (full epochs
    until the clock runs out) and a finite ``seconds``.
    """

    iterations: tuple[int, ...] | None
    seconds: float = math.inf
    # Where the plan cannot meet the budget exactly (``samples``: updates use whole batches),
    # what it does instead, in words: the run's log and summary.json state it.
    deviation: str | None = None

    @property
    def total_iterations(self) -> int | None:
        return sum(self.iterations) if self.iterations is not None else None


# One slot of the plan's tuple per epoch.
PLAN_BYTES_PER_EPOCH = 8


def _check_plan_fits(key: str, value: float, epochs: int) -> None:
    """The plan holds one entry per epoch: refuse a length whose plan alone exceeds memory."""
    check_host_fits(key, value, epochs * PLAN_BYTES_PER_EPOCH, f"a run length ({epochs:,} epochs)")


def make_plan(budget: str, amount: float | None, epochs: int, batch_sizes: list[int]) -> Plan:
    """Plan a run whose epochs consist of batches of ``batch_sizes`` (one epoch's worth).

    ``samples``: stop at the first update by which at least ``amount`` samples were
    processed (``Plan.deviation`` says by how many it goes over). ``updates``: exactly ``amount`` updates.
    """
    if budget not in UNITS:
        raise ConfigError("budget", budget, f"one of {', '.join(UNITS)}")
    if budget == "epochs":
        if amount is not None:
            raise ConfigError("budget_amount", amount, "null with budget=epochs (the length is `epochs`)")
        _check_plan_fits("epochs", epochs, epochs)
        return Plan(iterations=(len(batch_sizes),) * epochs)
    if amount is None or not (math.isfinite(amount) and amount > 0):
        raise ConfigError("budget_amount", amount, f"a number > 0: how many {budget} to train for")
    if budget == "seconds":
        return Plan(iterations=None, seconds=float(amount))
    if budget == "updates":
        if amount != int(amount):
            raise ConfigError("budget_amount", amount, "a whole number of updates")
        full, rest = divmod(int(amount), len(batch_sizes))
        _check_plan_fits("budget_amount", amount, full + 1)
        return Plan(iterations=(len(batch_sizes),) * full + ((rest,) if rest else ()))
    per_epoch = sum(batch_sizes)
    full, rest = divmod(math.ceil(amount), per_epoch)
    _check_plan_fits("budget_amount", amount, full + 1)
    partial, seen = 0, 0
    while seen < rest:
        seen += batch_sizes[partial]
        partial += 1
    planned = full * per_epoch + seen
    deviation = None
    if planned != amount:
        deviation = (
            f"budget=samples budget_amount={amount:g}: the run processes {planned:,} samples ({planned - amount:g} more), "
            f"because an update uses a whole batch (batch size {max(batch_sizes):,}); it stops at the first update that reaches the amount"
        )
    return Plan(iterations=(len(batch_sizes),) * full + ((partial,) if partial else ()), deviation=deviation)
