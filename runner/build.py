"""A config turned into ready-to-train objects (:class:`Run`), writing nothing: the data on the
device, the model, loss, optimizer and schedulers, and the update step. Every error in a config
surfaces here, before any output exists."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from runner import data as datasets
from runner.batches import InMemorySplit, Split
from runner.budget import Plan, make_plan
from runner.cudagraph import GraphedStep, check_cuda_graph, make_capturable
from runner.data.memmap import MemmapSplit, load_memmap_parts
from runner.device import resolve_device
from runner.epochs import StopFlag
from runner.errors import ConfigError
from runner.instruments.hook import Instruments, make_instruments
from runner.loop import (
    EpochScheduler,
    FlatGradients,
    JointEvaluation,
    NoSchedulerStep,
    accumulating_train_step,
    batch_slices,
    dense_trunk,
    train_step,
)
from runner.losses import Loss
from runner.memory import check_fits, check_model_fits
from runner.registry import build
from runner.schedulers import NEEDS_RUN_LENGTH
from runner.validate import FLOAT32_MAX, check_combination, check_config, resolve_batch_size

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
    scheduler: Any  # the one scheduler object (stepped per iteration or per epoch)
    iteration_scheduler: Any
    epoch_scheduler: Any
    order_generator: torch.Generator
    step: Any  # (source, positions) -> (loss, grad_norm): one update
    bounded_memory: bool  # fetch batches without copying the whole epoch
    memory_estimate: int  # bytes one step is expected to need beyond the data
    # Under torchrun: one flag the ranks agree on, and the session (runner.launchers.distributed).
    stop_flag: Callable[[], StopFlag] = StopFlag
    distributed: Any = None
    instruments: Instruments = field(default_factory=Instruments)  # gradient noise, trajectory (off by default)
    joint_eval: JointEvaluation | None = None  # both splits in one forward pass at epoch ends

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


def to_device(part: datasets.Dataset, loss_fn: Loss, device: torch.device) -> InMemorySplit:
    y = torch.from_numpy(part.y)
    labels = y.to(device) if part.task == datasets.CLASSIFICATION else None
    return InMemorySplit(
        X=torch.from_numpy(part.X).to(device),
        Y=loss_fn.encode_targets(y.to(device), part.n_classes),
        labels=labels,
    )


def _load_parts(cfg: DictConfig) -> tuple[Any, Any]:
    """Training and validation parts, split and standardised (memmap: lazily, never loaded whole)."""
    if cfg.dataset.name == "memmap":
        if cfg.train_size is not None:
            raise ConfigError("train_size", cfg.train_size, "null with dataset=memmap (its parts are read from disk as they are)")
        return load_memmap_parts(cfg.dataset, cfg.val_fraction, cfg.seed)
    full = datasets.load_dataset(cfg.dataset)
    train_part, val_part = datasets.split(full, cfg.val_fraction, cfg.seed)
    if cfg.train_size is not None:
        train_part = datasets.training_subset(train_part, cfg.train_size, cfg.seed)
    return datasets.standardize(train_part, val_part, features=cfg.dataset.standardize, target=cfg.dataset.standardize_target)


def _ready_split(cfg: DictConfig, part: Any, loss_fn: Loss, device: torch.device) -> Split:
    """A part as the loop reads it: on the device, or streamed from disk block by block."""
    if cfg.dataset.name == "memmap":
        return MemmapSplit(part, loss_fn, device, cfg.dataset.block_size)
    return to_device(part, loss_fn, device)


def build_run(cfg: DictConfig) -> Run:
    """Validate ``cfg`` and build data, model, loss, optimizer and schedulers. Writes nothing."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    check_cuda_graph(cfg, device)
    train_part, val_part = _load_parts(cfg)
    check_combination(cfg, train_part, val_part)
    batch_size = resolve_batch_size(cfg.batch_size, len(train_part))
    slices = batch_slices(len(train_part), batch_size, cfg.drop_last)
    plan = make_plan(cfg.budget, cfg.budget_amount, cfg.epochs, [b.stop - b.start for b in slices])
    per_iteration = cfg.scheduler.interval == "iteration"
    scheduler_steps = _scheduler_steps(cfg, plan, per_iteration)
    lr = scaled_lr(cfg.optimizer.lr, cfg.lr_scaling, batch_size, cfg.lr_scaling_base_batch)

    seed_everything(cfg.seed)
    loss_fn: Loss = build("loss", cfg.loss)
    build_model = partial(
        build,
        "model",
        cfg.model,
        in_shape=train_part.feature_shape,
        out_features=loss_fn.output_dim(train_part.n_classes, train_part.target_dim),
    )
    check_model_fits("model", OmegaConf.to_container(cfg.model), build_model)
    model: nn.Module = build_model().to(device)
    grads = FlatGradients(list(model.parameters()))
    optimizer: Optimizer = build("optimizer", cfg.optimizer, params=model.parameters(), lr=lr)
    if cfg.cuda_graph:
        make_capturable(optimizer)
    scheduler = build("scheduler", cfg.scheduler, exclude=("interval",), optimizer=optimizer, total_steps=scheduler_steps)

    bounded_memory = cfg.micro_batch_size is not None
    train_split = _ready_split(cfg, train_part, loss_fn, device)
    # The update skips a dense model's nn.Flatten when the batches come as flat rows (same numbers).
    trunk = dense_trunk(model) if isinstance(train_split, InMemorySplit) else None
    if trunk is not None:
        train_split = replace(train_split, flat_batches=True)
    val_split = _ready_split(cfg, val_part, loss_fn, device) if val_part is not None else None
    joint_eval = None if bounded_memory or val_split is None else JointEvaluation.of([train_split, val_split], cfg.eval_batch_size)
    data_copy = 0 if bounded_memory or cfg.dataset.name == "memmap" else train_split.X.nbytes + train_split.Y.nbytes
    data_copy += joint_eval.nbytes if joint_eval is not None else 0
    noise_rows = min(cfg.noise.micro_batch_size, len(train_part)) if cfg.noise.every > 0 else None
    memory_estimate = check_fits(model, train_part.feature_shape, device, batch_size, cfg.micro_batch_size, data_copy, noise_rows)
    instruments = make_instruments(cfg, model, loss_fn, optimizer, train_split, plan.total_iterations)

    return Run(
        cfg=cfg,
        device=device,
        dataset=train_part,
        train=train_split,
        val=val_split,
        batch_size=batch_size,
        slices=slices,
        plan=plan,
        lr=lr,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        iteration_scheduler=scheduler if per_iteration else NoSchedulerStep(),
        epoch_scheduler=NoSchedulerStep() if per_iteration else EpochScheduler(scheduler),
        # Its own generator: the data order for a seed does not depend on how many
        # random numbers model construction drew.
        order_generator=torch.Generator().manual_seed(cfg.seed),
        step=instruments.wrap(step_function(cfg, model if trunk is None else trunk, loss_fn, optimizer, grads, batch_size)),
        # Micro-batches exist to bound memory, so they also avoid a second copy of the data.
        bounded_memory=bounded_memory,
        memory_estimate=memory_estimate,
        instruments=instruments,
        joint_eval=joint_eval,
    )


