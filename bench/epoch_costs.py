"""What each piece of a whole run's epoch costs, against a bare torch epoch, in one process.

``bench/loop_overhead.py --cli`` times the command line per extra epoch from the outside; its
two estimates carry the spread of process start-up and of the machine. This script times the
same run from the inside: ``runner.train.train(cfg)`` as ``python -m runner`` calls it (event
file, checkpoints, summary), with a timer around each piece of :mod:`runner.epochs` — the
updates, the per-update series, the epoch-end evaluation, the epoch's scalars, the checkpoint
saves — and the bare loop of ``loop_overhead.py`` timed for the same epochs right after, in
each round. Command lines given with ``--also`` run in the same rounds (order rotated), so a
change's before and after are measured side by side, e.g. ``--also checkpoint_interval_s=0``
(a checkpoint at every epoch end, as before that key existed).

The last table times the epoch-end evaluation alone: the training and validation sets one
after the other (:func:`runner.loop.evaluate`) and in one pass (:class:`runner.loop.JointEvaluation`).

Usage::

    .venv/bin/python bench/epoch_costs.py [--batch 32] [--epochs 41] [--rounds 6] [--also OVERRIDE] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import runner.epochs
import runner.train
from runner.loop import evaluate
from runner.train import build_run, train

from loop_overhead import Setting, bare, compose_cfg  # bench/loop_overhead.py (the script's own folder)
from machine import code_version, cpu_model, version

# The pieces of runner.epochs timed, in the order an epoch runs them, with what the user gets.
PIECES = {
    "train_one_epoch": "the updates, with each one's loss, gradient norm, lr and clock kept",
    "_log_iterations": "`loss/train_iter`, `update/grad_norm`, `lr` at every update, encoded for the event file",
    "_epoch_metrics": "`loss/train_full`, `loss/val`, accuracies: both sets evaluated",
    "_log_epoch": "the epoch's scalars on four x-axes",
    "save": "the checkpoint serialised (written by a background thread): what a kill resumes from",
}
WRAPPED = ("train_one_epoch", "_log_iterations", "_epoch_metrics", "_log_epoch")


class Timers:
    """Seconds spent in each wrapped function of :mod:`runner.epochs`, summed until reset."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def wrap(self, name: str) -> None:
        function = getattr(runner.epochs, name)

        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        setattr(runner.epochs, name, timed)

    def wrap_run_epochs(self) -> None:
        """``run_epochs`` as a whole, and the checkpoint saves it makes (a callback train() passes)."""
        run_epochs = runner.epochs.run_epochs

        def timed(run, logger, state=None, save_checkpoint=None):
            def save(current):
                started = time.perf_counter()
                save_checkpoint(current)
                self.add("save", time.perf_counter() - started)

            started = time.perf_counter()
            try:
                return run_epochs(run, logger, state, save if save_checkpoint is not None else None)
            finally:
                self.add("run_epochs", time.perf_counter() - started)

        runner.train.run_epochs = timed  # train() calls the name it imported


def timed_median_ms(function, repeats: int = 400, warm_up: int = 30) -> float:
    for _ in range(warm_up):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="32", help="batch size (default 32)")
    parser.add_argument("--epochs", type=int, default=41, help="epochs per run (default 41)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds after a warm-up round (default 6)")
    parser.add_argument("--also", action="append", default=[], metavar="OVERRIDE", help="also time this command line (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "bench/epoch_costs.py", *sys.argv[1:]])
    load_start = os.getloadavg()

    timers = Timers()
    for name in WRAPPED:
        timers.wrap(name)
    timers.wrap_run_epochs()

    lines = {"defaults": [], **{override: [override] for override in args.also}}
    per_epoch: dict[str, dict[str, list[float]]] = {name: {} for name in lines}
    root = Path(tempfile.mkdtemp(prefix="epoch_costs_"))
    setting = Setting(args.batch, args.epochs, root)
    for round_ in range(args.rounds + 1):
        names = list(lines)
        shift = round_ % len(names)
        for index, name in enumerate(names[shift:] + names[:shift]):
            timers.seconds.clear()
            cfg = compose_cfg([f"batch_size={args.batch}", f"epochs={args.epochs}", *lines[name]], root / f"run{round_}_{index}")
            summary = train(cfg)
            assert summary["status"] == "done", summary
            bare_body, _ = bare(setting, root / "bare")
            started = time.perf_counter()
            bare_body()
            bare_seconds = time.perf_counter() - started
            if round_ == 0:
                continue  # warm-up
            values = {piece: timers.seconds.get(piece, 0.0) / args.epochs * 1e3 for piece in (*PIECES, "run_epochs")}
            values["bare"] = bare_seconds / args.epochs * 1e3
            for piece, value in values.items():
                per_epoch[name].setdefault(piece, []).append(value)
            per_epoch[name].setdefault("ratio", []).append(values["run_epochs"] / values["bare"])

    run = build_run(compose_cfg([f"batch_size={args.batch}", "epochs=1"], root / "evaluation"))
    apart, joint = [], []
    for _ in range(5):
        apart.append(timed_median_ms(lambda: [evaluate(run.model, run.loss_fn, split, run.cfg.eval_batch_size) for split in (run.train, run.val)]))
        if run.joint_eval is not None:
            joint.append(timed_median_ms(lambda: run.joint_eval(run.model, run.loss_fn)))

    load_end = os.getloadavg()
    out = [
        "## What each piece of an epoch costs (in process)",
        "",
        f"- Machine: CPU {cpu_model()}; {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}",
        f"- Versions: python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}, tensorboard {version('tensorboard')}",
        f"- Command: `{command}`; runner code: {code_version()}",
        f"- Load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}",
        f"- Setting: digits, batch size {args.batch} ({setting.iterations_per_epoch} updates per epoch), {args.epochs} epochs, "
        f"the default MLP, SGD, cross-entropy, CPU; `runner.train.train` as the command line calls it; "
        f"{args.rounds} rounds after a warm-up round. Per epoch: a piece's seconds over the run / epochs; median (min–max) over rounds.",
        "",
        "| piece (ms per epoch) | " + " | ".join(lines) + " | what the user gets |",
        "|---|" + "---:|" * len(lines) + "---|",
    ]
    for piece, gets in PIECES.items():
        out.append(f"| `{piece}` | " + " | ".join(spread(per_epoch[name][piece]) for name in lines) + f" | {gets} |")
    out.append("| the whole epoch loop (`run_epochs` / epochs) | " + " | ".join(spread(per_epoch[name]["run_epochs"]) for name in lines) + " | |")
    out.append("| bare torch epoch, same round | " + " | ".join(spread(per_epoch[name]["bare"]) for name in lines) + " | |")
    out.append("| **ratio** epoch loop / bare | " + " | ".join(f"**{spread(per_epoch[name]['ratio'])}**" for name in lines) + " | |")
    out += [
        "",
        f"Epoch-end evaluation alone, median of 5 × 400 calls: the two sets one after the other {statistics.median(apart):.3f} ms"
        + (f", in one pass {statistics.median(joint):.3f} ms." if joint else "; this run does not join them."),
    ]
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
