"""How instruments attach to a run: around the step function, chosen once.

With every instrument off the step function is returned unchanged (nothing runs per
iteration). With some on, :meth:`Instruments.wrap` returns a step that first lets each
instrument look at the weights the update starts from (``before_update(iteration)``), then
runs the update itself, untouched. Per-iteration values stay on the device; the epoch loop
calls :meth:`Instruments.end_segment` where it moves the segment's losses to the host, and
the checkpoint carries :meth:`Instruments.state_dict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from runner.batches import Split
from runner.losses import Loss
from runner.memory import check_host_fits


class Instrument(Protocol):
    key: str

    def before_update(self, iteration: int) -> None: ...

    def flush(self, logger: Any, end: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def finish(self, out: Path, logger: Any, summary: dict[str, Any]) -> None: ...


class Instruments:
    """The run's instruments (none, by default) and the global iteration they are at."""

    def __init__(self, members: list[Instrument] | None = None):
        self.members = list(members or [])
        self.iteration = 0

    def wrap(self, step: Callable) -> Callable:
        """``step`` itself when no instrument is on; else ``step`` after each ``before_update``."""
        if not self.members:
            return step

        def instrumented_step(*args: Any) -> Any:
            for member in self.members:
                member.before_update(self.iteration)
            result = step(*args)
            self.iteration += 1
            return result

        return instrumented_step

    def start_segment(self, iteration: int) -> None:
        """The global iteration the next update is (segments start at checkpoint boundaries)."""
        self.iteration = iteration

    def end_segment(self, logger: Any, end: int) -> None:
        """Bring the segment's values to the host and log them; ``end``: the first iteration not
        kept (a diverged segment's updates after the first non-finite loss are dropped)."""
        for member in self.members:
            member.flush(logger, end)

    def state_dict(self) -> dict[str, Any]:
        return {member.key: member.state_dict() for member in self.members}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for member in self.members:
            if member.key in (state or {}):
                member.load_state_dict(state[member.key])

    def finish(self, out: Path, logger: Any, summary: dict[str, Any]) -> None:
        """At the end of the run (its event file still open)."""
        for member in self.members:
            member.finish(out, logger, summary)


def make_instruments(
    cfg: DictConfig, model: nn.Module, loss_fn: Loss, optimizer: Optimizer, train: Split, total_iterations: int | None
) -> Instruments:
    """The instruments ``cfg`` turns on (``noise.every > 0``, ``trajectory.record``).

    ``total_iterations``: the run's planned updates (None for a time budget), for refusing a
    recorded path that cannot fit in memory before the run starts.
    """
    members: list[Instrument] = []
    if cfg.trajectory.record:
        from runner.instruments.trajectory import PathRecorder, path_bytes, surface_key

        t = cfg.trajectory
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        needed = path_bytes(n_params, total_iterations, t.every)
        check_host_fits("trajectory.every", t.every, needed, f"a recorded path ({n_params:,} parameters per point)")
        members.append(
            PathRecorder(
                model, loss_fn, train, t.every, directions=t.directions, resolution=t.resolution, margin=t.margin,
                chunk_size=cfg.eval_batch_size, seed=cfg.seed, surface=surface_key(cfg),
            )
        )
    if cfg.noise.every > 0:
        from runner.instruments.noise import GradientNoise

        members.append(GradientNoise(model, loss_fn, train, optimizer, cfg.noise.every, cfg.noise.micro_batch_size))
    return Instruments(members)
