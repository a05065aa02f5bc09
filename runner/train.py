"""``train(cfg) -> summary``: validate, build, fit, write. Usable without Hydra's CLI.

Split in three so that other drivers can reuse the parts: :func:`build_run` turns a
config into ready-to-train objects and writes nothing (every error surfaces here, before
any output exists); :func:`fit` runs the epochs against any :class:`MetricLogger`;
:func:`train` adds the run directory's files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.optim import Optimizer

from runner import data as datasets
from runner.device import resolve_device
from runner.loggers import MetricLogger, TensorBoardLogger
from runner.budget import Plan, make_plan
from runner.errors import ConfigError
from runner.batches import InMemorySplit, Split
from runner.loop import (
    EpochScheduler,
    EpochTrace,
    FlatGradients,
    NoSchedulerStep,
    accumulating_train_step,
    batch_slices,
    epoch_order,
    evaluate,
    train_one_epoch,
    train_step,
)
from runner.losses import Loss
from runner.progress import make_progress
from runner.registry import build
from runner.schedulers import NEEDS_RUN_LENGTH
from runner.validate import check_combination, check_config, resolve_batch_size

log = logging.getLogger(__name__)

TB_DIR, SUMMARY_FILE, WEIGHTS_FILE = "tb", "summary.json", "model.pt"
LR_SCALING = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": math.sqrt}


@dataclass
class Run:
    """Everything a training run needs, built and validated."""

    cfg: DictConfig
    device: torch.device
    dataset: datasets.Dataset  # the training part, on the host (for its metadata)
    train: Split
    val: Split | None
    batch_size: int
    slices: list[slice]  # one epoch's batches
    plan: Plan
    lr: float  # after lr_scaling
    model: nn.Module
    loss_fn: Loss
    optimizer: Optimizer
    iteration_scheduler: Any
    epoch_scheduler: Any
    order_generator: torch.Generator
    step: Any  # (source, positions) -> (loss, grad_norm): one update
    bounded_memory: bool  # fetch batches without copying the whole epoch

    @property
    def iterations_per_epoch(self) -> int:
        return len(self.slices)

    @property
    def regime(self) -> str:
        if self.batch_size >= len(self.train):
            return "bgd"
        return "sgd" if self.batch_size == 1 else "minibatch"


def seed_everything(seed: int) -> None:
    """Seed every global RNG a run could touch (weight init draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(part: datasets.Dataset, loss_fn: Loss, device: torch.device) -> InMemorySplit:
    y = torch.from_numpy(part.y)
    labels = y.to(device) if part.task == datasets.CLASSIFICATION else None
    return InMemorySplit(
        X=torch.from_numpy(part.X).to(device),
        Y=loss_fn.encode_targets(y.to(device), part.n_classes),
        labels=labels,
    )


def build_run(cfg: DictConfig) -> Run:
    """Validate ``cfg`` and build data, model, loss, optimizer and schedulers. Writes nothing."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    full = datasets.load_dataset(cfg.dataset)
    train_part, val_part = datasets.split(full, cfg.val_fraction, cfg.seed)
    train_part, val_part = datasets.standardize(
        train_part, val_part, features=cfg.dataset.standardize, target=cfg.dataset.standardize_target
    )
    check_combination(cfg, train_part)
    batch_size = resolve_batch_size(cfg.batch_size, len(train_part))
    slices = batch_slices(len(train_part), batch_size, cfg.drop_last)
    plan = make_plan(cfg.budget, cfg.budget_amount, cfg.epochs, [b.stop - b.start for b in slices])
    per_iteration = cfg.scheduler.interval == "iteration"
    scheduler_steps = _scheduler_steps(cfg, plan, per_iteration)
    lr = scaled_lr(cfg.optimizer.lr, cfg.lr_scaling, batch_size, cfg.lr_scaling_base_batch)

    seed_everything(cfg.seed)
    loss_fn: Loss = build("loss", cfg.loss)
    model: nn.Module = build(
        "model",
        cfg.model,
        in_shape=train_part.feature_shape,
        out_features=loss_fn.output_dim(train_part.n_classes, train_part.target_dim),
    ).to(device)
    grads = FlatGradients(list(model.parameters()))
    optimizer: Optimizer = build("optimizer", cfg.optimizer, params=model.parameters(), lr=lr)
    scheduler = build("scheduler", cfg.scheduler, exclude=("interval",), optimizer=optimizer, total_steps=scheduler_steps)

    return Run(
        cfg=cfg,
        device=device,
        dataset=train_part,
        train=_to_device(train_part, loss_fn, device),
        val=_to_device(val_part, loss_fn, device) if val_part is not None else None,
        batch_size=batch_size,
        slices=slices,
        plan=plan,
        lr=lr,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        iteration_scheduler=scheduler if per_iteration else NoSchedulerStep(),
        epoch_scheduler=NoSchedulerStep() if per_iteration else EpochScheduler(scheduler),
        # Its own generator: the data order for a seed does not depend on how many
        # random numbers model construction drew.
        order_generator=torch.Generator().manual_seed(cfg.seed),
        step=_step_function(cfg, model, loss_fn, optimizer, grads, batch_size),
        # Micro-batches exist to bound memory, so they also avoid a second copy of the data.
        bounded_memory=cfg.micro_batch_size is not None,
    )


def _step_function(cfg: DictConfig, model: nn.Module, loss_fn: Loss, optimizer: Optimizer, grads: FlatGradients, batch_size: int):
    """The update rule, chosen once: whole batches, or batches accumulated in micro-batches."""
    if cfg.micro_batch_size is None or cfg.micro_batch_size >= batch_size:
        return partial(train_step, model, loss_fn, optimizer, grads)
    return partial(accumulating_train_step, model, loss_fn, optimizer, grads, micro_batch_size=cfg.micro_batch_size)


def scaled_lr(lr: float, rule: str, batch_size: int, base_batch: int) -> float:
    """The learning rate after batch-size scaling: ``linear`` (Goyal et al. 2017) or ``sqrt`` (Krizhevsky 2014)."""
    if rule not in LR_SCALING:
        raise ConfigError("lr_scaling", rule, f"one of {', '.join(LR_SCALING)}")
    if base_batch < 1:
        raise ConfigError("lr_scaling_base_batch", base_batch, "an integer >= 1")
    return lr * LR_SCALING[rule](batch_size / base_batch)


def _scheduler_steps(cfg: DictConfig, plan: Plan, per_iteration: bool) -> int:
    """How many times the scheduler will be stepped, for schedules shaped over the whole run."""
    if plan.iterations is None:
        name = cfg.scheduler._target_.rsplit(".", 1)[-1]
        if name in NEEDS_RUN_LENGTH:
            raise ConfigError("scheduler", name, "a schedule that does not need the run length in advance (budget=seconds gives none)")
        return 1
    return plan.total_iterations if per_iteration else len(plan.iterations)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _epoch_metrics(run: Run, train_epoch_loss: float) -> dict[str, float]:
    """Epoch-end losses and accuracies, fetched from the device in one transfer."""
    ev = run.cfg.eval_batch_size
    parts = {"train": evaluate(run.model, run.loss_fn, run.train, ev)}
    if run.val is not None:
        parts["val"] = evaluate(run.model, run.loss_fn, run.val, ev)
    names, tensors = [], []
    for split, (loss, acc) in parts.items():
        names.append("loss/train_full" if split == "train" else "loss/val")
        tensors.append(loss)
        if acc is not None:
            names.append(f"acc/{split}")
            tensors.append(acc)
    values = torch.stack(tensors).tolist()
    return {"loss/train_epoch": train_epoch_loss, **dict(zip(names, values))}


def _log_epoch(logger: MetricLogger, metrics: dict[str, float], epoch: int, iteration: int, samples: int, train_seconds: float) -> None:
    """Epoch-level scalars against epoch (their main tags) and against the other three x-axes."""
    logger.log_dict(metrics, step=epoch)
    for name, value in metrics.items():
        logger.log(f"by_iteration/{name}", value, iteration)
        logger.log(f"by_samples/{name}", value, samples)
        logger.log(f"by_time_ms/{name}", value, round(train_seconds * 1000))


def _epoch_lengths(run: Run):
    """Iterations in each epoch: the plan's, or full epochs until a time budget runs out."""
    if run.plan.iterations is not None:
        yield from run.plan.iterations
    else:
        while True:
            yield run.iterations_per_epoch


def fit(run: Run, logger: MetricLogger) -> dict[str, Any]:
    """Train as long as the budget says, logging every iteration and every epoch. Returns the summary."""
    cfg = run.cfg
    progress = make_progress(str(cfg.progress).lower(), run.plan.total_iterations)
    iteration = samples = epoch = 0
    train_seconds = 0.0
    status, divergence, metrics = "done", None, {}
    try:
        for epoch, n_iterations in enumerate(_epoch_lengths(run), start=1):
            progress.start_epoch(epoch, len(run.plan.iterations) if run.plan.iterations else None)
            started = time.perf_counter()
            deadline = time.time() + (run.plan.seconds - train_seconds)
            order = epoch_order(run.order_generator, len(run.train), cfg.shuffle, run.device)
            source = run.train.source(order, run.bounded_memory)
            run.model.train()
            trace = train_one_epoch(
                run.step, run.optimizer, run.iteration_scheduler, source, run.slices[:n_iterations], progress, deadline
            )
            del source  # the epoch's copy of the data is not needed during evaluation
            # The one device→host transfer of the epoch; it also makes the timing honest on GPUs.
            losses = trace.losses.double().cpu().numpy()
            grad_norms = trace.grad_norms.double().cpu().numpy()
            train_seconds += time.perf_counter() - started

            steps = np.arange(iteration, iteration + len(losses))
            _log_iterations(logger, steps, losses, grad_norms, trace, cfg.log_every)
            iteration += len(losses)
            samples += sum(trace.batch_sizes)

            if not np.isfinite(losses).all():
                first = int(np.flatnonzero(~np.isfinite(losses))[0])
                status = "diverged"
                divergence = {"iteration": int(steps[first]), "epoch": epoch, "lr": trace.lrs[first], "batch_size": run.batch_size}
                log.warning("Diverged: non-finite loss at iteration %d (epoch %d, lr %g); stopping.", steps[first], epoch, trace.lrs[first])
                break

            metrics = _epoch_metrics(run, float(np.average(losses, weights=trace.batch_sizes)))
            _log_epoch(logger, metrics, epoch, iteration, samples, train_seconds)
            run.epoch_scheduler.step(metrics)
            log.info("epoch %d  %s  (%.2fs)", epoch, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()), time.perf_counter() - started)
            if train_seconds >= run.plan.seconds:
                break
    finally:
        progress.close()

    n_per_epoch = sum(b.stop - b.start for b in run.slices)
    return {
        "status": status,
        "epochs": epoch,
        "iterations": iteration,
        "iterations_per_epoch": run.iterations_per_epoch,
        "samples_seen": samples,
        "budget": {"unit": cfg.budget, "amount": cfg.budget if cfg.budget == "epochs" else cfg.budget_amount},
        "spent": {"epochs": samples / n_per_epoch, "samples": samples, "updates": iteration, "seconds": train_seconds},
        "batch_size": run.batch_size,
        "regime": run.regime,
        "lr": run.lr,
        "n_train": len(run.train),
        "n_val": len(run.val) if run.val is not None else 0,
        "train_loss": _finite_or_none(metrics.get("loss/train_full")),
        "train_epoch_loss": _finite_or_none(metrics.get("loss/train_epoch")),
        "val_loss": _finite_or_none(metrics.get("loss/val")),
        "train_acc": metrics.get("acc/train"),
        "val_acc": metrics.get("acc/val"),
        "seconds_per_epoch": train_seconds / epoch if epoch else None,
        "train_seconds": train_seconds,
        "divergence": divergence,
        "device": str(run.device),
        "torch_version": torch.__version__,
        "seed": cfg.seed,
        "dataset": {"name": cfg.dataset.name, "task": run.dataset.task, "n_classes": run.dataset.n_classes, **run.dataset.info},
    }


