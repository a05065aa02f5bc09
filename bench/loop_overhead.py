"""Per-iteration overhead of the runner's training loop against a bare torch loop.

Target (from the issue): the runner with per-iteration TensorBoard logging on, divided by a
bare torch loop with no logging, on the same data and model in the same process run, is at
most 1.05 at batch size 1 and at batch size 32; every iteration's loss still reaches
TensorBoard with its exact step.

Setting: digits (1797 x 64; 1438 training samples after the default 20 % validation split),
the default MLP 64-128-10, SGD (lr 0.1), cross-entropy, CPU, torch's default thread count.

Variants, all in one process, interleaved round-robin (the order rotates every round) so a
busy neighbour on the machine hits them all alike; one untimed warm-up round first:

* ``bare``: the data as tensors, a permuted copy per epoch and index slices,
  ``zero_grad(set_to_none=True)``, forward, ``F.cross_entropy``, backward, ``SGD.step``.
  No logging, no gradient norm. Same initial weights and the same sample order as the runner.
* ``dataloader``: the same with ``DataLoader(TensorDataset, shuffle=True, num_workers=0)``.
* ``runner_loop``: what ``fit`` (``runner.epochs.run_epochs``) does per epoch for the per-iteration series,
  with TensorBoard on: ``build_run(cfg)``, then per epoch ``epoch_order`` +
  ``run.train.source`` + ``train_one_epoch`` + the one device-to-host transfer +
  ``TensorBoardLogger.log_series`` of ``loss/train_iter``, ``update/grad_norm`` and ``lr``
  (closing the logger is timed too). No epoch-end evaluation. This is the target's ratio.
* ``runner_fit``: the whole ``fit(run, TensorBoardLogger(...))`` (+ ``close``), which also
  evaluates the whole training and validation sets after every epoch.
* ``summarywriter_per_step``: ``bare`` + ``SummaryWriter.add_scalar(loss.item())`` every
  iteration, the usual way to log a per-iteration loss.
* ``lightning``: only when ``import lightning`` works (it is not a dependency).

``--cli`` adds the whole command line's cost per epoch against the bare loop's epoch, target at
most 1.10, two ways: the difference of fresh processes of 1 and 1 + k epochs divided by k, and,
inside the long process, the median time from one epoch end to the next (read back from the
run's event file; free of the start-up spread the difference carries). ``--cli-also OVERRIDE``
times a second command line with that override in the same rounds (e.g.
``checkpoint_interval_s=0``: a checkpoint at every epoch end, as before it existed).

``--dissect`` adds a second table that walks from ``bare`` to ``runner_loop`` one change at
a time, at batch sizes 1 and 32, to show where any overhead goes, plus "what-if" rows that
run ``runner_loop`` with a change the runner does not make (to size a fix).

``--device cuda`` times the loop on a GPU (every timed body ends with
``torch.cuda.synchronize()``, so queued kernels count): ``bare``, ``runner_loop``, ``runner_fit``
and ``runner_fit_cuda_graph`` (the whole ``fit`` with ``cuda_graph=true``: the update captured
once and replayed); the DataLoader, SummaryWriter and Lightning variants are CPU-only here.

Usage::

    .venv/bin/python bench/loop_overhead.py [--quick] [--dissect] [--cli [--cli-also OVERRIDE]] [--device cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

import runner.schema  # noqa: F401  (registers the config schemas)
from runner import tags
from runner.cli import CONF_DIR
from runner.loggers import TensorBoardLogger
from runner.loop import FlatGradients, dense_trunk, epoch_order, train_one_epoch
from runner.progress import NoProgress
from runner.train import build_run, fit

from machine import REPO, code_version, cpu_model, python_for_display, version  # bench/machine.py (the script's own folder)

try:
    import lightning  # noqa: F401

    HAVE_LIGHTNING = True
except ImportError:
    HAVE_LIGHTNING = False

TARGET = 1.05
# Epochs per measurement: about 0.4-0.6 s of the bare loop each on a 2-core EPYC VM.
EPOCHS = {"1": 2, "32": 40, "full": 200}
QUICK_EPOCHS = {"1": 1, "32": 10, "full": 50}
# The "buffer_series" what-if hands the logger at least this many points per call.
BUFFER_POINTS = 1024
TAG = tags.LOSS_ITER

# Where every variant runs (--device); the CPU unless asked.
DEVICE = torch.device("cpu")

# A measurement: set up untimed, return (timed body, untimed check/clean-up).
Body = Callable[[], None]
Variant = Callable[[int, int, Path], "tuple[Body, Callable[[], None]]"]


# --------------------------------------------------------------------------- config and data
def compose_cfg(overrides: list[str], output_dir: Path) -> object:
    """The config ``python -m runner <overrides>`` would run (as tests/conftest.py builds it)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["progress=false", f"device={DEVICE.type}", *overrides, f"output_dir={output_dir}"])
    GlobalHydra.instance().clear()
    return cfg


