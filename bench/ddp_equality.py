"""How close one run across N torchrun processes comes to the same run in one process.

For each case (BGD, SGD, mini-batch with an uneven last batch, with and without
micro-batches) it runs ``torchrun --standalone --nproc_per_node=N -m runner <overrides>`` and
``python -m runner <overrides>`` as real processes, then prints the largest absolute
difference over every logged loss (all per-iteration and epoch series but the time axis)
and over the final weights, and each command's wall time.

    python bench/ddp_equality.py [--nproc 2] [--dataset iris] [--epochs 2]

Prints a Markdown table (the one in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import code_version, cpu_model, python_for_display, version  # bench/machine.py (the script's own folder)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.epochs import TIMED_PREFIXES

CASES = {
    "BGD": ("batch_size=full",),
    "BGD, micro_batch_size=16": ("batch_size=full", "micro_batch_size=16"),
    "SGD": ("batch_size=1",),
    "mini-batch 25 (uneven last batch)": ("batch_size=25",),
    "mini-batch 25, micro_batch_size=4": ("batch_size=25", "micro_batch_size=4"),
}


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if not tag.startswith(TIMED_PREFIXES)}


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def max_differences(a: Path, b: Path) -> tuple[float, float]:
    """Largest |difference| over every logged value, and over the final weights."""
    sa, sb = scalars(a), scalars(b)
    assert sa.keys() == sb.keys()
    logged = 0.0
    for tag in sa:
        assert [s for s, _ in sa[tag]] == [s for s, _ in sb[tag]], tag
        logged = max(logged, max(abs(x - y) for (_, x), (_, y) in zip(sa[tag], sb[tag])))
    wa, wb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    weights = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    return logged, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--dataset", default="iris")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torchrun = Path(sys.executable).parent / "torchrun"
    print(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; Python {python_for_display()}, torch {version('torch')}; runner at {code_version()}")
    print(f"Command: python bench/ddp_equality.py --nproc {args.nproc} --dataset {args.dataset} --epochs {args.epochs}\n")
    print(f"| case ({args.dataset}, {args.epochs} epochs, {args.nproc} processes) | max abs diff, logged losses | max abs diff, weights | torchrun s | one process s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, case) in enumerate(CASES.items()):
            overrides = [f"dataset={args.dataset}", f"epochs={args.epochs}", "seed=3", "progress=false", "device=cpu", *case]
            ddp, one = Path(tmp) / f"ddp{i}", Path(tmp) / f"one{i}"
            t_ddp = timed([str(torchrun), "--standalone", f"--nproc_per_node={args.nproc}", "-m", "runner", *overrides, f"hydra.run.dir={ddp}"])
            t_one = timed([sys.executable, "-m", "runner", *overrides, f"hydra.run.dir={one}"])
            logged, weights = max_differences(ddp, one)
            print(f"| {name} | {logged:.2e} | {weights:.2e} | {t_ddp:.1f} | {t_one:.1f} |", flush=True)


if __name__ == "__main__":
    main()
