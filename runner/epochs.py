"""The epoch loop around :func:`runner.loop.train_one_epoch`: logging, budget, checkpoints, stops.

An epoch runs in *segments*: from one checkpoint boundary (every ``checkpoint_every``
updates, and each epoch end) to the next. At each boundary the segment's per-iteration
values come back from the device (one transfer), go to the logger, and — when a
checkpointer is given — the whole state is saved: at every ``checkpoint_every`` boundary, and
at an epoch end once ``checkpoint_interval_s`` has passed since the last save (always at the
last epoch and at a stop signal). So a run killed at any moment resumes from its last saved
boundary and produces the same numbers, bit for bit on CPU.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from runner import tags
from runner.loggers import MetricLogger
from runner.loop import EpochTrace, epoch_order, evaluate, train_one_epoch
from runner.progress import make_progress
from runner.scaling.grid import STOP_REASON, target_probe
from runner.text import duration, plural

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Training seconds so far (time in updates, not in evaluation) at epoch 0, 1, …: the
# HParams "seconds" column (a metric is its tag's last point) and a curve of its own.
TRAIN_SECONDS_TAG = tags.TRAIN_SECONDS
# Tags whose steps or values are wall-clock time: what two runs of one configuration never share.
TIMED_PREFIXES = (tags.BY_TIME_MS, "time/")


@dataclass
class TrainState:
    """Where a run is, beyond model, optimizer, scheduler and random states."""

    epoch: int = 1  # the epoch in progress, or the next one to start
    position: int = 0  # updates done within that epoch
    iteration: int = 0  # updates done in total
    samples: int = 0
    train_seconds: float = 0.0
    order: Tensor | None = None  # the epoch's sample order, once drawn (CPU)
    epoch_losses: list[float] = field(default_factory=list)  # this epoch's batch losses so far
    epoch_batch_sizes: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    status: str = "running"
    divergence: dict[str, Any] | None = None
    best_epoch: int | None = None  # lowest monitored loss so far (validation, else full training)
    best_loss: float | None = None
    stopped_early: bool = False
    best_metrics: dict[str, float] | None = None  # the best epoch's epoch-level values
    # early_stopping_restore_best: the best epoch's weights, copied (on the device) at the
    # end of each epoch that improved; checkpointed with the state, so a resumed run
    # restores exactly the weights an uninterrupted one would.
    best_weights: dict[str, Tensor] | None = None
    restored_best: bool = False
    initial_metrics: dict[str, float] | None = None  # epoch 0: at the initial weights, before any update
    stop_reason: str | None = None  # "target_reached" (runner.scaling); else the summary derives it

    def __post_init__(self) -> None:
        # A checkpoint written before the tag renaming holds its metrics under the old tags.
        for name in ("metrics", "best_metrics", "initial_metrics"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, {tags.current(tag): value for tag, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StopFlag:
    """Set by SIGTERM, SIGINT or SIGUSR1; the loop stops at the next iteration boundary.

    The handler only sets a flag: saving, flushing and exiting happen in the loop, never
    inside the signal handler.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        # A plain attribute, not a property: the loop reads it at every update.
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        self.requested = True

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _epoch_lengths(run: Any) -> Iterator[int]:
    """Iterations in each epoch: the plan's, or full epochs until a time budget runs out."""
    if run.plan.iterations is not None:
        yield from run.plan.iterations
    else:
        while True:
            yield run.iterations_per_epoch


def _segment_end(state: TrainState, n_iterations: int, checkpoint_every: int) -> int:
    """The position in this epoch where the current segment ends (a checkpoint boundary)."""
    if checkpoint_every <= 0:
        return n_iterations
    to_boundary = checkpoint_every - state.iteration % checkpoint_every
    return min(n_iterations, state.position + to_boundary)


class CheckpointClock:
    """Whether an epoch end is due a checkpoint: ``interval_s`` after the last one saved.

    Serialising a run's whole state costs a few milliseconds, as much as 10 % of a short
    epoch (45 updates of a small MLP); an epoch end closer than ``interval_s`` to the last
    checkpoint skips it, so a kill loses at most ``interval_s`` of training and resumes as
    exactly from the older checkpoint. Epochs longer than ``interval_s`` all save.
    """

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    def saved(self) -> None:
        self.last = time.monotonic()


