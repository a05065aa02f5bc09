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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from runner import data as datasets
from runner.board import board_command, dashboard_dir
from runner.data.memmap import MemmapSplit, load_memmap_parts
from runner.cudagraph import GraphedStep, check_cuda_graph, make_capturable
from runner.device import resolve_device
from runner.memory import check_fits, check_model_fits
from runner.aggregate import event_files
from runner.loggers import MetricLogger, TensorBoardLogger
from runner.budget import Plan, make_plan
from runner.errors import ConfigError, RunnerError
from runner.batches import InMemorySplit, Split
from runner.loop import (
    EpochScheduler,
    JointEvaluation,
    FlatGradients,
    NoSchedulerStep,
    accumulating_train_step,
    batch_slices,
    dense_trunk,
    train_step,
)
from runner.losses import Loss
from runner.checkpoint import load_checkpoint, restore_rng_state, rng_state
from runner.checkpoint import CheckpointWriter
from runner.checkpoint_check import check_checkpoint
from runner.epochs import StopFlag, TrainState, run_epochs, summary_of
from runner.instruments.hook import Instruments, make_instruments
from runner.registry import build
from runner.rundir import NEW_DIRECTORY, DiskFull, RunDirRefused, check_usable, event_file, exclusive, hydra_job_of, is_disk_full, keep_record, restore_record
from runner.schedulers import NEEDS_RUN_LENGTH
from runner.safefs import open_inside
from runner.text import plural
from runner.validate import FLOAT32_MAX, check_combination, check_config, resolve_batch_size

log = logging.getLogger(__name__)

SUMMARY_FILE, WEIGHTS_FILE, CHECKPOINT_DIR = "summary.json", "model.pt", "checkpoints"
CHECKPOINT_FORMAT = 2  # 2: the event file by name; 1 stored its path
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


def _to_device(part: datasets.Dataset, loss_fn: Loss, device: torch.device) -> InMemorySplit:
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
    return _to_device(part, loss_fn, device)


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
        step=instruments.wrap(_step_function(cfg, model if trunk is None else trunk, loss_fn, optimizer, grads, batch_size)),
        # Micro-batches exist to bound memory, so they also avoid a second copy of the data.
        bounded_memory=bounded_memory,
        memory_estimate=memory_estimate,
        instruments=instruments,
        joint_eval=joint_eval,
    )


def _step_function(cfg: DictConfig, model: nn.Module, loss_fn: Loss, optimizer: Optimizer, grads: FlatGradients, batch_size: int):
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


# Overrides that say where or how a run goes, never what it computes: not hyperparameters.
NOT_HPARAMS = frozenset({"output_dir", "progress", "resume", "device", "checkpoint_every", "checkpoint_interval_s", "eval_batch_size", "single_run_plots"})


def _hparam_value(value: Any) -> Any:
    """A config value as TensorBoard can show it: scalars as they are, lists as their text."""
    if isinstance(value, (DictConfig, ListConfig)):
        return str(OmegaConf.to_container(value, resolve=True))
    return value


def _group_fields(group: str, node: DictConfig) -> dict[str, Any]:
    """``optimizer.momentum``, ``scheduler.gamma`` ...: every field of a group's config but its target."""
    return {f"{group}.{key}": _hparam_value(value) for key, value in node.items() if not str(key).startswith("_")}


