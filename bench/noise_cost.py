"""What the gradient-noise instrument costs: one run's time with ``noise.every=50`` against off.

The runs are what a user gets from ``python -m runner <overrides>`` (``runner.train.train``
into a fresh directory: TensorBoard file, checkpoints, summary), on digits with the default
MLP 64-128-10, SGD lr 0.01 and cross-entropy, on the CPU, at batch sizes 1, 32 and 128 (each
``--epochs`` epochs). Per batch size the variants run interleaved over ``--rounds`` rounds
(after one warm-up run each); the table gives the median wall time per run, the ratio to
``off`` (median of per-round ratios), the number of measurements, and the measured cost of
one measurement ((on − off) / measurements). A check that the measurement changed nothing:
both variants' final weights are compared bit for bit in every round.

Usage::

    .venv/bin/python bench/noise_cost.py [--epochs 3] [--rounds 5] [--every 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import code_version, cpu_model, mem_total_gib, python_for_display, version  # bench/machine.py (the script's own folder)

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 32, 128)


def compose(overrides: list[str], output_dir: Path):
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import runner.schema  # noqa: F401  (registers the schemas)
    from runner.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return hydra_compose("config", overrides=[*overrides, f"output_dir={output_dir}"])


def one_run(overrides: list[str], scratch: Path) -> tuple[float, dict, dict]:
    """Seconds for ``train(cfg)`` (build included), its summary, and its final weights."""
    import torch

    from runner.train import train

    out = Path(tempfile.mkdtemp(dir=scratch))
    cfg = compose(overrides, out)
    started = time.perf_counter()
    summary = train(cfg)
    seconds = time.perf_counter() - started
    return seconds, summary, torch.load(out / "model.pt", weights_only=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the runs' own log lines
    import numpy as np
    import torch

    command = " ".join(shlex.quote(a) for a in [python_for_display(), "bench/noise_cost.py", *sys.argv[1:]])
    base = ["dataset=digits", "model=mlp", "optimizer=sgd", "optimizer.lr=0.01", f"epochs={args.epochs}", "device=cpu", "progress=false"]
    variants = {"off": ["noise.every=0"], f"noise.every={args.every}": [f"noise.every={args.every}"]}
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for batch in BATCH_SIZES:
            times: dict[str, list[float]] = {name: [] for name in variants}
            identical, iterations = True, None
            for round_ in range(args.rounds + 1):  # round 0 warms up
                weights = {}
                for name, extra in variants.items():
                    print(f"batch {batch}, round {round_}, {name} ...", file=sys.stderr, flush=True)
                    seconds, summary, weights[name] = one_run([*base, f"batch_size={batch}", *extra], Path(scratch))
                    iterations = summary["iterations"]
                    if round_:
                        times[name].append(seconds)
                off, on = (weights[name] for name in variants)
                identical &= all(torch.equal(off[k], on[k]) for k in off)
            measurements = -(-iterations // args.every)
            rows.append((batch, iterations, measurements, times, identical))
    total = time.perf_counter() - started

    on_name = f"noise.every={args.every}"
    out = [
        f"## Gradient noise: a run's time with `{on_name}` against off",
        "",
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; "
        f"{mem_total_gib():.1f} GiB RAM; torch threads {torch.get_num_threads()} (default)",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"tensorboard {version('tensorboard')}",
        f"- Command: `{command}` (total {total:.0f} s); runner code: {code_version()}",
        f"- Runs: `runner.train.train` on digits (1438 training samples), MLP 64-128-10, SGD lr 0.01, "
        f"{args.epochs} epochs, CPU, everything a run writes; noise.micro_batch_size 256 (default). "
        f"{args.rounds} rounds after a warm-up, variants interleaved; medians.",
        "",
        f"| batch | iterations | measurements | off: s/run | {on_name}: s/run | ratio to off | s per measurement | same final weights |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for batch, iterations, measurements, times, identical in rows:
        off, on = times["off"], times[on_name]
        ratio = statistics.median(b / a for a, b in zip(off, on))
        per = (statistics.median(on) - statistics.median(off)) / measurements
        out.append(
            f"| {batch} | {iterations} | {measurements} | {statistics.median(off):.2f} | {statistics.median(on):.2f} | "
            f"{ratio:.2f} | {per:.3f} | {'yes (bit for bit)' if identical else 'NO'} |"
        )
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