class Setting:
    """One batch size: the runner's config, and the bare loop's copy of its data and weights."""

    def __init__(self, batch: str, epochs: int, root: Path):
        self.cfg = compose_cfg([f"batch_size={batch}", f"epochs={epochs}"], root / "unused")
        self.graph_cfg = compose_cfg([f"batch_size={batch}", f"epochs={epochs}", "cuda_graph=true"], root / "unused") if DEVICE.type == "cuda" else None
        run = build_run(self.cfg)
        self.epochs = epochs
        self.batch_size = run.batch_size
        self.n = len(run.train)
        self.iterations_per_epoch = run.iterations_per_epoch
        self.iterations = epochs * self.iterations_per_epoch
        self.seed = int(self.cfg.seed)
        self.lr = run.lr
        # The runner's model is Flatten + Linear + ReLU + Linear on (N, 1, 8, 8) images; the
        # bare loop uses the same two Linear layers on the same rows, flattened once.
        self.X4, self.labels = run.train.X, run.train.labels
        self.X = self.X4.reshape(self.n, -1)
        self.init = copy.deepcopy(run.model.state_dict())
        self.runner_model = run.model
        self.loss_fn = run.loss_fn
        self.val_n = len(run.val) if run.val is not None else 0

    def plain_model(self) -> nn.Sequential:
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(DEVICE)
        model[0].load_state_dict({k[2:]: v for k, v in self.init.items() if k.startswith("1.")})
        model[2].load_state_dict({k[2:]: v for k, v in self.init.items() if k.startswith("3.")})
        return model

    def runner_model_copy(self) -> nn.Module:
        model = copy.deepcopy(self.runner_model)
        model.load_state_dict(self.init)
        return model

    def slices(self) -> list[slice]:
        return [slice(s, min(s + self.batch_size, self.n)) for s in range(0, self.n, self.batch_size)]


# --------------------------------------------------------------------------- variants
def manual_loop(
    s: Setting,
    *,
    runner_model: bool = False,
    runner_loss: bool = False,
    flat_grads: bool = False,
    grad_norm: bool = False,
    keep: bool = False,
    writer: SummaryWriter | None = None,
) -> Body:
    """A hand-written loop; the flags switch in the runner's pieces one at a time (``--dissect``).

    All flags off is ``bare``.
    """
    model = s.runner_model_copy() if runner_model else s.plain_model()
    # The runner's update runs its model without the leading nn.Flatten, on flat rows.
    forward = dense_trunk(model) if runner_model else model
    data = s.X
    labels = s.labels
    loss_fn = s.loss_fn if runner_loss else F.cross_entropy
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr)
    grads = FlatGradients(list(model.parameters())) if flat_grads else None
    generator = torch.Generator().manual_seed(s.seed)  # the runner's order stream
    slices, n, epochs = s.slices(), s.n, s.epochs

    def body() -> None:
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(DEVICE)
            X, y = data[order], labels[order]
            losses, norms = [], []
            for rows in slices:
                if grads is not None:
                    grads.zero()
                else:
                    optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(forward(X[rows]), y[rows])
                loss.backward()
                if grad_norm:
                    norms.append(grads.norm() if grads is not None else nn.utils.get_total_norm(p.grad for p in model.parameters()))
                optimizer.step()
                if keep:
                    losses.append(loss.detach())
                if writer is not None:
                    writer.add_scalar(TAG, loss.item(), step)
                step += 1
            if keep:
                torch.stack(losses).double().cpu().numpy()
                if norms:
                    torch.stack(norms).double().cpu().numpy()
        if writer is not None:
            writer.close()

    return body


def bare(s: Setting, logdir: Path):
    return manual_loop(s), lambda: None


def summarywriter_per_step(s: Setting, logdir: Path):
    writer = SummaryWriter(log_dir=str(logdir))

    def check() -> None:
        check_event_file(logdir, s.iterations)

    return manual_loop(s, writer=writer), check


def dataloader(s: Setting, logdir: Path):
    model = s.plain_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr)
    loader = DataLoader(
        TensorDataset(s.X, s.labels),
        batch_size=s.batch_size,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(s.seed),
    )
    epochs = s.epochs

    def body() -> None:
        for _ in range(epochs):
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()

    return body, lambda: None


