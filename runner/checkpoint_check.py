"""A loaded checkpoint is input: accept only a state this runner could have written for this run.

:func:`check_checkpoint` compares a payload, field by field, with what
:func:`runner.attempts.checkpoint_payload` writes for the run being resumed: the model's,
optimizer's and scheduler's state dicts and the random states have the structure, types
and shapes of the run's own (every number finite); the training state (:class:`TrainState`)
sits on the run's plan — epoch and position within it, the iteration and sample counts
those imply, the batch sizes and losses of the epoch so far, the epoch's order a
permutation of the training set — with its other fields of the types and ranges the loop
gives them at a checkpoint.

A failure raises :class:`ImpossibleCheckpoint` naming the field: not a
:class:`~runner.errors.RunnerError`, so :func:`runner.checkpoint.load_checkpoint` logs it
and falls back to ``prev.ckpt``, and refuses in one line when that one fails too. Nothing
is restored and nothing written before the check.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any

import torch

from runner.checkpoint import rng_state
from runner.epochs import TrainState

FORMATS = (1, 2)
TOP_KEYS = {"format", "config", "model", "optimizer", "scheduler", "state", "rng", "instruments", "tensorboard"}
SAVED_STATUSES = ("running", "interrupted")  # a diverged, early-stopped or finished state is never saved


class ImpossibleCheckpoint(ValueError):
    """A checkpoint field holds a value this runner never writes."""

    def __init__(self, field: str, value: Any, expected: str):
        shown = repr(value) if not isinstance(value, torch.Tensor) else f"tensor of shape {tuple(value.shape)}, {value.dtype}"
        super().__init__(f"{field}={_short(shown)} (expected {expected})")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ scalars
def _int(field: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImpossibleCheckpoint(field, value, "an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ImpossibleCheckpoint(field, value, f"an integer in [{low}, {high if high is not None else '∞'}]")
    return value


def _number(field: str, value: Any, finite: bool = True, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ImpossibleCheckpoint(field, value, "a number")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ImpossibleCheckpoint(field, value, "a finite number")
    if low is not None and value < low:
        raise ImpossibleCheckpoint(field, value, f"a number >= {low}")
    return float(value)


def _metrics(field: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ImpossibleCheckpoint(field, value, "a dict of metric names to numbers")
    for key, number in value.items():
        _number(f"{field}[{key!r}]", number)


def _tensor_like(field: str, value: Any, reference: torch.Tensor, finite: bool = True) -> None:
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        raise ImpossibleCheckpoint(field, value, f"a tensor of shape {tuple(reference.shape)}, {reference.dtype}")
    if value.shape != reference.shape or value.dtype != reference.dtype:
        raise ImpossibleCheckpoint(field, value, f"a tensor of shape {tuple(reference.shape)}, {reference.dtype}")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ImpossibleCheckpoint(field, value, "finite values")


# ------------------------------------------------------------------ structures
def same_structure(field: str, value: Any, reference: Any, finite: bool = True) -> None:
    """``value`` has ``reference``'s structure: the same keys, lengths, tensor shapes and
    dtypes, scalar types; every float not NaN (nor infinite with ``finite``). A ``None`` in
    the reference (a value not set yet) accepts a scalar or ``None``."""
    if isinstance(reference, torch.Tensor):
        _tensor_like(field, value, reference, finite)
    elif isinstance(reference, dict):
        if not isinstance(value, dict) or set(value) != set(reference):
            keys = sorted(map(str, reference))
            raise ImpossibleCheckpoint(field, value if not isinstance(value, dict) else sorted(map(str, value)), f"the keys {keys}")
        for key in reference:
            same_structure(f"{field}[{key!r}]", value[key], reference[key], finite)
    elif isinstance(reference, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(reference):
            raise ImpossibleCheckpoint(field, value, f"a sequence of {len(reference)}")
        for i, (got, want) in enumerate(zip(value, reference)):
            same_structure(f"{field}[{i}]", got, want, finite)
    elif reference is None:
        if value is not None and not isinstance(value, (Real, str)):
            raise ImpossibleCheckpoint(field, value, "None or a number")
        if isinstance(value, Real) and not isinstance(value, bool):
            _number(field, value, finite=False)
    elif isinstance(reference, bool):
        if not isinstance(value, bool):
            raise ImpossibleCheckpoint(field, value, "true or false")
    elif isinstance(reference, int):
        _int(field, value)
    elif isinstance(reference, float):
        _number(field, value, finite=False if math.isinf(reference) else finite)
    elif isinstance(reference, str):
        if not isinstance(value, str):
            raise ImpossibleCheckpoint(field, value, "a string")
    elif type(value) is not type(reference):
        raise ImpossibleCheckpoint(field, value, type(reference).__name__)


def _optimizer(run: Any, value: Any) -> None:
    reference = run.optimizer.state_dict()
    if not isinstance(value, dict) or set(value) != set(reference):
        raise ImpossibleCheckpoint("optimizer", value, f"the keys {sorted(reference)}")
    # Hyperparameters may be scheduled (lr), never reshaped: same groups, same keys, same params.
    same_structure("optimizer['param_groups']", value["param_groups"], reference["param_groups"], finite=False)
    for i, (got, want) in enumerate(zip(value["param_groups"], reference["param_groups"])):
        if list(got["params"]) != list(want["params"]):
            raise ImpossibleCheckpoint(f"optimizer['param_groups'][{i}]['params']", got["params"], f"{want['params']}")
        if "lr" in got:
            _number(f"optimizer['param_groups'][{i}]['lr']", got["lr"], low=0.0)
    shapes = dict(zip((p for g in reference["param_groups"] for p in g["params"]), (p.shape for g in run.optimizer.param_groups for p in g["params"])))
    state = value["state"]
    if not isinstance(state, dict) or not set(state) <= set(shapes):
        raise ImpossibleCheckpoint("optimizer['state']", state if not isinstance(state, dict) else sorted(state), f"per-parameter state for the parameters {sorted(shapes)}")
    for index, entry in state.items():
        if not isinstance(entry, dict):
            raise ImpossibleCheckpoint(f"optimizer['state'][{index}]", entry, "a dict")
        for key, part in entry.items():
            field = f"optimizer['state'][{index}][{key!r}]"
            if isinstance(part, torch.Tensor):
                if tuple(part.shape) not in (tuple(shapes[index]), ()) or not part.is_floating_point() and part.dtype != torch.int64:
                    raise ImpossibleCheckpoint(field, part, f"a tensor of the parameter's shape {tuple(shapes[index])}, or a scalar")
                if part.is_floating_point() and not bool(torch.isfinite(part).all()):
                    raise ImpossibleCheckpoint(field, part, "finite values")
            elif part is not None and not isinstance(part, (bool, Real)):
                raise ImpossibleCheckpoint(field, part, "a tensor or a number")
            elif isinstance(part, Real) and not isinstance(part, bool):
                _number(field, part)
    kinds = {tuple(sorted(entry)) for entry in state.values()}
    if len(kinds) > 1:
        raise ImpossibleCheckpoint("optimizer['state']", sorted(kinds), "the same state keys for every parameter")


# ------------------------------------------------------------------ the training state
def _plan_position(run: Any, epoch: int) -> tuple[int, int, int | None]:
    """(iterations done before ``epoch``, samples seen before it, iterations in it) on the plan."""
    sizes = [s.stop - s.start for s in run.slices]
    lengths = run.plan.iterations
    if lengths is None:  # a time budget: full epochs
        return (epoch - 1) * len(sizes), (epoch - 1) * sum(sizes), len(sizes)
    before = lengths[: epoch - 1]
    return sum(before), sum(sum(sizes[:n]) for n in before), (lengths[epoch - 1] if epoch <= len(lengths) else 0)


def _train_state(run: Any, value: Any) -> None:
    names = {f.name for f in dataclasses.fields(TrainState)}
    if not isinstance(value, dict) or set(value) != names:
        raise ImpossibleCheckpoint("state", value if not isinstance(value, dict) else sorted(value), f"the keys {sorted(names)}")
    n_epochs = len(run.plan.iterations) if run.plan.iterations is not None else None
    epoch = _int("state.epoch", value["epoch"], 1, None if n_epochs is None else n_epochs + 1)
    iterations_before, samples_before, in_epoch = _plan_position(run, epoch)
    position = _int("state.position", value["position"], 0, in_epoch)
    _int("state.iteration", value["iteration"], iterations_before + position, iterations_before + position)
    sizes = [s.stop - s.start for s in run.slices][:position]
    if not isinstance(value["epoch_batch_sizes"], list) or value["epoch_batch_sizes"] != sizes or not all(type(b) is int for b in value["epoch_batch_sizes"]):
        raise ImpossibleCheckpoint("state.epoch_batch_sizes", value["epoch_batch_sizes"], f"this epoch's first {position} batch sizes")
    _int("state.samples", value["samples"], samples_before + sum(sizes), samples_before + sum(sizes))
    losses = value["epoch_losses"]
    if not isinstance(losses, list) or len(losses) != position:
        raise ImpossibleCheckpoint("state.epoch_losses", losses, f"a list of {position} losses")
    for i, loss in enumerate(losses):
        _number(f"state.epoch_losses[{i}]", loss)
    _order(run, value["order"], position)
    _number("state.train_seconds", value["train_seconds"], low=0.0)
    _metrics("state.metrics", value["metrics"], optional=False)
    if value["status"] not in SAVED_STATUSES:
        raise ImpossibleCheckpoint("state.status", value["status"], f"one of {', '.join(SAVED_STATUSES)}")
    if value["divergence"] is not None:
        raise ImpossibleCheckpoint("state.divergence", value["divergence"], "None: a diverged run saves no checkpoint")
    for flag in ("stopped_early", "restored_best"):
        if value[flag] is not False:
            raise ImpossibleCheckpoint(f"state.{flag}", value[flag], "false: set only after the last checkpoint")
    _best(run, value, epoch)
    _metrics("state.initial_metrics", value["initial_metrics"], optional=value["iteration"] == 0)


def _order(run: Any, order: Any, position: int) -> None:
    n = len(run.train)
    if order is None:
        if position > 0:
            raise ImpossibleCheckpoint("state.order", order, "the epoch's sample order: the epoch is under way")
        return
    if not isinstance(order, torch.Tensor) or order.dtype != torch.int64 or order.shape != (n,):
        raise ImpossibleCheckpoint("state.order", order, f"a permutation of the {n} training samples (int64)")
    if not torch.equal(torch.sort(order).values, torch.arange(n)):
        raise ImpossibleCheckpoint("state.order", order, f"a permutation of 0..{n - 1}")
    if not run.cfg.shuffle and not torch.equal(order, torch.arange(n)):
        raise ImpossibleCheckpoint("state.order", order, "0..n-1 in order (shuffle=false)")


def _best(run: Any, value: dict[str, Any], epoch: int) -> None:
    finished = epoch > 1  # every finished epoch sets the best so far
    best_epoch, best_loss, best_metrics, best_weights = (value[k] for k in ("best_epoch", "best_loss", "best_metrics", "best_weights"))
    if not finished:
        for key in ("best_epoch", "best_loss", "best_metrics", "best_weights"):
            if value[key] is not None:
                raise ImpossibleCheckpoint(f"state.{key}", value[key], "None: no epoch has finished")
        return
    _int("state.best_epoch", best_epoch, 1, epoch - 1)
    _number("state.best_loss", best_loss)
    _metrics("state.best_metrics", best_metrics, optional=False)
    if run.cfg.early_stopping_restore_best:
        same_structure("state.best_weights", best_weights, run.model.state_dict())
    elif best_weights is not None:
        raise ImpossibleCheckpoint("state.best_weights", best_weights, "None (early_stopping_restore_best=false)")


# ------------------------------------------------------------------ the whole payload
def check_checkpoint(run: Any, payload: Any) -> None:
    """Raise :class:`ImpossibleCheckpoint` unless ``payload`` is a state this runner could
    have written for ``run``. Reads only: the run is not touched."""
    if not isinstance(payload, dict) or not set(payload) >= TOP_KEYS - {"instruments"} or not set(payload) <= TOP_KEYS:
        raise ImpossibleCheckpoint("checkpoint", sorted(payload) if isinstance(payload, dict) else payload, f"the keys {sorted(TOP_KEYS)}")
    if payload["format"] not in FORMATS or isinstance(payload["format"], bool):
        raise ImpossibleCheckpoint("format", payload["format"], f"one of {FORMATS}")
    if not isinstance(payload["config"], dict):
        raise ImpossibleCheckpoint("config", payload["config"], "the run's config")
    _tensorboard(payload["tensorboard"])
    same_structure("model", payload["model"], run.model.state_dict())
    _optimizer(run, payload["optimizer"])
    same_structure("scheduler", payload["scheduler"], run.scheduler.state_dict(), finite=False)
    same_structure("rng", payload["rng"], rng_state(torch.Generator().manual_seed(0)) | {"cuda": payload["rng"].get("cuda") if isinstance(payload["rng"], dict) else None}, finite=False)
    instruments = payload.get("instruments")
    if instruments is not None and (not isinstance(instruments, dict) or not set(instruments) <= set(run.instruments.state_dict())):
        raise ImpossibleCheckpoint("instruments", instruments, f"the state of the instruments {sorted(run.instruments.state_dict())}")
    _train_state(run, payload["state"])


def _tensorboard(value: Any) -> None:
    expected = "[event file name, its size in bytes]"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ImpossibleCheckpoint("tensorboard", value, expected)
    # The name is checked where it is used (runner.rundir.event_file: a file of this run).
    _int("tensorboard[1]", value[1], 1)