def hparams_of(run: Run, choices: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The hyperparameters that tell runs apart, flattened for TensorBoard's HParams tab.

    The group choices by name (``optimizer=momentum``, not the class both it and ``sgd``
    build), every field of the optimizer and scheduler (``optimizer.lr`` is the base
    learning rate, ``lr`` the one used after ``lr_scaling``), the batch size and regime as
    run, and every key the job overrode (so every swept key), with the value it took.

    Args:
        run: the built run.
        choices: Hydra's group choices (``HydraConfig.get().runtime.choices``); without
            them the names come from the config (dataset name, class names).
        overrides: the job's overrides (``HydraConfig.get().overrides.task``).
    """
    cfg = run.cfg
    choices = {k: v for k, v in (choices or {}).items() if v is not None}
    target = {group: cfg[group]._target_.rsplit(".", 1)[-1] for group in ("model", "loss", "optimizer", "scheduler")}
    hparams: dict[str, Any] = {
        "dataset": choices.get("dataset", cfg.dataset.name),
        **{group: choices.get(group, name) for group, name in target.items()},
        "regime": run.regime,
        "batch_size": run.batch_size,
        "lr": run.lr,
        "lr_scaling": cfg.lr_scaling,
        "lr_scaling_base_batch": cfg.lr_scaling_base_batch,
        **_group_fields("optimizer", cfg.optimizer),
        **_group_fields("scheduler", cfg.scheduler),
        "budget": cfg.budget,
        "budget_amount": cfg.epochs if cfg.budget == "epochs" else cfg.budget_amount,
        "seed": cfg.seed,
    }
    if "experiment" in choices:
        hparams["experiment"] = choices["experiment"]
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key in hparams or key in NOT_HPARAMS or override.is_delete():
            continue
        hparams[key] = choices[key] if key in choices else _hparam_value(OmegaConf.select(cfg, key))
    return hparams


def _hydra_job(out: Path) -> tuple[dict[str, Any], list[str]]:
    """This job's group choices and overrides when Hydra's CLI runs it, else nothing."""
    hydra_cfg = hydra_job_of(out)
    if hydra_cfg is None:
        return {}, []
    return dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task)


REGIME_WORDS = {"bgd": "batch gradient descent", "sgd": "stochastic gradient descent", "minibatch": "mini-batch"}


def describe_run(run: Run) -> str:
    """``digits (1438 train / 359 val samples) on cpu: mlp, sparse_categorical_crossentropy,
    SGD lr 0.1, mini-batch (batch size 32, 45 iterations per epoch), 20 epochs``.

    Every part is named for what it is (the regime as a regime, the optimizer by its
    class), so that "sgd" can never be read as the optimizer when it is the regime.
    """
    cfg = run.cfg
    val = f"{len(run.val)} val samples" if run.val is not None else "no validation"
    opt = cfg.optimizer
    optimizer = opt._target_.rsplit(".", 1)[-1]
    if opt.get("momentum"):
        optimizer += f"{' nesterov' if opt.get('nesterov') else ''} momentum {opt.momentum:g}"
    optimizer += f" lr {run.lr:g}"
    schedule = cfg.scheduler._target_.rsplit(".", 1)[-1]
    if schedule != "constant":
        optimizer += f" ({schedule} schedule, stepped per {cfg.scheduler.interval})"
    batches = f"batch size {run.batch_size}, {plural(run.iterations_per_epoch, 'iteration')} per epoch"
    length = (
        plural(cfg.epochs, "epoch") if cfg.budget == "epochs"
        else f"a budget of {plural(cfg.budget_amount, cfg.budget.removesuffix('s'))}"
    )
    model = cfg.model._target_.rsplit(".", 1)[-1].lower()
    return (
        f"{cfg.dataset.name} ({len(run.train)} train / {val}) on {run.device}: {model}, {run.loss_fn.option}, "
        f"{optimizer}, {REGIME_WORDS[run.regime]} ({batches}), {length}"
    )


def standardization_of(run: Run) -> dict[str, bool]:
    """What was scaled to mean 0, std 1 (class labels never are); recorded in ``summary.json``."""
    regression = run.dataset.task == datasets.REGRESSION
    return {"features": bool(run.cfg.dataset.standardize), "target": bool(regression and run.cfg.dataset.standardize_target)}


def standardization_line(run: Run) -> str:
    """One log line saying what was standardised, with statistics from which samples."""
    done = standardization_of(run)
    scaled, kept = [], []
    features = plural(math.prod(run.dataset.feature_shape), "feature")
    if done["features"]:
        scaled.append(f"{features}, each with its own mean and std")
    else:
        kept.append(f"the {features} (dataset.standardize=false)")
    if done["target"]:
        info = run.dataset.info
        stats = ", ".join(f"mean {m:.4g}, std {s:.4g}" for m, s in zip(info["target_mean"], info["target_std"]))
        scaled.append(f"the target ({stats})")
    elif run.dataset.task == datasets.REGRESSION:
        kept.append("the target (dataset.standardize_target=false)")
    line = f"Standardised with statistics of the {plural(len(run.train), 'training sample')} only: {'; '.join(scaled)}." if scaled else ""
    if kept:
        line += f"{' ' if line else ''}Not standardised: {'; '.join(kept)}."
    return line


def _write_atomic(path: Path, write: Any) -> None:
    """``write(tmp)``, then rename over ``path``: a reader sees the old file or the new one,
    and a failed write (a full disk) leaves no temporary file behind."""
    tmp = path.with_name(f".writing-{path.name}")
    try:
        with open_inside(path.parent, tmp, "wb") as handle:  # never through a link planted there
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    _write_atomic(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode()))


RESUMABLE_KEYS = {"epochs", "budget_amount", "progress", "resume", "checkpoint_every", "checkpoint_interval_s", "device", "output_dir", "eval_batch_size", "single_run_plots"}


def fit(run: Run, logger: MetricLogger, state: TrainState | None = None, save_checkpoint: Any = None) -> dict[str, Any]:
    """Train ``run`` (from ``state`` when resuming) and return its summary."""
    if run.distributed is not None:
        state = run.distributed.start(run, state)  # every rank starts from rank 0's state
    return summary_of(run, run_epochs(run, logger, state, save_checkpoint))


def record_failure(output_dir: str | Path, error: str, trace: str | None = None, status: str = "failed", resumable: bool = False) -> None:
    """Leave ``summary.json`` with the status (``failed``, ``oom``) and the error, so a sweep's
    report shows the job. No weights and no events: nothing that looks like a result.

    ``resumable``: the checkpoint is still good (a full disk), so a rerun continues from it
    instead of starting over. Best effort: on a full disk even this may not fit.
    """
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(out / SUMMARY_FILE, {"status": status, "error": error, "traceback": trace, "resumable": resumable})
    except OSError as err:
        log.error("Could not record the failure in %s: %s", out, err)


def _comparable_config(cfg: DictConfig) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in resolved.items() if k not in RESUMABLE_KEYS}


def _config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def _checkpoint_payload(run: Run, state: TrainState, log_position: tuple[str, int], config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds; ``config``: ``_comparable_config(run.cfg)``, resolved once per
    run by the caller (resolving it costs more than the rest of the payload)."""
    event_path, size = log_position
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "state": state.to_dict(),
        "rng": rng_state(run.order_generator),
        "instruments": run.instruments.state_dict(),
        # The event file's name only, never a path: a copied or moved run continues its own file.
        "tensorboard": [Path(event_path).name, size],
    }