def _epoch_metrics(run: Any, train_epoch_loss: float | None) -> dict[str, float]:
    """Epoch-end losses and accuracies, fetched from the device in one transfer.

    ``train_epoch_loss`` is None at epoch 0, which has no batches to average.
    """
    splits = {"train": run.train, **({"val": run.val} if run.val is not None else {})}
    if run.joint_eval is not None:
        parts = dict(zip(splits, run.joint_eval(run.model, run.loss_fn)))
    else:
        parts = {name: evaluate(run.model, run.loss_fn, split, run.cfg.eval_batch_size) for name, split in splits.items()}
    names, tensors = [], []
    for split, (loss, acc) in parts.items():
        names.append(tags.loss_tag(split))
        tensors.append(loss)
        if acc is not None:
            names.append(tags.acc_tag(split))
            tensors.append(acc)
    values = dict(zip(names, torch.stack(tensors).tolist()))
    epoch_loss = {} if train_epoch_loss is None else {tags.LOSS_EPOCH: train_epoch_loss}
    return {**epoch_loss, **values, **generalization_gap(values)}


def generalization_gap(metrics: dict[str, float]) -> dict[str, float]:
    """``overfit_gap/loss`` = validation − whole-training-set loss, ``overfit_gap/acc`` = training −
    validation accuracy: both grow as the model fits its training samples at the cost of
    unseen ones. Empty without a validation split.

    The difference of the two values as TensorBoard stores them (float32), so that the
    gap read back from the event file is exactly the difference of the two curves read back.
    """
    gaps = {}
    if tags.LOSS_VAL in metrics:
        gaps[tags.GAP_LOSS] = float(np.float32(metrics[tags.LOSS_VAL]) - np.float32(metrics[tags.LOSS_FULL]))
    if tags.ACC_VAL in metrics and tags.ACC_TRAIN in metrics:
        gaps[tags.GAP_ACC] = float(np.float32(metrics[tags.ACC_TRAIN]) - np.float32(metrics[tags.ACC_VAL]))
    return gaps


def _log_epoch(logger: MetricLogger, metrics: dict[str, float], state: TrainState, epoch: int) -> None:
    """Epoch-level scalars against epoch (their main tags) and against the other three x-axes,
    and the training seconds so far against epoch."""
    logger.log_dict(metrics, step=epoch)
    for name, value in metrics.items():
        by_iteration, by_samples, by_time_ms = tags.on_axes(name)
        logger.log(by_iteration, value, state.iteration)
        logger.log(by_samples, value, state.samples)
        logger.log(by_time_ms, value, round(state.train_seconds * 1000))
    # Not one of the metrics: on the vs_* axes it would be time against itself.
    logger.log(TRAIN_SECONDS_TAG, state.train_seconds, epoch)


def _log_iterations(logger: MetricLogger, steps: np.ndarray, losses: np.ndarray, grad_norms: np.ndarray, trace: EpochTrace, log_every: int) -> None:
    """A segment's per-iteration series, every ``log_every``-th global iteration."""
    keep = steps % log_every == 0
    wall_times = np.asarray(trace.wall_times)[keep]
    logger.log_series(tags.LOSS_ITER, steps[keep], losses[keep], wall_times)
    logger.log_series(tags.GRAD_NORM, steps[keep], grad_norms[keep], wall_times)
    logger.log_series(tags.LR, steps[keep], np.asarray(trace.lrs)[keep], wall_times)