def runner_epochs(
    s: Setting,
    logdir: Path | None,
    log_series: bool = True,
    train_only: bool = False,
    what_if: tuple[str, ...] = (),
):
    """``fit``'s per-epoch work for the per-iteration series, without the epoch-end evaluation.

    Mirrors ``runner.epochs.run_epochs``/``_run_segment`` with ``checkpoint_every=0`` (one
    segment per epoch). ``what_if`` swaps in changes the runner does not make, to size them:
    ``"no_norm"`` (the gradient-norm kernel replaced by a constant), ``"buffer_series"`` (the
    per-iteration series handed to the logger once at least BUFFER_POINTS points have piled
    up, instead of once per epoch).
    """
    run = build_run(s.cfg)
    cfg = run.cfg
    step = run.step
    if "no_norm" in what_if:
        flat_grads = next(a for a in step.args if isinstance(a, FlatGradients))
        zero = torch.zeros(())
        flat_grads.norm = lambda: zero
    logger = TensorBoardLogger(logdir) if log_series else None
    progress = NoProgress()
    kept: list[np.ndarray] = []
    buffered: list[tuple[np.ndarray, ...]] | None = [] if "buffer_series" in what_if else None

    def log_series(steps, losses, grad_norms, lrs, wall_times) -> None:
        logger.log_series(TAG, steps, losses, wall_times)
        logger.log_series(tags.GRAD_NORM, steps, grad_norms, wall_times)
        logger.log_series(tags.LR, steps, lrs, wall_times)

    def body() -> None:
        iteration = 0
        for _ in range(s.epochs):
            order = epoch_order(run.order_generator, len(run.train), cfg.shuffle, torch.device("cpu"))
            source = run.train.source(order.to(run.device), run.bounded_memory)
            run.model.train()
            deadline = time.time() + run.plan.seconds
            trace = train_one_epoch(step, run.optimizer, run.iteration_scheduler, source, run.slices, progress, deadline)
            del source
            losses = trace.losses.double().cpu().numpy()
            grad_norms = trace.grad_norms.double().cpu().numpy()
            if train_only:
                continue
            steps = np.arange(iteration, iteration + len(losses))
            if logger is not None:
                keep = steps % cfg.log_every == 0
                series = (steps[keep], losses[keep], grad_norms[keep], np.asarray(trace.lrs)[keep])
                wall_times = np.asarray(trace.wall_times)[keep]
                if buffered is None:
                    log_series(*series, wall_times)
                else:
                    buffered.append((*series, wall_times))
                    if sum(len(b[0]) for b in buffered) >= BUFFER_POINTS:
                        log_series(*(np.concatenate(parts) for parts in zip(*buffered)))
                        buffered.clear()
            iteration += len(losses)
            losses.tolist()  # as fit does, to keep them for the epoch's mean loss
            kept.append(losses)
            if not np.isfinite(losses).all():
                raise RuntimeError("diverged")
        if logger is not None:
            if buffered:
                log_series(*(np.concatenate(parts) for parts in zip(*buffered)))
            logger.close()

    def check() -> None:
        if logger is not None:
            check_event_file(logdir, s.iterations, np.concatenate(kept), also=(tags.GRAD_NORM, tags.LR))

    return body, check


def runner_loop(s: Setting, logdir: Path):
    return runner_epochs(s, logdir)


def runner_fit(s: Setting, logdir: Path, graph: bool = False):
    run = build_run(s.graph_cfg if graph else s.cfg)
    logger = TensorBoardLogger(logdir)
    summary: dict = {}

    def body() -> None:
        summary.update(fit(run, logger))
        logger.close()

    def check() -> None:
        assert summary["status"] == "done" and summary["iterations"] == s.iterations, summary
        check_event_file(logdir, s.iterations)

    return body, check


def runner_fit_cuda_graph(s: Setting, logdir: Path):
    return runner_fit(s, logdir, graph=True)