def _log_iterations(logger: MetricLogger, steps: np.ndarray, losses: np.ndarray, grad_norms: np.ndarray, trace: EpochTrace, log_every: int) -> None:
    """The epoch's per-iteration series, every ``log_every``-th global iteration."""
    keep = steps % log_every == 0
    wall_times = np.asarray(trace.wall_times)[keep]
    logger.log_series("loss/train_iter", steps[keep], losses[keep], wall_times)
    logger.log_series("grad_norm", steps[keep], grad_norms[keep], wall_times)
    logger.log_series("lr", steps[keep], np.asarray(trace.lrs)[keep], wall_times)


def hparams_of(run: Run) -> dict[str, Any]:
    """The hyperparameters a sweep varies, flattened for TensorBoard's HParams tab."""
    cfg = run.cfg
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "loss": cfg.loss._target_.rsplit(".", 1)[-1],
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": run.lr,
        "scheduler": cfg.scheduler._target_.rsplit(".", 1)[-1],
        "regime": run.regime,
        "batch_size": run.batch_size,
        "budget": cfg.budget,
        "budget_amount": cfg.epochs if cfg.budget == "epochs" else cfg.budget_amount,
        "seed": cfg.seed,
    }


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def record_failure(output_dir: str | Path, error: str, trace: str | None = None) -> None:
    """Leave ``summary.json`` with ``status: failed`` and the error, so a sweep's report shows the job."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(out / SUMMARY_FILE, {"status": "failed", "error": error, "traceback": trace})


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment and write ``tb/``, ``summary.json`` and ``model.pt`` to ``cfg.output_dir``."""
    run = build_run(cfg)
    out = Path(cfg.output_dir)
    length = f"{cfg.epochs} epochs" if cfg.budget == "epochs" else f"a budget of {cfg.budget_amount:g} {cfg.budget}"
    log.info(
        "Training %s on %s (%s): %d train / %d val samples, batch size %d, %d iterations per epoch, %s",
        cfg.dataset.name, run.device, run.regime, len(run.train), len(run.val) if run.val else 0,
        run.batch_size, run.iterations_per_epoch, length,
    )
    if (out / SUMMARY_FILE).exists():
        raise ConfigError("output_dir", str(out), "a directory without a finished run (summary.json exists there)")
    logger = TensorBoardLogger(out / TB_DIR)
    status = "failed"
    try:
        logger.log_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```")
        logger.log_hparams(hparams_of(run))
        summary = fit(run, logger)
        status = summary["status"]
    finally:
        logger.log_status(status)
        logger.close()
    summary["hparams"] = hparams_of(run)

    weights_finite = all(torch.isfinite(p).all() for p in run.model.parameters())
    if weights_finite:
        torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, out / WEIGHTS_FILE)
    summary["weights_saved"] = bool(weights_finite)
    _write_json_atomic(out / SUMMARY_FILE, summary)
    log.info("Status: %s. Results in %s", summary["status"], out)
    log.info("TensorBoard logs: %s  —  open with: tensorboard --logdir %s --host 127.0.0.1", out / TB_DIR, out.parent)
    return summary
