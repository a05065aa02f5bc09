"""The epoch loop of a fused group: :func:`runner.epochs.run_epochs` for K members at once.

Each member is a complete single run — its own :class:`runner.train.Run` (model, real
optimizer and scheduler, order generator), :class:`TrainState`, TensorBoard logger and run
directory — and everything but the updates and the evaluation goes through the single run's
own functions: the epoch-level logging (:func:`runner.epochs._finish_epoch`), logging
(``_log_iterations``), early stopping, checkpoints (:func:`runner.attempts.checkpoint_payload`,
the single-run format), the summary. The updates are stacked (:mod:`runner.launchers.stacked`),
and so is the epoch-0 and epoch-end evaluation: every member's training and validation loss
(and accuracy) in one forward per chunk, one device→host transfer. So each member's files are those its
single run writes, and a member that diverges or stops early is written out then and leaves
the stack while the others go on.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from runner import tags
from runner.checkpoint import CheckpointWriter
from runner.epochs import (
    CheckpointClock,
    StopFlag,
    TrainState,
    _finish_epoch,
    _log_initial,
    epoch_train_loss,
    generalization_gap,
    _log_iterations,
    _no_longer_improving,
    _segment_end,
    summary_of,
)
from runner.launchers.stacked import FusedStep, StackedData, StackedSplit, run_fused_segment, stacked_evaluate
from runner.launchers.stacked_grad import ClosedFormStep, closed_form
from runner.launchers.stacked_vmap import stacked_model
from runner.launchers.stacked_optim import StackedOptimizer
from runner.loggers import TensorBoardLogger
from runner.loop import EpochTrace, epoch_order
from runner.scaling.grid import STOP_REASON, target_probe
from runner.attempts import CHECKPOINT_DIR, checkpoint_payload, comparable_config
from runner.build import Run
from runner.train import write_results

log = logging.getLogger("runner.epochs")  # the single run's log lines, under the same logger name
train_log = logging.getLogger("runner.train")


@dataclass
class Member:
    """One job of a fused group, set up as :func:`runner.train._train_into` sets up a run."""

    run: Run
    out: Path
    logger: TensorBoardLogger
    state: TrainState
    hparams: dict[str, Any]
    active: Callable[[], AbstractContextManager]  # this job's Hydra config and log file, while inside
    summary: dict[str, Any] | None = None
    per_iteration: bool = field(init=False)
    checkpoints: CheckpointWriter = field(init=False)
    config: dict[str, Any] = field(init=False)  # what its checkpoints record of the config

    def __post_init__(self) -> None:
        self.per_iteration = self.run.cfg.scheduler.interval == "iteration"
        self.checkpoints = CheckpointWriter(self.out / CHECKPOINT_DIR)
        self.config = comparable_config(self.run.cfg)

    def save(self) -> None:
        """The member's checkpoint, serialised and written by its writer's thread: the payload is
        a snapshot, as nothing in it is written into later (:meth:`FusedGroup.sync` gives the
        module new tensors and the optimizer state new ones; the dicts holding them are copied here)."""
        payload = checkpoint_payload(self.run, self.state, self.logger.position(), self.config)
        optimizer = payload["optimizer"]
        optimizer["state"] = {key: dict(value) for key, value in optimizer["state"].items()}
        payload["scheduler"] = copy.deepcopy(payload["scheduler"])
        self.checkpoints.submit(payload, snapshot=True)


class FusedGroup:
    """The stacked model, optimizer and data of the members still training, in row order."""

    def __init__(self, members: Sequence[Member]):
        self.members = list(members)
        runs = [m.run for m in members]
        for run in runs:
            # The stacked optimizer does the member's optimizer's steps: its epoch scheduler
            # would otherwise warn that it is stepped before any optimizer step.
            run.optimizer._opt_called = True  # type: ignore[attr-defined]
        self.model = stacked_model([r.model for r in runs])
        self.optimizer = StackedOptimizer([r.optimizer for r in runs], self.model.flat, self.model.grad, self.model.shapes)
        self.data = StackedData.of([r.train for r in runs])
        clips = [r.cfg.grad_clip for r in runs]
        clip = None if all(c is None for c in clips) else self._column([float("inf") if c is None else c for c in clips])
        self.step = FusedStep(self.model, runs[0].loss_fn, self.optimizer, clip)
        if closed_form(self.step):  # the same update without autograd's graph: the default MLPs
            self.step = ClosedFormStep(self.model, runs[0].loss_fn, self.optimizer, clip)
        self.epoch_data: StackedData | None = None
        # What the epoch ends evaluate, every member's split stacked (the training split shares
        # the training data's tensors): one forward per chunk for the whole group.
        self.eval_splits = {"train": StackedSplit(self.data.X, self.data.Y, StackedSplit.of([r.train for r in runs]).labels)}
        if runs[0].val is not None:
            self.eval_splits["val"] = StackedSplit.of([r.val for r in runs])

    def _column(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=self.model.flat.dtype, device=self.model.flat.device).unsqueeze(1)

    def sync(self) -> None:
        """Each member's weights and optimizer state into its own module and optimizer."""
        for k, member in enumerate(self.members):
            self.model.write_into(k, member.run.model)
        self.optimizer.store([m.run.optimizer for m in self.members])

    def metrics(self, train_epoch_losses: Sequence[float | None]) -> list[dict[str, float]]:
        """Each member's epoch-level values, as :func:`runner.epochs._epoch_metrics` gives them
        for its single run (same keys, same order), from one stacked forward per chunk of the
        training and validation splits and one device→host transfer for the group."""
        ref = self.members[0].run
        names, tensors = [], []
        for split, data in self.eval_splits.items():
            loss, acc = stacked_evaluate(self.model, ref.loss_fn, data, ref.cfg.eval_batch_size)
            names.append(tags.loss_tag(split))
            tensors.append(loss)
            if acc is not None:
                names.append(tags.acc_tag(split))
                tensors.append(acc)
        table = torch.stack(tensors, dim=1).tolist()  # (K, metrics)
        out = []
        for row, epoch_loss in zip(table, train_epoch_losses):
            values = dict(zip(names, row))
            head = {} if epoch_loss is None else {tags.LOSS_EPOCH: epoch_loss}
            out.append({**head, **values, **generalization_gap(values)})
        return out

    def drop(self, leaving: list[Member]) -> None:
        """Take ``leaving`` out of the stack (their results are written); the rest go on."""
        keep = [k for k, m in enumerate(self.members) if m not in leaving]
        self.members = [self.members[k] for k in keep]
        if not self.members:
            return
        rows = torch.tensor(keep, device=self.model.flat.device)
        self.model.keep(rows)
        self.optimizer.keep(rows)
        self.optimizer.rebind(self.model.flat, self.model.grad)
        self.data = self.data.keep(rows)
        if self.epoch_data is not None:
            self.epoch_data = self.epoch_data.keep(rows)
        self.eval_splits = {split: data.keep(rows) for split, data in self.eval_splits.items()}
        self.eval_splits["train"] = StackedSplit(self.data.X, self.data.Y, self.eval_splits["train"].labels)
        if self.step.grad_clip is not None:
            self.step.grad_clip = self.step.grad_clip.index_select(0, rows)

    def learning_rates(self, n: int) -> tuple[torch.Tensor, list[list[float]], list[Any]]:
        """The ``(n, K, 1)`` learning rates of the next ``n`` updates, stepping each member's real
        per-iteration scheduler as its single run would (one step after each update); a member
        stepped per epoch keeps its current lr. Also each member's lrs as floats (for the log),
        and what :meth:`rewind` needs when fewer updates run."""
        table, saved = [], []
        for member in self.members:
            optimizer, scheduler = member.run.optimizer, member.run.scheduler
            if not member.per_iteration:
                table.append([optimizer.param_groups[0]["lr"]] * n)
                saved.append(None)
                continue
            saved.append((scheduler.state_dict(), optimizer.param_groups[0]["lr"]))
            lrs = []
            for _ in range(n):
                lrs.append(optimizer.param_groups[0]["lr"])
                scheduler.step()
            table.append(lrs)
        # float64, as torch's optimizers hold an lr: the stacked rules round what they derive once.
        tensor = torch.tensor(table, dtype=torch.float64).T.unsqueeze(2).to(self.model.flat.device)
        return tensor, table, saved

    def rewind(self, saved: list[Any], done: int) -> None:
        """A stop cut the segment after ``done`` updates: schedulers back to ``done`` steps."""
        for member, before in zip(self.members, saved):
            if before is None:
                continue
            state, lr = before
            member.run.scheduler.load_state_dict(state)
            member.run.optimizer.param_groups[0]["lr"] = lr
            for _ in range(done):
                member.run.scheduler.step()