def _refuse_other_config(out: Path, saved: Any, cfg: DictConfig) -> None:
    """A directory holds the results of one config: a rerun may only change the keys that
    continue or extend a run (``RESUMABLE_KEYS``)."""
    if not isinstance(saved, dict):
        return  # nothing recorded to compare with (a run made before configs were recorded)
    diffs = _config_differences(saved, _comparable_config(cfg))
    if diffs:
        raise RunDirRefused(
            out,
            f"holds a run made with a different config (differences: {'; '.join(diffs)}); only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change. Use resume=never in a new output directory to start over",
        )


def _restore(run: Run, payload: dict[str, Any]) -> TrainState:
    """Put a checkpoint back into ``run``. Raises on a payload of the wrong shape (wrong keys,
    tensor shapes, types): the caller then tries the previous checkpoint."""
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    restore_rng_state(payload["rng"], run.order_generator)
    run.instruments.load_state_dict(payload.get("instruments"))
    # A checkpoint saved on the way out of a stop says "interrupted"; resumed, it runs again.
    state = TrainState(**{**payload["state"], "status": "running"})
    if state.best_weights is not None:  # checkpoints are loaded onto the CPU
        state.best_weights = {k: v.to(run.device) for k, v in state.best_weights.items()}
    if not (isinstance(state.iteration, int) and isinstance(state.epoch, int) and state.iteration >= 0 and state.epoch >= 1):
        raise ValueError(f"impossible position: epoch {state.epoch!r}, iteration {state.iteration!r}")
    return state