def _run_segment(run: Any, logger: MetricLogger, state: TrainState, source: Any, end: int, progress: Any, stop: StopFlag) -> np.ndarray:
    """Updates ``state.position`` .. ``end`` of this epoch; logs them; returns their losses."""
    started = time.perf_counter()
    deadline = time.time() + (run.plan.seconds - state.train_seconds)
    run.instruments.start_segment(state.iteration)
    trace = train_one_epoch(
        run.step, run.optimizer, run.iteration_scheduler, source, run.slices[state.position : end], progress, deadline, stop
    )
    # The one device→host transfer of the segment (losses and norms together: one wait for the
    # device, not two); it also makes the timing honest on GPUs.
    losses, grad_norms = torch.stack((trace.losses.double(), trace.grad_norms.double())).cpu().numpy()
    state.train_seconds += time.perf_counter() - started
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        # The run ends at the first non-finite loss. The updates after it in this segment
        # were issued without waiting for the device (a check per update would cost a sync
        # each); they only moved already-poisoned weights, and are not counted or logged.
        losses, grad_norms, trace = losses[: bad[0] + 1], grad_norms[: bad[0] + 1], _first(trace, bad[0] + 1)

    steps = np.arange(state.iteration, state.iteration + len(losses))
    _log_iterations(logger, steps, losses, grad_norms, trace, run.cfg.log_every)
    run.instruments.end_segment(logger, state.iteration + len(losses))
    state.position += len(losses)
    state.iteration += len(losses)
    state.samples += sum(trace.batch_sizes)
    state.epoch_losses.extend(losses.tolist())
    state.epoch_batch_sizes.extend(trace.batch_sizes)
    if not np.isfinite(losses).all():
        first = int(np.flatnonzero(~np.isfinite(losses))[0])
        state.status = "diverged"
        state.divergence = {"iteration": int(steps[first]), "epoch": state.epoch, "lr": trace.lrs[first], "batch_size": run.batch_size}
        log.warning("Diverged: non-finite loss at iteration %d (epoch %d, lr %g); stopping.", steps[first], state.epoch, trace.lrs[first])
    return losses


def _first(trace: EpochTrace, n: int) -> EpochTrace:
    """The first ``n`` updates of a segment's trace."""
    return EpochTrace(trace.losses[:n], trace.grad_norms[:n], trace.lrs[:n], trace.batch_sizes[:n], trace.wall_times[:n])


def _finish_epoch(run: Any, logger: MetricLogger, state: TrainState, metrics: dict[str, float] | None = None) -> None:
    """Evaluate, log the epoch-level scalars, step the epoch scheduler, and move to the next epoch.
    ``metrics``: the epoch's values when the caller evaluated already (a fused group, all its
    members in one pass)."""
    started = time.perf_counter()
    state.metrics = metrics if metrics is not None else _epoch_metrics(run, epoch_train_loss(state))
    _log_epoch(logger, state.metrics, state, state.epoch)
    run.epoch_scheduler.step(state.metrics)
    _track_best(run, state)
    log.info("epoch %d  %s  (eval %s)", state.epoch, "  ".join(f"{k}={v:.4g}" for k, v in state.metrics.items()), duration(time.perf_counter() - started))
    state.epoch += 1
    state.position = 0
    state.order = None
    state.epoch_losses, state.epoch_batch_sizes = [], []


def epoch_train_loss(state: TrainState) -> float:
    """The epoch's training loss: its batch losses averaged, weighted by batch size."""
    return float(np.average(state.epoch_losses, weights=state.epoch_batch_sizes))


def _track_best(run: Any, state: TrainState) -> None:
    """Note the epoch when the monitored loss (validation, else whole training set) improved
    on the best so far by more than ``early_stopping_min_delta`` (Keras' rule), and keep a
    copy of its weights when they are to be restored at the end."""
    monitored = state.metrics.get(tags.LOSS_VAL, state.metrics[tags.LOSS_FULL])
    if state.best_loss is not None and not monitored < state.best_loss - run.cfg.early_stopping_min_delta:
        return
    state.best_epoch, state.best_loss, state.best_metrics = state.epoch, monitored, dict(state.metrics)
    if run.cfg.early_stopping_restore_best:
        state.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def _restore_best(run: Any, state: TrainState) -> None:
    """Put the best epoch's weights back into the model (what ``model.pt`` then holds)."""
    if not run.cfg.early_stopping_restore_best or state.best_weights is None or state.status not in ("done", "diverged"):
        return
    run.model.load_state_dict(state.best_weights)
    state.restored_best = True
    log.info("Restored the weights of the best epoch %d (monitored loss %.4g).", state.best_epoch, state.best_loss)