def _record_segment(member: Member, losses: np.ndarray, grad_norms: np.ndarray, lrs: list[float], wall_times: list[float], batch_sizes: list[int], seconds: float) -> None:
    """A segment's values into one member's state and log, as :func:`runner.epochs._run_segment`
    records them (a non-finite loss ends the run there: later updates are not counted)."""
    run, state = member.run, member.state
    state.train_seconds += seconds
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        n = bad[0] + 1
        losses, grad_norms, lrs, wall_times, batch_sizes = losses[:n], grad_norms[:n], lrs[:n], wall_times[:n], batch_sizes[:n]
    trace = EpochTrace(None, None, lrs, batch_sizes, wall_times)  # type: ignore[arg-type]
    steps = np.arange(state.iteration, state.iteration + len(losses))
    _log_iterations(member.logger, steps, losses, grad_norms, trace, run.cfg.log_every)
    state.position += len(losses)
    state.iteration += len(losses)
    state.samples += sum(batch_sizes)
    state.epoch_losses.extend(losses.tolist())
    state.epoch_batch_sizes.extend(batch_sizes)
    if len(bad):
        first = len(losses) - 1
        state.status = "diverged"
        state.divergence = {"iteration": int(steps[first]), "epoch": state.epoch, "lr": lrs[first], "batch_size": run.batch_size}
        log.warning("Diverged: non-finite loss at iteration %d (epoch %d, lr %g); stopping.", steps[first], state.epoch, lrs[first])


