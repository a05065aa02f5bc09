"""Checks that a type cannot express, run before anything is written.

Hydra and the schema already reject unknown options and wrong types, and unknown keys
unless they carry ``+`` (:func:`check_keys` refuses those). What is left: ranges
(``batch_size >= 1``, a finite learning rate, seeds), sizes that cannot fit in memory, and
combinations that cannot work (cross-entropy on a regression target, a CNN on tabular
data). Every failure is a :class:`ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner.data import CLASSIFICATION, Dataset
from runner.errors import ConfigError
from runner.losses import LOSSES
from runner.memory import check_host_fits
from runner.registry import target_of
from runner.schema import CustomModelConfig, NoiseConfig, RunConfig, TrajectoryConfig
from runner.schedulers import EPOCH_ONLY, INTERVALS

PROGRESS_MODES = ("auto", "true", "false")
RESUME_MODES = ("auto", "must", "never")
# np.random.seed and scikit-learn's random_state take [0, 2**32 - 1]; torch and random take more.
SEED_RANGE = (0, 2**32 - 1)
# Synthetic data: generated in float64, converted to float32, then split and standardised
# (copies of the float32 array): bytes per value, all copies together.
SYNTHETIC_BYTES_PER_VALUE = 8 + 4 * 3
GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(key: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> None:
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo_ok and hi_ok):
        left, right = ("(" if low_open else "["), (")" if high_open or high == math.inf else "]")
        raise ConfigError(key, value, f"a finite number in {left}{low}, {high}{right}")


FLOAT32_MAX = float(np.finfo(np.float32).max)
# Counts become int64 arithmetic (numpy step arrays, torch indices): a larger one overflows.
INT64_MAX = 2**63 - 1


def _count(key: str, value: Any, low: int, meaning: str) -> None:
    """An integer count in ``[low, 2**63 - 1]``; ``meaning`` says what the key does."""
    if not (_is_int(value) and low <= value <= INT64_MAX):
        raise ConfigError(key, value, f"an integer in [{low}, 2**63 - 1] ({meaning})")


def _seed(key: str, value: Any) -> None:
    low, high = SEED_RANGE
    if not (_is_int(value) and low <= value <= high):
        raise ConfigError(key, value, f"an integer in [{low}, {high}] (2**32 - 1: what numpy and scikit-learn accept)")


def _subsequence(short: str, long: str) -> bool:
    """Every letter of ``short`` appears in ``long``, in order."""
    letters = iter(long)
    return bool(short) and all(c in letters for c in short)


def nearest_keys(key: str, known: list[str]) -> str:
    """'did you mean ...?' with the closest of ``known``, else all of them."""
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    if not close:  # nothing alike: an abbreviation (lr in learning_rate), else the nearest spelling
        short = [k for k in known if _subsequence(k, key) or _subsequence(key, k)]
        close = difflib.get_close_matches(key, short or known, n=1, cutoff=0.0)
    return f"did you mean {' or '.join(close)}? (python -m runner --help lists every key)"


def check_keys(cfg: DictConfig) -> None:
    """Every key is one the schema has, and every required value is set.

    Hydra's ``+key=value`` adds a key even to a schema-typed node, and ``~group`` deletes a
    mandatory group; both would otherwise be ignored or fail later with a traceback.
    """
    for field in dataclasses.fields(RunConfig):
        if field.name not in cfg or OmegaConf.is_missing(cfg, field.name):
            allowed = f"an option of conf/{field.name}/ (a run needs one)" if field.name in GROUPS else "a value (the schema's default was removed)"
            raise ConfigError(field.name, None, allowed)
    _check_node_keys(cfg, "", RunConfig)
    _check_node_keys(cfg.noise, "noise.", NoiseConfig)
    _check_node_keys(cfg.trajectory, "trajectory.", TrajectoryConfig)
    for group in GROUPS:
        schema = OmegaConf.get_type(cfg[group])
        if not dataclasses.is_dataclass(schema):
            raise ConfigError(group, OmegaConf.to_container(cfg[group]), f"an option of conf/{group}/")
        # A user's own model takes its constructor's keywords: +model.<name>=... is not a typo there.
        _check_node_keys(cfg[group], f"{group}.", schema, extra_ok=schema is CustomModelConfig)


def options_with_key(group: str, key: str) -> list[str]:
    """The options of ``conf/<group>/`` whose schema has ``key`` (``betas``: adam, adamw)."""
    import yaml

    from runner.cli import CONF_DIR  # only on the error path: cli imports this module
    from runner.schema import _SCHEMAS

    found = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        defaults = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("defaults") or []
        names = [d.split("/schema_", 1)[1].split("@", 1)[0] for d in defaults if isinstance(d, str) and "/schema_" in d]
        if any(key in {f.name for f in dataclasses.fields(_SCHEMAS[n])} for n in names if n in _SCHEMAS):
            found.append(path.stem)
    return found


def unknown_key_allowed(full_key: str, fields: list[str], value: Any = "...") -> str:
    """What is allowed instead of an unknown key (``optimizer.betas`` under sgd): the options
    of its group that have it, else the nearest spelling among ``fields``."""
    group, _, key = full_key.rpartition(".")
    elsewhere = options_with_key(group, key) if group in GROUPS else []
    if not elsewhere:
        return f"a key of the schema: {nearest_keys(key, fields)}"
    settable = ", ".join(sorted(f for f in fields if f != "_target_"))
    options = elsewhere[0] if len(elsewhere) == 1 else f"{', '.join(elsewhere[:-1])} or {elsewhere[-1]}"
    example = key if key in elsewhere else elsewhere[0]  # optimizer=momentum for optimizer.momentum
    return (f"a key of the {group} chosen ({settable}); {key} is a key of {group}={options}: "
            f"choose one, e.g. {group}={example} {full_key}={_as_override(value)}")


def _as_override(value: Any) -> str:
    """A value as it is typed on the command line: ``[0.9,0.99]``, without the spaces a shell splits."""
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return "[" + ",".join(_as_override(v) for v in value) + "]"
    return str(value)


def _check_node_keys(node: DictConfig, prefix: str, schema: type, extra_ok: bool = False) -> None:
    fields = [f.name for f in dataclasses.fields(schema)]
    for key in node:
        if key not in fields and not extra_ok:
            value = node._get_node(key)._value()
            raise ConfigError(f"{prefix}{key}", value, unknown_key_allowed(f"{prefix}{key}", fields, value))
    for key in fields:
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{prefix}{key}", None, "a value: it has no default")


def check_config(cfg: DictConfig) -> None:
    """Range and choice checks on the composed config (no data needed)."""
    check_keys(cfg)
    _seed("seed", cfg.seed)
    if not _is_int(cfg.epochs) or cfg.epochs < 1:
        raise ConfigError("epochs", cfg.epochs, "an integer >= 1")
    batch_size = cfg.batch_size
    if not (batch_size == "full" or (_is_int(batch_size) and batch_size >= 1)):
        raise ConfigError("batch_size", batch_size, "an integer >= 1, or 'full' for the whole training set")
    _number("val_fraction", cfg.val_fraction, 0, 1, high_open=True)
    _count("log_every", cfg.log_every, 1, "1 = every iteration")
    if cfg.micro_batch_size is not None:
        _count("micro_batch_size", cfg.micro_batch_size, 1, "or null for whole batches")
    if cfg.grad_clip is not None:
        _number("grad_clip", cfg.grad_clip, 0, low_open=True)
    if cfg.early_stopping_patience is not None:
        _count("early_stopping_patience", cfg.early_stopping_patience, 1, "epochs without improvement, or null")
    _number("early_stopping_min_delta", cfg.early_stopping_min_delta, 0, FLOAT32_MAX)
    if cfg.train_size is not None:
        _count("train_size", cfg.train_size, 1, "training samples to keep, or null for all")
    _count("checkpoint_every", cfg.checkpoint_every, 0, "0 = at epoch ends only")
    _number("checkpoint_interval_s", cfg.checkpoint_interval_s, 0, 86400)
    _count("eval_batch_size", cfg.eval_batch_size, 1, "samples per evaluation chunk")
    if cfg.resume not in RESUME_MODES:
        raise ConfigError("resume", cfg.resume, f"one of {', '.join(RESUME_MODES)}")
    if str(cfg.progress).lower() not in PROGRESS_MODES:
        raise ConfigError("progress", cfg.progress, f"one of {', '.join(PROGRESS_MODES)}")
    for group in ("model", "loss", "optimizer", "scheduler"):
        target_of(group, cfg[group])
    _check_optimizer(cfg.optimizer)
    _check_scheduler(cfg.scheduler)
    _check_dataset(cfg.dataset)
    _check_instruments(cfg)


TRAJECTORY_DIRECTIONS = ("pca", "random")


def _check_instruments(cfg: DictConfig) -> None:
    _count("noise.every", cfg.noise.every, 0, "measure every this many iterations; 0 = off")
    _count("noise.micro_batch_size", cfg.noise.micro_batch_size, 1, "samples per chunk of per-sample gradients")
    if not isinstance(cfg.trajectory.record, bool):
        raise ConfigError("trajectory.record", cfg.trajectory.record, "true or false")
    _count("trajectory.every", cfg.trajectory.every, 1, "record the weights every this many iterations")
    if not (_is_int(cfg.trajectory.resolution) and 3 <= cfg.trajectory.resolution <= 401):
        raise ConfigError("trajectory.resolution", cfg.trajectory.resolution, "an integer in [3, 401] (grid points per axis)")
    _number("trajectory.margin", cfg.trajectory.margin, 0, 10)
    if cfg.trajectory.directions not in TRAJECTORY_DIRECTIONS:
        raise ConfigError("trajectory.directions", cfg.trajectory.directions, f"one of {', '.join(TRAJECTORY_DIRECTIONS)}")


def _check_optimizer(opt: DictConfig) -> None:
    # The weights are float32 and these factors meet them in float32 kernels (LARS's
    # ``add_(alpha=lr)`` raises past float32's range): larger values are not "large", they are unusable.
    _number("optimizer.lr", opt.lr, 0, FLOAT32_MAX)
    _number("optimizer.weight_decay", opt.weight_decay, 0, FLOAT32_MAX)
    for key in ("momentum", "alpha", "dampening"):
        if key in opt:
            _number(f"optimizer.{key}", opt[key], 0, 1)
    for key in ("eps", "trust_coefficient"):
        if key in opt:
            _number(f"optimizer.{key}", opt[key], 0, FLOAT32_MAX, low_open=True)
    if "betas" in opt:
        betas = list(opt.betas)
        if len(betas) != 2:
            raise ConfigError("optimizer.betas", betas, "two numbers in [0, 1), e.g. [0.9,0.999]")
        for beta in betas:
            _number("optimizer.betas", beta, 0, 1, high_open=True)
    if opt.get("nesterov") and not (opt.momentum > 0 and opt.dampening == 0):
        raise ConfigError("optimizer.nesterov", True, "only with optimizer.momentum > 0 and optimizer.dampening = 0")


def _check_scheduler(sched: DictConfig) -> None:
    if sched.interval not in INTERVALS:
        raise ConfigError("scheduler.interval", sched.interval, f"one of {', '.join(INTERVALS)}")
    name = sched._target_.rsplit(".", 1)[-1]
    if name in EPOCH_ONLY and sched.interval != "epoch":
        raise ConfigError("scheduler.interval", sched.interval, f"'epoch' for scheduler={name} (it watches an epoch-level loss)")


def _check_dataset(ds: DictConfig) -> None:
    if "seed" in ds:
        _seed("dataset.seed", ds.seed)
    if "n" in ds and ds.n < 2:
        raise ConfigError("dataset.n", ds.n, "an integer >= 2")
    for key in ("noise", "cluster_std"):
        if key in ds:
            _number(f"dataset.{key}", ds[key], 0)
    for key in ("d", "n_features"):
        if key in ds and ds[key] < 1:
            raise ConfigError(f"dataset.{key}", ds[key], "an integer >= 1")
    for key in ("centers", "classes"):
        if key in ds and ds[key] < 2:
            raise ConfigError(f"dataset.{key}", ds[key], "an integer >= 2")
    if "n" in ds:
        # Generated in memory: refuse before numpy tries to allocate it.
        features = ds.get("d", ds.get("n_features", 2))
        values = (ds.n + ds.get("centers", 0)) * (features + 1)
        check_host_fits("dataset.n", ds.n, values * SYNTHETIC_BYTES_PER_VALUE, f"a data set ({ds.n:,} rows x {features:,} features)")


def resolve_batch_size(batch_size: Any, n_train: int) -> int:
    """``full`` → the training-set size; an integer must not exceed it."""
    if batch_size == "full":
        return n_train
    if batch_size > n_train:
        raise ConfigError(
            "batch_size", batch_size, f"at most the training-set size {n_train}, or 'full' (batch gradient descent)"
        )
    return batch_size


def check_combination(cfg: DictConfig, train: Dataset, val: Dataset | None = None) -> None:
    """Refuse model/loss choices the data cannot support (``val``: the validation part, if any)."""
    task = train.task
    loss_cls = target_of("loss", cfg.loss)
    model_cls = target_of("model", cfg.model)
    loss_name = loss_cls.option  # the name the user types: loss=<option>
    model_name = OmegaConf.select(cfg, "model._target_").rsplit(".", 1)[-1].lower()  # the option name: cnn, mlp...
    regression_losses = ", ".join(cls.option for cls in LOSSES.values() if not cls.needs_classes)
    if loss_cls.needs_classes and task != CLASSIFICATION:
        raise ConfigError(
            "loss", loss_name, f"dataset '{cfg.dataset.name}' has a regression target, so choose a regression loss: loss=<one of {regression_losses}>"
        )
    if loss_cls.target_domain == "one-sign" and task == CLASSIFICATION:
        raise ConfigError("loss", loss_name, "a loss for class labels: MAPE divides by the target, and one-hot targets are mostly 0")
    # A user's own model (model=custom) need not declare these: it takes what it is given.
    if getattr(model_cls, "needs_classes", False) and task != CLASSIFICATION:
        raise ConfigError("model", model_name, f"linear, mlp or cnn: logistic regression needs class labels and dataset '{cfg.dataset.name}' has a regression target")
    if getattr(model_cls, "needs_images", False) and len(train.feature_shape) != 3:
        raise ConfigError(
            "model", model_name, f"linear, logistic or mlp: a CNN needs images (C, H, W), and dataset '{cfg.dataset.name}' has features of shape {train.feature_shape}"
        )
    if task == CLASSIFICATION or loss_cls.target_domain == "any":
        return
    # A loss meant for non-negative (or one-signed) targets on targets outside that domain
    # does not fail: it trains to a meaningless number (a Poisson loss falling without
    # bound, MSLE clipping every negative target to the same eps, percentages of values
    # near 0). Refused rather than repaired: quietly turning standardisation off would run
    # a config other than the one recorded with the run.
    option, need = loss_cls.option, _DOMAIN_WORDS[loss_cls.target_domain]
    any_sign = ", ".join(cls.option for cls in LOSSES.values() if not cls.needs_classes and cls.target_domain == "any")
    data = f"dataset '{cfg.dataset.name}'" + (f" ({cfg.dataset.path})" if "path" in cfg.dataset else "")
    if cfg.dataset.standardize_target:
        raise ConfigError(
            "loss", option,
            f"a loss for targets of any sign ({any_sign}) while dataset.standardize_target=true, which centres the "
            f"target of {data} at 0 (about half of it negative): {option} needs {need}. "
            f"To keep loss={option}, set dataset.standardize_target=false (the target then keeps its own scale: "
            f"optimizer.lr may need to be smaller)",
        )
    low, high = _target_range([train, val])
    outside = low < 0 if loss_cls.target_domain == "non-negative" else low <= 0 <= high
    if outside:
        raise ConfigError(
            "loss", option,
            f"a loss for targets of any sign ({any_sign}): the targets of {data} range from {low:g} to {high:g}, and {option} needs {need}",
        )


_DOMAIN_WORDS = {
    "non-negative": "targets >= 0 (counts, rates, amounts)",
    "one-sign": "targets of one sign, none 0 (it divides by them, and values near 0 blow it up)",
}


def _target_range(parts: list[Any]) -> tuple[float, float]:
    """The smallest and the largest regression target in ``parts`` (None entries skipped).

    Reads the targets as stored: in memory, or the whole ``y.npy`` map of a memory-mapped
    data set (which its parts share: read once).
    """
    arrays: list[np.ndarray] = []
    for part in (p for p in parts if p is not None):
        y = part.y_map if hasattr(part, "y_map") else part.y
        if not any(y is seen for seen in arrays):
            arrays.append(y)
    return min(float(np.min(y)) for y in arrays), max(float(np.max(y)) for y in arrays)