def _resume_point(run: Run, out: Path, payload: Any, path: Path) -> tuple[TrainState, tuple[Path, int]]:
    """Check one loaded checkpoint against this run and restore it: the state and where the
    event file is cut back to. A different config is refused; anything malformed raises."""
    _refuse_other_config(out, payload["config"], run.cfg)
    check_checkpoint(run, payload)  # a state this runner could have written, or the previous checkpoint
    state = _restore(run, payload)
    stored, size = payload["tensorboard"]
    if payload.get("format") == 1 and isinstance(stored, str):
        stored = Path(stored).name  # format 1 stored the path it was written at
    path = event_file(out, stored)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise RunDirRefused(out / CHECKPOINT_DIR, f"the checkpoint says the event file ends at {size!r}, which is not a length this runner writes (a whole number of bytes > 0); it is not a checkpoint this runner wrote: {NEW_DIRECTORY}")
    if size > path.stat().st_size:
        raise RunDirRefused(path, f"is {path.stat().st_size} bytes, shorter than the {size} bytes the checkpoint says; restore it, or use resume=never in a new output directory")
    return state, (path, size)


def _read_summary(out: Path) -> dict[str, Any] | None:
    path = out / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        problem = f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    else:
        if isinstance(summary, dict) and isinstance(summary.get("status"), str):
            return summary
        problem = "is not a run summary (no status)"
    raise RunDirRefused(
        path, f"{problem}; it is damaged or not written by this runner. Move it away to resume from the checkpoint, or use resume=never in a new output directory"
    )


def _set_aside(out: Path, reason: str) -> None:
    """Move a previous attempt's files into ``out/.attempts/<n>-<reason>/``: nothing is deleted."""
    # The event files sit in the run directory itself: they go with the attempt they belong to.
    leftovers = [p for p in (*event_files(out), out / CHECKPOINT_DIR, out / SUMMARY_FILE, out / WEIGHTS_FILE) if p.exists()]
    if not leftovers:
        return
    attempts = out / ".attempts"
    target = attempts / f"{len(list(attempts.glob('*'))) + 1 if attempts.exists() else 1}-{reason}"
    target.mkdir(parents=True)
    for path in leftovers:
        os.replace(path, target / path.name)
    log.warning("Moved the previous attempt's files (%s) to %s", reason, target)


def _prior_attempt(run: Run, out: Path) -> tuple[str, Any]:
    """What the output directory already holds: ``finished`` (with its summary), ``resumable``
    (with the restored state and event-file position), or ``fresh``. Applies ``resume``
    (auto|must|never)."""
    cfg = run.cfg
    summary = _read_summary(out)
    status = summary["status"] if summary else None
    if status in ("done", "diverged"):
        if cfg.resume == "never":
            raise ConfigError("output_dir", str(out), "a directory without a finished run (or resume=auto to keep its result)")
        _refuse_other_config(out, summary.get("config"), cfg)
        return "finished", summary
    restartable = cfg.resume != "never" and (status not in ("failed", "oom") or summary.get("resumable") is True)
    resumed = load_checkpoint(out / CHECKPOINT_DIR, partial(_resume_point, run, out)) if restartable else None
    if resumed is not None:
        (state, position), path = resumed
        log.info("Resuming from %s (iteration %d).", path, state.iteration)
        return "resumable", (state, position)
    if cfg.resume == "must":
        raise ConfigError("resume", "must", f"a run to resume, and {out} has no loadable checkpoint (use resume=auto)")
    _set_aside(out, status or "incomplete")
    return "fresh", None