def finish_member(member: Member, stop: StopFlag) -> dict[str, Any]:
    """Close a member as :func:`runner.train._train_into` closes a run: status in the event file,
    ``model.pt`` (finite weights, not interrupted), ``summary.json``. Returns the summary."""
    run, state, out = member.run, member.state, member.out
    if state.status == "running":
        state.status = "done"
    if stop.requested:
        log.warning("Stopped by signal %d at iteration %d; the checkpoint resumes it.", stop.signal, state.iteration)
    summary = summary_of(run, state)
    status = summary["status"]
    try:
        member.checkpoints.close()  # on disk before the results say the job ended
        if status != "interrupted":
            member.logger.log_status(status)
    finally:
        member.logger.close()
    summary = write_results(run, out, summary, member.hparams)
    member.summary = summary
    return summary


def train_group(members: Sequence[Member]) -> None:
    """Train the members (all at the same position: fresh, or resumed from one boundary) until
    each is done, diverged, stopped early, or a stop signal interrupts them all. Every member
    has its ``summary`` afterwards."""
    ref = members[0].run
    group = FusedGroup(members)
    fresh = [m.state.initial_metrics is None and m.state.iteration == 0 for m in members]
    if any(fresh):
        for member, metrics in zip(members, group.metrics([None] * len(members))):
            if member.state.initial_metrics is None and member.state.iteration == 0:
                with member.active():
                    _log_initial(member.run, member.logger, member.state, metrics)
    device = next(ref.model.parameters()).device
    with StopFlag() as stop:
        try:
            _epochs(group, ref, device, stop)
        except BaseException:
            for member in group.members:  # a crash mid-group: close the files the others would need
                member.checkpoints.close(raise_error=False)
                member.logger.close()
            raise
        for member in group.members:
            with member.active():
                finish_member(member, stop)


