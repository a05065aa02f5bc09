"""Runs per second of a seed sweep: ``hydra/launcher=fused`` against the basic launcher.

Target (issue 13): at K = 8 runs, batch size 1, the fused launcher trains at least 5x as many
runs per second as the basic launcher, on a CPU (digits, MLP 64-128-10).

Setting: digits (1438 training samples after the default 20 % validation split), the default
MLP 64-128-10, SGD lr 0.01, cross-entropy, CPU, torch's default thread count; K runs that
differ only in their seed (initial weights, validation split, sample order), one epoch each.

Variants, timed in one process, interleaved round-robin (the order alternates every round so a
busy neighbour hits both alike), after one untimed warm-up round:

* ``basic``: what the basic launcher does for each of the K jobs after Hydra's set-up: the
  job's run trained alone by ``runner.train.train`` (per-iteration TensorBoard series, epoch-0
  and epoch-end evaluation, checkpoints, ``summary.json``, ``model.pt``), one after the other.
* ``fused``: what the fused launcher does for the K jobs: one stacked group,
  ``runner.launchers.fused_group.train_group`` over K members, each with its own
  TensorBoard logger, evaluation, checkpoints and ``summary.json``/``model.pt``.

Building the runs (data, model) is not timed: both launchers do it once per job. Neither is
process start-up, Hydra's composition nor the sweep report, which are the same for both.
Both write what their launcher writes for a job (checkpoints included), into fresh directories.

Usage::

    .venv/bin/python bench/fused_sweep.py [--quick] [--ks 1 8 32] [--batch-sizes 1 32] [--rounds 3] [--iterations N] [--device cuda]

``--device cuda`` trains every run on the GPU (each timed variant ends with
``torch.cuda.synchronize()``); ``--iterations N`` caps each run at N updates (``budget=updates``).

Prints a ready markdown table (and the machine/versions block) for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import runner.schema  # noqa: F401  (registers the schemas)
from runner.cli import CONF_DIR
from runner.epochs import TrainState
from runner.launchers.fused_group import Member, train_group
from runner.loggers import TensorBoardLogger
from runner.train import build_run, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import code_version, cpu_model, python_for_display, version  # noqa: E402


DEVICE = "cpu"  # --device


def synchronize() -> None:
    """Wait for the kernels a GPU variant queued, so that they count in its time."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build(seed: int, batch_size: int, iterations: int | None, out: Path):
    overrides = ["progress=false", f"device={DEVICE}", "epochs=1", "optimizer.lr=0.01", f"batch_size={batch_size}", f"seed={seed}", f"output_dir={out}"]
    if iterations is not None:
        overrides += ["budget=updates", f"budget_amount={iterations}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return build_run(compose("config", overrides=overrides))


def basic(k: int, batch_size: int, iterations: int | None, root: Path) -> float:
    runs = [build(seed, batch_size, iterations, root / f"b{seed}") for seed in range(k)]
    started = time.perf_counter()
    for run in runs:
        train(run.cfg, run)
    synchronize()
    return time.perf_counter() - started


def fused(k: int, batch_size: int, iterations: int | None, root: Path) -> float:
    runs = [build(seed, batch_size, iterations, root / f"f{seed}") for seed in range(k)]
    started = time.perf_counter()
    if k == 1:  # a group of one is a normal job: the fused launcher runs it as the basic one does
        train(runs[0].cfg, runs[0])
    else:
        members = [
            Member(run=run, out=root / f"f{seed}", logger=TensorBoardLogger(root / f"f{seed}"), state=TrainState(), hparams={}, active=nullcontext)
            for seed, run in enumerate(runs)
        ]
        train_group(members)
    synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 iterations per run instead of a whole epoch, 1 round (checks the script runs)")
    parser.add_argument("--iterations", type=int, help="updates per run instead of a whole epoch (--quick: 200)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the runs train (default cpu)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here")
    iterations = args.iterations or (200 if args.quick else None)
    rounds = 1 if args.quick else args.rounds
    variants = {"basic": basic, "fused": fused}
    cells = [(k, b) for b in args.batch_sizes for k in args.ks]
    times: dict[tuple[int, int, str], list[float]] = {(k, b, v): [] for k, b in cells for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds + 1):  # round 0 warms up and is not counted
            for k, b in cells:
                order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
                for name in order:
                    folder = Path(tmp) / f"r{round_}-{name}-{k}-{b}"
                    seconds = variants[name](k if round_ else min(k, 2), b, iterations, folder)
                    if round_:
                        times[(k, b, name)].append(seconds)
                    print(f"round {round_} K={k} batch {b} {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    iters = {b: build(0, b, iterations, Path(tempfile.gettempdir()) / "unused").plan.total_iterations for b in args.batch_sizes}

    gpu = f"; GPU {torch.cuda.get_device_name()}, torch CUDA {torch.version.cuda}" if DEVICE == "cuda" else ""
    print(f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads{gpu}; Python {sys.version.split()[0]}, "
          f"torch {version('torch')}, hydra-core {version('hydra-core')}; {code_version()}; device {DEVICE}.")
    print(f"Command: `{python_for_display()} bench/fused_sweep.py {shlex.join(sys.argv[1:])}`".rstrip() + "; "
          f"median of {rounds} interleaved round{'s' if rounds > 1 else ''}; "
          f"{f'{iterations} iterations' if iterations else 'one epoch'} per run.\n")
    print("| K runs | batch size | iterations per run | basic: runs/s | fused: runs/s | speed-up | basic: µs per run-iteration | fused: µs per run-iteration |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, b in cells:
        base, mine = (statistics.median(times[(k, b, v)]) for v in variants)
        per_iter = 1e6 / (k * iters[b])
        print(f"| {k} | {b} | {iters[b]} | {k / base:.2f} | {k / mine:.2f} | {base / mine:.2f}x | {base * per_iter:.0f} | {mine * per_iter:.0f} |")


if __name__ == "__main__":
    main()