def train(cfg: DictConfig, run: Run | None = None) -> dict[str, Any]:
    """Run one experiment and write its TensorBoard event file, ``summary.json`` and ``model.pt``
    to ``cfg.output_dir`` (the event file directly in it: the directory is TensorBoard's run).

    Re-running into the same directory (``resume=auto``) returns a finished run's summary
    untouched, resumes an interrupted or killed one from its checkpoint, and starts a failed
    one over (the failed attempt's files are kept under ``.attempts/``). A rerun with a
    different config, or while another process uses the directory, is refused and changes
    nothing (:mod:`runner.rundir`). ``run``: this config already built by :func:`build_run`
    (the command line's preflight does that).
    """
    run = build_run(cfg) if run is None else replace(run, cfg=cfg)
    out = Path(cfg.output_dir)
    check_usable(out)
    try:
        with exclusive(out):
            try:
                kind, prior = _prior_attempt(run, out)
            except RunnerError:
                restore_record(out)
                raise
            if kind == "finished":
                restore_record(out)  # the record stays that of the results
                log.info("%s already holds a finished run (status %s); nothing to do.", out, prior["status"])
                return prior
            keep_record(out)
            return _train_into(run, out, *(prior if kind == "resumable" else (None, None)))
    except RunDirRefused:
        # Another process holds the directory: Hydra had already rewritten its .hydra/ for this job.
        restore_record(out)
        raise
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(out) from None
        raise


def _train_into(run: Run, out: Path, state: TrainState | None, log_position: tuple[Path, int] | None) -> dict[str, Any]:
    cfg = run.cfg
    log.info("Training %s", describe_run(run))
    log.info("%s", standardization_line(run))
    logger = TensorBoardLogger(out, resume_from=log_position)
    hparams = hparams_of(run, *_hydra_job(out))

    checkpoints = CheckpointWriter(out / CHECKPOINT_DIR)
    config = _comparable_config(cfg)

    def save_checkpoint(current: TrainState) -> None:
        checkpoints.submit(_checkpoint_payload(run, current, logger.position(), config))

    status = "failed"
    try:
        with checkpoints:  # every checkpoint on disk before the results say the run ended
            if state is None:
                logger.log_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```")
                logger.log_hparams(hparams)
                save_checkpoint(TrainState())
                checkpoints.wait()  # on disk before the first update: a kill from here on resumes
            summary = fit(run, logger, state, save_checkpoint)
            status = summary["status"]
            run.instruments.finish(out, logger, summary)
    finally:
        try:
            if status != "interrupted":
                logger.log_status(status)
        finally:
            logger.close()
    return write_results(run, out, summary, hparams)


def write_results(run: Run, out: Path, summary: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """Complete the summary and write ``model.pt`` (finite weights of a run not interrupted)
    and ``summary.json``; the fused launcher writes its members' results through this too."""
    status = summary["status"]
    summary["hparams"] = hparams
    summary["processes"] = run.distributed.world if run.distributed is not None else 1  # torchrun's ranks
    summary["standardized"] = standardization_of(run)
    summary["config"] = _comparable_config(run.cfg)  # what a rerun into this directory is compared with

    weights_finite = all(torch.isfinite(p).all() for p in run.model.parameters())
    if weights_finite and status != "interrupted":
        weights = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
        _write_atomic(out / WEIGHTS_FILE, partial(torch.save, weights))
    summary["weights_saved"] = bool(weights_finite and status != "interrupted")
    _write_json_atomic(out / SUMMARY_FILE, summary)
    log.info("Status: %s. Results in %s", summary["status"], out)
    log.info("Open in TensorBoard: %s", board_command(dashboard_dir(out)))
    return summary