def _epochs(group: FusedGroup, ref: Run, device: torch.device, stop: StopFlag) -> None:
    """The loop of :func:`runner.epochs.run_epochs` over the group; members that end leave it."""
    start_epoch = group.members[0].state.epoch
    clock = CheckpointClock(ref.cfg.checkpoint_interval_s)
    probe = target_probe(ref)  # the members share batch size and plan, so the grid too
    for epoch, n_iterations in enumerate(ref.plan.iterations, start=1):
        if epoch < start_epoch:
            continue
        for member in group.members:
            if member.state.order is None:
                member.state.order = epoch_order(member.run.order_generator, len(member.run.train), member.run.cfg.shuffle, torch.device("cpu"))
        group.epoch_data = group.data.epoch(torch.stack([m.state.order for m in group.members]).to(device))
        lead = group.members[0].state
        while lead.position < n_iterations and lead.status == "running":
            end = _segment_end(lead, n_iterations, ref.cfg.checkpoint_every)
            if probe is not None:
                end = probe.clip(end, lead.position, lead.iteration)
            _segment(group, ref.slices[lead.position : end], stop)
            if probe is not None and group.members and not stop.requested and probe.on_grid(group.members[0].state.iteration):
                group.sync()
                _leave_at_target(group, probe, stop)
            if not group.members:
                return
            lead = group.members[0].state
            if stop.requested:
                break
            if lead.position < n_iterations:
                _save_all(group)  # a boundary inside the epoch
                clock.saved()
        group.epoch_data = None
        if stop.requested and lead.position < n_iterations:
            for member in group.members:
                member.state.status = "interrupted"
            _save_all(group)
            return
        group.sync()
        stopped = []
        values = group.metrics([epoch_train_loss(m.state) for m in group.members])
        for member, metrics in zip(group.members, values):
            with member.active():
                _finish_epoch(member.run, member.logger, member.state, metrics)
                if _at_target(probe, member) or _no_longer_improving(member.run, member.state):
                    stopped.append(member)
                    finish_member(member, stop)
        group.drop(stopped)
        if not group.members:
            return
        if stop.requested or epoch == len(ref.plan.iterations) or clock.due():
            _save_all(group)
            clock.saved()
        if stop.requested:
            for member in group.members:
                member.state.status = "interrupted"
            return


def _at_target(probe: Any, member: Member) -> bool:
    """At an epoch end: a member stopped inside this epoch at its target, or one that reaches
    it here (an epoch end off the grid is evaluated by ``_finish_epoch`` already)."""
    state = member.state
    if probe is None:
        return False
    if not state.stop_reason and not probe.on_grid(state.iteration):
        if probe.reached(member.run, member.logger, state.iteration, state.metrics[tags.LOSS_FULL]):
            state.stop_reason = STOP_REASON
    return state.stop_reason == STOP_REASON


def _leave_at_target(group: FusedGroup, probe: Any, stop: StopFlag) -> None:
    """At a grid point inside an epoch: members at their target close their epoch there (as
    the single run does), are written and leave the stack. Their weights are synced already."""
    leaving = []
    for member in group.members:
        # Only a member at its target has lines to log: its log file is switched to for it alone.
        hit, loss = probe.measure(member.run, member.logger, member.state.iteration)
        if not hit:
            continue
        with member.active():
            probe.announce(loss, member.state.iteration)
            member.state.stop_reason = STOP_REASON
            if member.state.position < member.run.plan.iterations[member.state.epoch - 1]:
                _finish_epoch(member.run, member.logger, member.state)
                finish_member(member, stop)
                leaving.append(member)
    group.drop(leaving)


def _segment(group: FusedGroup, slices: list[slice], stop: StopFlag) -> None:
    """One segment for the whole group; members whose loss went non-finite are written and leave."""
    started = time.perf_counter()
    lrs, table, saved = group.learning_rates(len(slices))
    trace = run_fused_segment(group.step, group.epoch_data, slices, lrs, stop)
    losses = trace.losses.double().cpu().numpy()
    grad_norms = trace.grad_norms.double().cpu().numpy()
    seconds = time.perf_counter() - started
    if trace.n < len(slices):
        group.rewind(saved, trace.n)
    batch_sizes = [b.stop - b.start for b in slices[: trace.n]]
    diverged = []
    for k, member in enumerate(group.members):
        # Only a divergence logs a line here: the job's log file is switched to for it alone.
        with member.active() if not np.isfinite(losses[k]).all() else nullcontext():
            _record_segment(member, losses[k], grad_norms[k], table[k][: trace.n], trace.wall_times, batch_sizes, seconds)
        if member.state.status == "diverged":
            diverged.append(member)
    if diverged:
        group.sync()
        for member in diverged:
            with member.active():
                finish_member(member, stop)
        group.drop(diverged)


def _save_all(group: FusedGroup) -> None:
    group.sync()
    for member in group.members:
        member.save()
