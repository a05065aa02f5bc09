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
from runner.loop import (
    NoSchedulerStep,
    batch_slices,
    epoch_order,
    evaluate,
    iterations_per_epoch,
    train_one_epoch,
)
from runner.losses import Loss
from runner.progress import make_progress
from runner.registry import build
from runner.validate import check_combination, check_config, resolve_batch_size

log = logging.getLogger(__name__)

TB_DIR, SUMMARY_FILE, WEIGHTS_FILE = "tb", "summary.json", "model.pt"


@dataclass
class Split:
    """One split on the training device: inputs, loss-ready targets, and class labels for accuracy."""

    X: Tensor
    Y: Tensor
    labels: Tensor | None

    def __len__(self) -> int:
        return len(self.X)


@dataclass
class Run:
    """Everything a training run needs, built and validated."""

    cfg: DictConfig
    device: torch.device
    dataset: datasets.Dataset  # the training part, on the host (for its metadata)
    train: Split
    val: Split | None
    batch_size: int
    iterations_per_epoch: int
    model: nn.Module
    loss_fn: Loss
    optimizer: Optimizer
    iteration_scheduler: Any
    epoch_scheduler: Any
    order_generator: torch.Generator

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


def _to_device(part: datasets.Dataset, loss_fn: Loss, device: torch.device) -> Split:
    y = torch.from_numpy(part.y)
    labels = y.to(device) if part.task == datasets.CLASSIFICATION else None
    return Split(
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
    ipe = iterations_per_epoch(len(train_part), batch_size, cfg.drop_last)

    seed_everything(cfg.seed)
    loss_fn: Loss = build("loss", cfg.loss)
    model: nn.Module = build(
        "model",
        cfg.model,
        in_shape=train_part.feature_shape,
        out_features=loss_fn.output_dim(train_part.n_classes, train_part.target_dim),
    ).to(device)
    optimizer: Optimizer = build("optimizer", cfg.optimizer, params=model.parameters())
    per_iteration = cfg.scheduler.interval == "iteration"
    total_steps = cfg.epochs * ipe if per_iteration else cfg.epochs
    scheduler = build("scheduler", cfg.scheduler, exclude=("interval",), optimizer=optimizer, total_steps=total_steps)

    return Run(
        cfg=cfg,
        device=device,
        dataset=train_part,
        train=_to_device(train_part, loss_fn, device),
        val=_to_device(val_part, loss_fn, device) if val_part is not None else None,
        batch_size=batch_size,
        iterations_per_epoch=ipe,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        iteration_scheduler=scheduler if per_iteration else NoSchedulerStep(),
        epoch_scheduler=NoSchedulerStep() if per_iteration else scheduler,
        # Its own generator: the data order for a seed does not depend on how many
        # random numbers model construction drew.
        order_generator=torch.Generator().manual_seed(cfg.seed),
    )


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _epoch_metrics(run: Run, train_epoch_loss: float) -> dict[str, float]:
    """Epoch-end losses and accuracies, fetched from the device in one transfer."""
    ev = run.cfg.eval_batch_size
    parts = {"train": evaluate(run.model, run.loss_fn, run.train.X, run.train.Y, run.train.labels, ev)}
    if run.val is not None:
        parts["val"] = evaluate(run.model, run.loss_fn, run.val.X, run.val.Y, run.val.labels, ev)
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


def fit(run: Run, logger: MetricLogger) -> dict[str, Any]:
    """Train for ``cfg.epochs`` epochs, logging every iteration and every epoch. Returns the summary."""
    cfg = run.cfg
    slices = batch_slices(len(run.train), run.batch_size, cfg.drop_last)
    progress = make_progress(str(cfg.progress).lower(), cfg.epochs, run.iterations_per_epoch)
    iteration = samples = 0
    train_seconds = 0.0
    status, divergence, metrics = "done", None, {}
    epoch = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            progress.start_epoch(epoch)
            started = time.perf_counter()
            order = epoch_order(run.order_generator, len(run.train), cfg.shuffle, run.device)
            trace = train_one_epoch(
                run.model, run.loss_fn, run.optimizer, run.iteration_scheduler,
                run.train.X, run.train.Y, order, slices, progress,
            )
            # The one device→host transfer of the epoch; it also makes the timing honest on GPUs.
            losses = trace.losses.double().cpu().numpy()
            grad_norms = trace.grad_norms.double().cpu().numpy()
            train_seconds += time.perf_counter() - started

            steps = np.arange(iteration, iteration + len(losses))
            keep = steps % cfg.log_every == 0
            logger.log_series("loss/train_iter", steps[keep], losses[keep], np.asarray(trace.wall_times)[keep])
            logger.log_series("grad_norm", steps[keep], grad_norms[keep], np.asarray(trace.wall_times)[keep])
            logger.log_series("lr", steps[keep], np.asarray(trace.lrs)[keep], np.asarray(trace.wall_times)[keep])
            iteration += len(losses)
            samples += sum(trace.batch_sizes)

            if not np.isfinite(losses).all():
                first = int(np.flatnonzero(~np.isfinite(losses))[0])
                status = "diverged"
                divergence = {"iteration": int(steps[first]), "epoch": epoch, "lr": trace.lrs[first], "batch_size": run.batch_size}
                log.warning("Diverged: non-finite loss at iteration %d (epoch %d, lr %g); stopping.", steps[first], epoch, trace.lrs[first])
                break

            epoch_loss = float(np.average(losses, weights=trace.batch_sizes))
            metrics = _epoch_metrics(run, epoch_loss)
            _log_epoch(logger, metrics, epoch, iteration, samples, train_seconds)
            run.epoch_scheduler.step(*([metrics.get("loss/val", metrics["loss/train_full"])] if _is_plateau(run) else []))
            log.info("epoch %d/%d  %s  (%.2fs)", epoch, cfg.epochs, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()), time.perf_counter() - started)
    finally:
        progress.close()

    epochs_done = epoch if status == "done" else epoch - 1
    return {
        "status": status,
        "epochs": epochs_done,
        "iterations": iteration,
        "iterations_per_epoch": run.iterations_per_epoch,
        "samples_seen": samples,
        "batch_size": run.batch_size,
        "regime": run.regime,
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


def _is_plateau(run: Run) -> bool:
    return isinstance(run.epoch_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def hparams_of(run: Run) -> dict[str, Any]:
    """The hyperparameters a sweep varies, flattened for TensorBoard's HParams tab."""
    cfg = run.cfg
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "loss": cfg.loss._target_.rsplit(".", 1)[-1],
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.optimizer.lr,
        "scheduler": cfg.scheduler._target_.rsplit(".", 1)[-1],
        "regime": run.regime,
        "batch_size": run.batch_size,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
    }


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment and write ``tb/``, ``summary.json`` and ``model.pt`` to ``cfg.output_dir``."""
    run = build_run(cfg)
    out = Path(cfg.output_dir)
    log.info(
        "Training %s on %s (%s): %d train / %d val samples, batch size %d, %d iterations per epoch, %d epochs",
        cfg.dataset.name, run.device, run.regime, len(run.train), len(run.val) if run.val else 0,
        run.batch_size, run.iterations_per_epoch, cfg.epochs,
    )
    logger = TensorBoardLogger(out / TB_DIR)
    try:
        logger.log_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```")
        summary = fit(run, logger)
        logger.log_hparams(hparams_of(run), ["loss/train_full", "loss/val", "acc/val"])
    finally:
        logger.close()

    weights_finite = all(torch.isfinite(p).all() for p in run.model.parameters())
    if weights_finite:
        torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, out / WEIGHTS_FILE)
    summary["weights_saved"] = bool(weights_finite)
    _write_json_atomic(out / SUMMARY_FILE, summary)
    log.info("Status: %s. Results in %s", summary["status"], out)
    log.info("TensorBoard logs: %s  —  open with: tensorboard --logdir %s --host 127.0.0.1", out / TB_DIR, out.parent)
    return summary