def step_function(cfg: DictConfig, model: nn.Module, loss_fn: Loss, optimizer: Optimizer, grads: FlatGradients, batch_size: int):
    """The update rule, chosen once: whole batches (captured as a CUDA graph with ``cuda_graph``),
    or batches accumulated in micro-batches."""
    if cfg.micro_batch_size is None or cfg.micro_batch_size >= batch_size:
        step = partial(train_step, model, loss_fn, optimizer, grads, grad_clip=cfg.grad_clip)
        return GraphedStep(step, batch_size, grads.flat.device) if cfg.cuda_graph else step
    return partial(
        accumulating_train_step, model, loss_fn, optimizer, grads, micro_batch_size=cfg.micro_batch_size, grad_clip=cfg.grad_clip
    )


def scaled_lr(lr: float, rule: str, batch_size: int, base_batch: int) -> float:
    """The learning rate after batch-size scaling: ``linear`` (Goyal et al. 2017) or ``sqrt`` (Krizhevsky 2014)."""
    if rule not in LR_SCALING:
        raise ConfigError("lr_scaling", rule, f"one of {', '.join(LR_SCALING)}")
    if base_batch < 1:
        raise ConfigError("lr_scaling_base_batch", base_batch, "an integer >= 1")
    scaled = lr * LR_SCALING[rule](batch_size / base_batch)
    if scaled > FLOAT32_MAX:
        raise ConfigError("optimizer.lr", lr, f"a learning rate that stays within float32 after lr_scaling={rule} (here {scaled:g})")
    return scaled


def _scheduler_steps(cfg: DictConfig, plan: Plan, per_iteration: bool) -> int:
    """How many times the scheduler will be stepped, for schedules shaped over the whole run."""
    if plan.iterations is None:
        name = cfg.scheduler._target_.rsplit(".", 1)[-1]
        if name in NEEDS_RUN_LENGTH:
            raise ConfigError("scheduler", name, "a schedule that does not need the run length in advance (budget=seconds gives none)")
        return 1
    return plan.total_iterations if per_iteration else len(plan.iterations)