def _log_initial(run: Any, logger: MetricLogger, state: TrainState, metrics: dict[str, float] | None = None) -> None:
    """Epoch 0: the losses and accuracies at the initial weights, logged at epoch, iteration,
    sample and time 0. Runs of a sweep with one seed share their initial weights, so every
    regime's curve starts from this same point; it is also what ``loss_grew`` compares to.
    ``metrics``: those values when the caller evaluated already (a fused group)."""
    state.initial_metrics = metrics if metrics is not None else _epoch_metrics(run, None)
    _log_epoch(logger, state.initial_metrics, state, 0)
    log.info("epoch 0  %s  (initial weights)", "  ".join(f"{k}={v:.4g}" for k, v in state.initial_metrics.items()))


def _no_longer_improving(run: Any, state: TrainState) -> bool:
    patience = run.cfg.early_stopping_patience
    # state.epoch is now the next epoch: epochs since the best = (state.epoch - 1) - best_epoch.
    if patience is None or state.epoch - 1 - state.best_epoch < patience:
        return False
    state.stopped_early = True
    log.info("Early stop: no improvement for %s (best epoch %d, loss %.4g).", plural(patience, "epoch"), state.best_epoch, state.best_loss)
    return True


def run_epochs(
    run: Any,
    logger: MetricLogger,
    state: TrainState | None = None,
    save_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train from ``state`` (a fresh run by default) until the budget is spent, the loss
    diverges or a stop signal arrives. Returns the final state (``state.status``)."""
    state = state or TrainState()
    clock = CheckpointClock(run.cfg.checkpoint_interval_s)

    def save(current: TrainState) -> None:
        if save_checkpoint is not None:
            save_checkpoint(current)
        clock.saved()

    probe = target_probe(run)  # None unless scaling.target is set
    progress = make_progress(str(run.cfg.progress).lower(), run.plan.total_iterations)
    n_epochs = len(run.plan.iterations) if run.plan.iterations is not None else None
    if state.initial_metrics is None and state.iteration == 0:
        _log_initial(run, logger, state)  # a resumed run has logged it already
    with run.stop_flag() as stop:
        try:
            for epoch, n_iterations in enumerate(_epoch_lengths(run), start=1):
                if epoch < state.epoch:
                    continue  # finished before a resume
                progress.start_epoch(epoch, n_epochs)
                if state.order is None:
                    state.order = epoch_order(run.order_generator, len(run.train), run.cfg.shuffle, torch.device("cpu"))
                source = run.train.source(state.order.to(run.device), run.bounded_memory)
                out_of_time = False
                while state.position < n_iterations and state.status == "running":
                    end = _segment_end(state, n_iterations, run.cfg.checkpoint_every)
                    if probe is not None:
                        end = probe.clip(end, state.position, state.iteration)
                    _run_segment(run, logger, state, source, end, progress, stop)
                    out_of_time = state.train_seconds >= run.plan.seconds
                    if stop.requested or out_of_time or state.status != "running":
                        break
                    if probe is not None and probe.on_grid(state.iteration) and probe.reached(run, logger, state.iteration):
                        state.stop_reason = STOP_REASON
                        break
                    if state.position < n_iterations:
                        save(state)  # a boundary inside the epoch
                del source  # the epoch's copy of the data is not needed during evaluation
                if state.status != "running":
                    break  # diverged: nothing non-finite is evaluated or saved
                if stop.requested and state.position < n_iterations:
                    state.status = "interrupted"
                    save(state)
                    break
                _finish_epoch(run, logger, state)
                if probe is not None and not state.stop_reason and not probe.on_grid(state.iteration):
                    if probe.reached(run, logger, state.iteration, state.metrics[tags.LOSS_FULL]):
                        state.stop_reason = STOP_REASON
                if out_of_time or state.stop_reason or _no_longer_improving(run, state):
                    break
                if stop.requested or epoch == n_epochs or clock.due():
                    save(state)
                if stop.requested:
                    state.status = "interrupted"
                    break
        finally:
            progress.close()
    if state.status == "running":
        state.status = "done"
    _restore_best(run, state)
    if stop.requested:
        log.warning("Stopped by signal %d at iteration %d; the checkpoint resumes it.", stop.signal, state.iteration)
    return state


# A run whose final whole-training-set loss is at least this many times its initial one (at
# epoch 0, before any update) ended an order of magnitude worse than not training at all: it
# blew up without reaching a non-finite value, so its status alone ("done") would hide it.
LOSS_GREW_FACTOR = 10.0


def loss_growth(initial: float | None, final: float | None) -> float | None:
    """final / initial when the loss grew by at least :data:`LOSS_GREW_FACTOR`, else None.

    Only for a positive initial loss: a ratio of losses that can be negative (cosine
    similarity) or zero says nothing about growth.
    """
    if initial is None or final is None or not initial > 0 or not math.isfinite(final):
        return None
    ratio = final / initial
    return ratio if ratio >= LOSS_GREW_FACTOR else None


def summary_of(run: Any, state: TrainState) -> dict[str, Any]:
    """The run's ``summary.json`` (without the keys :func:`runner.train.train` adds)."""
    cfg, metrics = run.cfg, state.metrics
    initial_loss = (state.initial_metrics or {}).get(tags.LOSS_FULL)
    growth = loss_growth(initial_loss, metrics.get(tags.LOSS_FULL))
    warnings = []
    if growth is not None:
        warnings.append(
            f"loss grew {growth:.3g}x: whole-training-set loss {metrics['loss/train_full']:.4g} at the end, "
            f"{initial_loss:.4g} at the initial weights (flagged at >= {LOSS_GREW_FACTOR:g}x); lower optimizer.lr"
        )
        log.warning("The %s", warnings[-1])
    if run.plan.deviation is not None:
        warnings.append(run.plan.deviation)  # the budget is not met exactly: say so where the results are
        log.warning("%s.", run.plan.deviation)
    n_per_epoch = sum(b.stop - b.start for b in run.slices)
    epochs_begun = state.epoch - (1 if state.position == 0 and not state.epoch_losses else 0)
    return {
        "status": state.status,
        "stop_reason": stop_reason(run, state),
        "epochs": epochs_begun,
        "iterations": state.iteration,
        "iterations_per_epoch": run.iterations_per_epoch,
        "samples_seen": state.samples,
        "budget": {"unit": cfg.budget, "amount": cfg.epochs if cfg.budget == "epochs" else cfg.budget_amount},
        "spent": {"epochs": state.samples / n_per_epoch, "samples": state.samples, "updates": state.iteration, "seconds": state.train_seconds},
        "batch_size": run.batch_size,
        "regime": run.regime,
        "lr": run.lr,
        "n_train": len(run.train),
        "n_val": len(run.val) if run.val is not None else 0,
        "train_loss": _finite_or_none(metrics.get(tags.LOSS_FULL)),
        "initial_train_loss": _finite_or_none(initial_loss),
        "loss_grew": growth is not None,
        "warnings": warnings,
        "train_epoch_loss": _finite_or_none(metrics.get(tags.LOSS_EPOCH)),
        "val_loss": _finite_or_none(metrics.get(tags.LOSS_VAL)),
        "train_acc": metrics.get(tags.ACC_TRAIN),
        "val_acc": metrics.get(tags.ACC_VAL),
        "seconds_per_epoch": state.train_seconds / epochs_begun if epochs_begun else None,
        "train_seconds": state.train_seconds,
        "divergence": state.divergence,
        "best_epoch": state.best_epoch,
        "best_loss": _finite_or_none(state.best_loss),
        "stopped_early": state.stopped_early,
        "gap_loss": _finite_or_none(metrics.get(tags.GAP_LOSS)),
        "gap_acc": metrics.get(tags.GAP_ACC),
        "best_metrics": state.best_metrics,
        # model.pt holds the best epoch's weights (early_stopping_restore_best), not the last.
        "restored_best": state.restored_best,
        "device": str(run.device),
        "torch_version": torch.__version__,
        "seed": cfg.seed,
        "dataset": {"name": cfg.dataset.name, "task": run.dataset.task, "n_classes": run.dataset.n_classes, **run.dataset.info},
    }


def stop_reason(run: Any, state: TrainState) -> str:
    """Why the run ended: ``target_reached``, ``early_stopping``, ``budget``, or its status."""
    if state.stop_reason:
        return state.stop_reason
    if state.stopped_early:
        return "early_stopping"
    return "budget" if state.status == "done" else state.status


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
