"""What a run is, in words and as TensorBoard's HParams: its hyperparameters (the swept keys
first), its one-line description, and which parts of its data were standardised."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf
import torch

from runner import data as datasets
from runner.build import Run
from runner.rundir import hydra_job_of
from runner.text import plural

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


def hydra_job(out: Path) -> tuple[dict[str, Any], list[str]]:
    """This job's group choices and overrides when Hydra's CLI runs it, else nothing."""
    hydra_cfg = hydra_job_of(out)
    if hydra_cfg is None:
        return {}, []
    return dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task)


REGIME_WORDS = {"bgd": "batch gradient descent", "sgd": "stochastic gradient descent", "minibatch": "mini-batch"}


def describe_run(run: Run) -> str:
    """``digits (1438 train / 359 val samples) on cpu (2 threads): mlp, sparse_categorical_crossentropy,
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
    # On a CPU the thread count is worth a word: it sets the speed, and a full batch's sums
    # round differently with another count (the last bit of the weights).
    device = f"cpu ({plural(torch.get_num_threads(), 'thread')})" if run.device.type == "cpu" else str(run.device)
    return (
        f"{cfg.dataset.name} ({len(run.train)} train / {val}) on {device}: {model}, {run.loss_fn.option}, "
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