def lightning_variant(s: Setting, logdir: Path):  # pragma: no cover - Lightning is optional
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger as LTensorBoardLogger

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = s.plain_model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log(TAG, loss, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=s.lr)

    loader = DataLoader(TensorDataset(s.X, s.labels), batch_size=s.batch_size, shuffle=True, num_workers=0)
    trainer = L.Trainer(
        max_epochs=s.epochs,
        accelerator="cpu",
        devices=1,
        logger=LTensorBoardLogger(str(logdir), name="", version=""),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = Module()
    return (lambda: trainer.fit(module, loader)), (lambda: None)


def dissect_variants() -> dict[str, Variant]:
    """From ``bare`` to ``runner_loop``, one piece of the runner switched in at a time."""
    return {
        "0 bare": lambda s, d: (manual_loop(s), lambda: None),
        "1 + runner model (its layers after nn.Flatten, on flat rows)": lambda s, d: (manual_loop(s, runner_model=True), lambda: None),
        "2 + runner loss module (SparseCategoricalCrossentropy)": lambda s, d: (
            manual_loop(s, runner_model=True, runner_loss=True),
            lambda: None,
        ),
        "3 + FlatGradients (zero_ one buffer, backward accumulates)": lambda s, d: (
            manual_loop(s, runner_model=True, runner_loss=True, flat_grads=True),
            lambda: None,
        ),
        "4 + gradient norm every step": lambda s, d: (
            manual_loop(s, runner_model=True, runner_loss=True, flat_grads=True, grad_norm=True),
            lambda: None,
        ),
        "5 + keep loss/norm per step, stack + transfer per epoch": lambda s, d: (
            manual_loop(s, runner_model=True, runner_loss=True, flat_grads=True, grad_norm=True, keep=True),
            lambda: None,
        ),
        "6 runner train_one_epoch (train_step, source.take, bookkeeping)": lambda s, d: runner_epochs(
            s, None, log_series=False, train_only=True
        ),
        "7 + TensorBoard log_series (= runner_loop)": lambda s, d: runner_epochs(s, d),
        "what-if: runner_loop without the gradient norm": lambda s, d: runner_epochs(s, d, what_if=("no_norm",)),
        f"what-if: runner_loop, series logged per >= {BUFFER_POINTS} points, not per epoch": lambda s, d: runner_epochs(
            s, d, what_if=("buffer_series",)
        ),
        "what-if: both": lambda s, d: runner_epochs(s, d, what_if=("no_norm", "buffer_series")),
    }


# --------------------------------------------------------------------------- verification
CHECKS = {"files": 0, "points": 0}


def check_event_file(logdir: Path, iterations: int, losses: np.ndarray | None = None, also: tuple[str, ...] = ()) -> None:
    """Exactly one ``loss/train_iter`` point per iteration, steps 0..T-1 (and the right values)."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars(TAG)
    steps = [e.step for e in events]
    assert steps == list(range(iterations)), f"{logdir}: {len(steps)} {TAG} points, expected steps 0..{iterations - 1}"
    if losses is not None:
        values = np.array([e.value for e in events], dtype=np.float32)
        assert np.array_equal(values, losses.astype(np.float32)), f"{logdir}: {TAG} values differ from the losses"
    for tag in also:
        assert [e.step for e in acc.Scalars(tag)] == list(range(iterations)), f"{logdir}: {tag} steps"
    CHECKS["files"] += 1
    CHECKS["points"] += len(steps)


def same_work(s: Setting, root: Path) -> float:
    """Max |difference| between bare's and runner_loop's per-iteration losses over one epoch.

    Same initial weights, same sample order, same updates: they agree to float32 rounding,
    so the two loops time the same computation.
    """
    model, generator = s.plain_model(), torch.Generator().manual_seed(s.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr)
    order = torch.randperm(s.n, generator=generator).to(DEVICE)
    X, y = s.X[order], s.labels[order]
    bare_losses = []
    for rows in s.slices():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X[rows]), y[rows])
        loss.backward()
        optimizer.step()
        bare_losses.append(loss.item())
    one_epoch = copy.copy(s)
    one_epoch.epochs, one_epoch.iterations = 1, s.iterations_per_epoch
    body, _ = runner_epochs(one_epoch, root / "same_work")
    body()
    acc = EventAccumulator(str(root / "same_work"), size_guidance={"scalars": 0})
    acc.Reload()
    runner_losses = [e.value for e in acc.Scalars(TAG)]
    shutil.rmtree(root / "same_work", ignore_errors=True)
    diff = float(np.max(np.abs(np.array(bare_losses) - np.array(runner_losses))))
    assert len(runner_losses) == len(bare_losses) and diff < 1e-4, f"bare and runner differ by {diff}"
    return diff


# --------------------------------------------------------------------------- measuring
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A measurement during which other processes kept more than this share of a core busy is
# repeated (up to RETRIES times; the cleanest attempt is kept).
FOREIGN_LIMIT = 0.15
RETRIES = 3
RETRY_BUDGET = 30  # repeats in all, so a machine that stays busy cannot stretch a run without end
FOREIGN: list[float] = []
RETRIED = {"count": 0}


def synchronize() -> None:
    """Wait for the kernels a GPU body queued, so that they count in its time (no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (from /proc/stat); NaN if unknown."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure(
    variants: dict[str, Variant], settings: dict[str, Setting], rounds: int, root: Path
) -> dict[tuple[str, str], list[float]]:
    """Seconds per iteration for each (batch, variant), one sample per round, rounds interleaved.

    Each sample also records how busy the other processes on the machine kept the CPU
    meanwhile (from /proc/stat minus this process's own CPU time); a sample taken while
    they used more than FOREIGN_LIMIT of a core is taken again.
    """
    results: dict[tuple[str, str], list[float]] = {(b, v): [] for b in settings for v in variants}
    keys = list(results)
    counter = 0
    for r in range(rounds + 1):  # round 0 is the warm-up
        shift = r % len(keys)
        for batch, name in keys[shift:] + keys[:shift]:
            s = settings[batch]
            best = None
            for attempt in range(RETRIES if r else 1):
                counter += 1
                logdir = root / f"m{counter}"
                body, check = variants[name](s, logdir)
                gc.collect()
                busy0, own0 = busy_cpu_seconds(), own_cpu_seconds()
                t0 = time.perf_counter()
                body()
                synchronize()
                elapsed = time.perf_counter() - t0
                foreign = max(0.0, (busy_cpu_seconds() - busy0) - (own_cpu_seconds() - own0)) / elapsed
                check()
                shutil.rmtree(logdir, ignore_errors=True)
                if best is None or foreign < best[1]:
                    best = (elapsed, foreign)
                if not foreign > FOREIGN_LIMIT or RETRIED["count"] >= RETRY_BUDGET:  # not > : NaN stops too
                    break
                RETRIED["count"] += r > 0
            if r:
                results[(batch, name)].append(best[0] / s.iterations)
                FOREIGN.append(best[1])
        print(f"  round {r}/{rounds} {'(warm-up) ' if r == 0 else ''}done", file=sys.stderr, flush=True)
    return results


# --------------------------------------------------------------------------- the whole command line
# Extra epochs of the long CLI run over the short one (1 epoch), by batch size.
CLI_EXTRA = {"1": 10, "32": 40}
QUICK_CLI_EXTRA = {"1": 3, "32": 10}
CLI_TARGET = 1.10


def cli_seconds(batch: str, epochs: int, run_dir: Path, extra_args: tuple[str, ...] = ()) -> tuple[float, list[float]]:
    """Wall time of ``python -m runner batch_size=<batch> epochs=<epochs> [extra_args]`` in a fresh
    process, and the seconds between its consecutive epoch ends (see :func:`epoch_intervals`)."""
    cmd = [
        sys.executable, "-m", "runner", f"batch_size={batch}", f"epochs={epochs}", "progress=false", "device=cpu",
        f"hydra.run.dir={run_dir}", *extra_args,
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-2000:]}")
    intervals = epoch_intervals(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed, intervals


def epoch_intervals(run_dir: Path) -> list[float]:
    """Seconds from one epoch end to the next inside the run, from the wall times its event file
    records for ``loss/train_full`` (logged at each epoch end; epoch 0 is the initial weights).

    Each interval is one whole epoch of the command line — the previous epoch's checkpoint,
    the updates, the evaluation, the logging — with process start-up and the report outside
    it, so it does not carry their spread as the difference of two process times does."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    times = [event.wall_time for event in acc.Scalars("loss/train_full")]
    return list(np.diff(times[1:]))


def measure_cli(
    batches: list[str], extra: dict[str, int], rounds: int, root: Path, also: tuple[str, ...] = ()
) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    """Per (batch size, command line) and round: (CLI seconds per extra epoch, bare loop seconds
    per epoch, median seconds between epoch ends inside the long CLI run).

    The CLI's cost of one more epoch is (T(1 + k epochs) - T(1 epoch)) / k, both whole
    processes as a user runs them: start-up and the report cancel out; what remains per
    epoch is the loop plus the epoch-end evaluation, logging and checkpoint. The bare loop
    runs the same k epochs in this process, in the same round. ``also``: overrides, each
    timed as a second command line in the same rounds (e.g. ``checkpoint_interval_s=0``).
    """
    lines = [("defaults", ())] + [(override, (override,)) for override in also]
    out: dict[tuple[str, str], list[tuple[float, float, float]]] = {(b, label): [] for b in batches for label, _ in lines}
    for r in range(rounds + 1):  # round 0 warms the file cache
        for batch in batches:
            k = extra[batch]
            timed = {}
            for label, args in lines[r % len(lines):] + lines[: r % len(lines)]:
                short, _ = cli_seconds(batch, 1, root / "cli_short", args)
                long, intervals = cli_seconds(batch, 1 + k, root / "cli_long", args)
                timed[label] = (long - short) / k, statistics.median(intervals)
            body = manual_loop(Setting(batch, k, root))
            t0 = time.perf_counter()
            body()
            bare_epoch = (time.perf_counter() - t0) / k
            if r:
                for label, (per_epoch, inside) in timed.items():
                    out[(batch, label)].append((per_epoch, bare_epoch, inside))
        print(f"  cli round {r}/{rounds}{' (warm-up)' if r == 0 else ''} done", file=sys.stderr, flush=True)
    return out


def cli_table(results: dict[tuple[str, str], list[tuple[float, float, float]]], extra: dict[str, int]) -> list[str]:
    lines = [
        "| batch | command line | epochs (short / long) | CLI ms per extra epoch, median (min–max) | bare ms per epoch, median | "
        "ratio, median (min–max) | CLI ms from epoch end to epoch end, median (min–max) | its ratio to bare, median (min–max) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for (batch, label), samples in results.items():
        cli = [c * 1e3 for c, _, _ in samples]
        bare_ms = [b * 1e3 for _, b, _ in samples]
        ratios = [c / b for c, b, _ in samples]
        inside = [i * 1e3 for _, _, i in samples]
        inside_ratios = [i / b for _, b, i in samples]
        lines.append(
            f"| {batch} | {label} | 1 / {1 + extra[batch]} | {statistics.median(cli):.1f} ({min(cli):.1f}–{max(cli):.1f}) | "
            f"{statistics.median(bare_ms):.1f} | {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) | "
            f"{statistics.median(inside):.1f} ({min(inside):.1f}–{max(inside):.1f}) | "
            f"{statistics.median(inside_ratios):.3f} ({min(inside_ratios):.3f}–{max(inside_ratios):.3f}) |"
        )
    return lines


# --------------------------------------------------------------------------- reporting
def header(command: str, load_start: tuple[float, ...]) -> list[str]:
    load_end = os.getloadavg()
    return [
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; "
        f"torch intra-op threads {torch.get_num_threads()} (default, not set), inter-op threads {torch.get_num_interop_threads()}",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"tensorboard {version('tensorboard')}, lightning {version('lightning')}",
        *gpu_line(),
        f"- Command: `{command}`; runner code: {code_version()}",
        f"- Load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}; CPU used by other processes during the "
        f"timed runs (from /proc/stat): median {statistics.median(FOREIGN) if FOREIGN else math.nan:.3f} cores, "
        f"max {max(FOREIGN) if FOREIGN else math.nan:.3f}; {RETRIED['count']} runs repeated because others used "
        f"> {FOREIGN_LIMIT} of a core",
    ]


def gpu_line() -> list[str]:
    """The GPU, driver-side CUDA and torch's CUDA build, when the loop ran on one."""
    if DEVICE.type != "cuda":
        return []
    props = torch.cuda.get_device_properties(DEVICE)
    return [f"- Device: {props.name}, {props.total_memory / 2**30:.0f} GiB; torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]


def table(results, settings, variants, bare_name: str) -> list[str]:
    lines = [
        "| batch | iterations per run | variant | µs/iter median | µs/iter min | ratio to bare | ratio of minima |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for batch, s in settings.items():
        base = results[(batch, bare_name)]
        for name in variants:
            samples = results[(batch, name)]
            # The ratio is taken within each round (same machine state), then the median.
            ratio = statistics.median(v / b for v, b in zip(samples, base))
            lines.append(
                f"| {s.batch_size}{' (full)' if batch == 'full' else ''} | {s.iterations} ({s.epochs} ep) | {name} | "
                f"{statistics.median(samples) * 1e6:.1f} | {min(samples) * 1e6:.1f} | {ratio:.3f} | "
                f"{min(samples) / min(base):.3f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version, about a minute")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 9, --quick 3)")
    parser.add_argument(
        "--epochs",
        help="epochs per measurement by batch size, e.g. 1=2,32=40,full=200 (the default; --quick 1=1,32=10,full=50)",
    )
    parser.add_argument("--batches", default="1,32,full", help="comma-separated batch sizes (default 1,32,full)")
    parser.add_argument("--dissect", action="store_true", help="also walk from bare to runner_loop one piece at a time")
    parser.add_argument("--dissect-rounds", type=int, help="timed rounds of the dissection (default 9, --quick 3)")
    parser.add_argument(
        "--cli", action="store_true", help="also time the whole command line per extra epoch, in fresh processes"
    )
    parser.add_argument(
        "--cli-also", action="append", default=[], metavar="OVERRIDE",
        help="with --cli: also time the command line with this override, in the same rounds (repeatable)",
    )
    parser.add_argument("--cli-rounds", type=int, help="rounds of the command-line timing (default 5, --quick 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the loops run (default cpu)")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here")
    if DEVICE.type == "cuda" and (args.dissect or args.cli):
        parser.error("--dissect and --cli time the CPU loop only; drop them with --device cuda")
    rounds = args.rounds or (3 if args.quick else 9)
    dissect_rounds = args.dissect_rounds or (3 if args.quick else 9)
    epochs = dict(QUICK_EPOCHS if args.quick else EPOCHS)
    for item in (args.epochs or "").split(","):
        if item.strip():
            key, value = item.split("=")
            epochs[key.strip()] = int(value)
    batches = [b.strip() for b in args.batches.split(",")]
    missing = [b for b in batches if b not in epochs]
    if missing:
        parser.error(f"no epoch count for batch size(s) {', '.join(missing)}: give them with --epochs")
    command = " ".join(shlex.quote(a) for a in [python_for_display(), "bench/loop_overhead.py", *sys.argv[1:]])
    load_start = os.getloadavg()

    variants: dict[str, Variant] = {
        "bare": bare,
        "dataloader": dataloader,
        "runner_loop": runner_loop,
        "runner_fit": runner_fit,
        "summarywriter_per_step": summarywriter_per_step,
    }
    if HAVE_LIGHTNING:
        variants["lightning"] = lightning_variant
    if DEVICE.type == "cuda":
        variants = {"bare": bare, "runner_loop": runner_loop, "runner_fit": runner_fit, "runner_fit_cuda_graph": runner_fit_cuda_graph}

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench_loop_overhead_"))
    try:
        settings = {b: Setting(b, epochs[b], root) for b in batches}
        same = {b: same_work(settings[b], root) for b in batches}
        print("main table ...", file=sys.stderr, flush=True)
        results = measure(variants, settings, rounds, root)
        dissected = None
        if args.dissect:
            print("dissection ...", file=sys.stderr, flush=True)
            dissect_settings = {b: settings[b] for b in batches if b != "full"}
            dissected = measure(dissect_variants(), dissect_settings, dissect_rounds, root)
        cli = None
        cli_batches = [b for b in batches if b in CLI_EXTRA]
        cli_extra = QUICK_CLI_EXTRA if args.quick else CLI_EXTRA
        cli_rounds = args.cli_rounds or (2 if args.quick else 5)
        if args.cli and cli_batches:
            print("command line ...", file=sys.stderr, flush=True)
            cli = measure_cli(cli_batches, cli_extra, cli_rounds, root, tuple(args.cli_also))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - started

    s0 = next(iter(settings.values()))
    out = [
        "## Loop overhead: the runner against a bare torch loop",
        "",
        *header(command, load_start),
        f"- Setting: digits, {s0.n} training samples ({s0.val_n} held out for validation), MLP 64-128-10 (ReLU), "
        f"SGD lr {s0.lr:g}, cross-entropy, {'CPU' if DEVICE.type == 'cpu' else 'CUDA (each timed run ends with torch.cuda.synchronize())'}. {rounds} timed rounds after one warm-up round; all variants "
        "interleaved in one process, order rotated every round. µs/iter = wall time of one whole run "
        "(the epochs shown) / its iterations; ratio = median over rounds of variant / bare in the same round; "
        "ratio of minima = fastest run / fastest bare run (interference only ever slows a run down). "
        f"Total time {total:.0f} s.",
        "",
        *table(results, settings, variants, "bare"),
        "",
    ]
    busy = sum(f > FOREIGN_LIMIT for f in FOREIGN)
    if busy:
        out += [
            f"**Warning:** in {busy} of the {len(FOREIGN)} timed runs kept, other processes used more than "
            f"{FOREIGN_LIMIT} of a core even after retries; on a 2-core machine that slows "
            "multi-threaded kernels unevenly. Re-run on a quiet machine before quoting these numbers.",
            "",
        ]
    verdicts = []
    for batch in ("1", "32"):
        if batch in settings:
            ratio = statistics.median(
                v / b for v, b in zip(results[(batch, "runner_loop")], results[(batch, "bare")])
            )
            verdicts.append(f"batch {batch}: {ratio:.3f} ({'met' if ratio <= TARGET else 'NOT met'})")
    out += [
        f"**Target** (runner_loop / bare ≤ {TARGET} at batch 1 and 32): " + "; ".join(verdicts) + ".",
        "",
        f"TensorBoard check: {CHECKS['files']} event files written by runner_loop, runner_fit and "
        f"summarywriter_per_step read back with EventAccumulator (no sampling): each holds exactly one "
        f"`{TAG}` point per iteration with steps 0..T-1 ({CHECKS['points']} points in all); for runner_loop the "
        "values equal the per-iteration losses (as float32) and `update/grad_norm`/`lr` have the same steps.",
        "",
        "Same work: over one epoch, bare and runner_loop compute the same per-iteration losses (max |difference| "
        + ", ".join(f"{d:.1e} at batch {settings[b].batch_size}" for b, d in same.items())
        + "; float32 rounding), so both loops time the same training.",
        "",
        "Notes:",
        "- `bare` uses `F.cross_entropy` on a plain `Sequential(Linear, ReLU, Linear)` with the runner's initial "
        "weights and the runner's sample order; the runner uses its own model (whose leading `nn.Flatten` its "
        "update skips: the (N, 1, 8, 8) images are gathered as flat rows) and its own loss module (`SparseCategoricalCrossentropy`), zeroes one flat gradient "
        "buffer, measures the global gradient norm every iteration, and keeps the per-iteration loss, norm, lr and "
        "time for the TensorBoard series. All of that counts as runner overhead here.",
        "- `runner_fit` does strictly more work than `bare`: after every epoch it evaluates the loss (and accuracy) "
        "over the whole training set (`loss/train_full`) and the validation set (`loss/val`) and logs epoch-level "
        "scalars on four x-axes. At batch 1 that is one extra forward pass over 1438 + 359 samples per 1438 "
        "updates; at full batch it is about one extra forward pass per update, hence the larger ratio there.",
        "- `dataloader` is what a plain PyTorch loop usually looks like; at full batch its collate step "
        "(stacking 1438 samples one by one) dominates.",
        f"- Lightning: {'measured (variant `lightning`).' if HAVE_LIGHTNING else 'not installed (import lightning failed), so not measured.'}",
    ]
    if dissected is not None:
        dsettings = {b: settings[b] for b in batches if b != "full"}
        out += [
            "",
            "### Where the time goes: from bare to runner_loop, one piece at a time",
            "",
            "Steps 1-5 are cumulative changes to the hand-written bare loop; 6 is the runner's own "
            "`train_one_epoch` (no logging), 7 adds the TensorBoard series (= runner_loop). The what-if rows run "
            "runner_loop with a change the runner does not make, to size what changing each piece would give: the "
            f"gradient-norm kernel replaced by a constant; the per-iteration series handed to the logger once at least {BUFFER_POINTS} points have piled up "
            f"instead of once per epoch. {dissect_rounds} rounds, otherwise the same protocol as above.",
            "",
            *table(dissected, dsettings, dissect_variants(), "0 bare"),
        ]
    if cli is not None:
        verdict = "; ".join(
            f"batch {b}{'' if label == 'defaults' else f' ({label})'}: {median_ratio:.3f} by the difference of processes, "
            f"{inside_ratio:.3f} epoch end to epoch end ({'met' if median_ratio <= CLI_TARGET else 'NOT met'})"
            for (b, label) in cli
            for median_ratio, inside_ratio in [(statistics.median(c / e for c, e, _ in cli[(b, label)]), statistics.median(i / e for _, e, i in cli[(b, label)]))]
        )
        out += [
            "",
            "### The whole command line, per extra epoch",
            "",
            "`python -m runner batch_size=B epochs=E progress=false device=cpu` run as a user runs it, each in a fresh "
            "process, with 1 epoch and with 1 + k epochs; the cost of an extra epoch is the difference over k. It "
            "includes the loop, the epoch-end evaluation of the training and validation sets, the TensorBoard series "
            "and the checkpoints (serialised at the boundary, written and fsynced by a background "
            "thread; at epoch ends at least `checkpoint_interval_s` apart). The bare loop's epoch is timed in the same round, in this process. The last two columns time the "
            "same long runs from the inside: the median of the seconds between consecutive epoch ends, from the wall "
            "times each run's event file records for `loss/train_full` — one whole epoch of the command line without "
            "the spread of process start-up, which the difference of two process times carries (divided by k). "
            f"{cli_rounds} rounds after a warm-up round.",
            "",
            *cli_table(cli, cli_extra),
            "",
            f"**Target** (CLI per extra epoch / bare epoch ≤ {CLI_TARGET}): {verdict}.",
        ]
    markdown = "\n".join(out) + "\n"
    print(markdown)
    if args.out:
        args.out.write_text(markdown)


if __name__ == "__main__":
    main()
