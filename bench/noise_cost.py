"""What the gradient-noise instrument costs: one run's time with ``noise.every=50`` against off.

The runs are what a user gets from ``python -m runner <overrides>`` (``runner.train.train``
into a fresh directory: TensorBoard file, checkpoints, summary), on digits with the default
MLP 64-128-10, SGD lr 0.01 and cross-entropy, on the CPU, at ``--batch-sizes`` (default 1,
32 and 128; each ``--epochs`` epochs). Three variants: ``off``; ``noise.every=50`` by the
closed form (what the runner picks for this MLP); and the same with the method forced to
``torch.func`` per-sample gradients (what every model used before the closed form: the
"before" column, measured in the same process). Per batch size the variants run
interleaved over ``--rounds`` rounds (after one warm-up run each); the table gives the
median wall time per run, the ratio to ``off`` (median of per-round ratios), the number of
measurements, and the cost of one measurement ((on − off) / measurements). A check that the
measurement changed nothing: every variant's final weights equal ``off``'s bit for bit in
every round.

Usage::

    .venv/bin/python bench/noise_cost.py [--epochs 3] [--rounds 5] [--every 50] [--batch-sizes 1 32 128] [--out FILE]
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


def one_run(overrides: list[str], scratch: Path, method: str | None) -> tuple[float, dict, dict]:
    """Seconds for ``train(cfg)`` (build included), its summary, and its final weights;
    ``method``: the noise instrument's method forced (None: the runner's own choice)."""
    import torch

    import runner.instruments.noise as noise
    from runner.train import train

    out = Path(tempfile.mkdtemp(dir=scratch))
    cfg = compose(overrides, out)
    chosen = noise.gradient_method
    if method is not None:  # GradientNoise asks once, when the run is built
        noise.gradient_method = lambda model, loss_fn, split: method
    try:
        started = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - started
    finally:
        noise.gradient_method = chosen
    return seconds, summary, torch.load(out / "model.pt", weights_only=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the runs' own log lines
    import numpy as np
    import torch

    from runner.instruments.noise import CLOSED_FORM, TORCH_FUNC

    command = " ".join(shlex.quote(a) for a in [python_for_display(), "bench/noise_cost.py", *sys.argv[1:]])
    base = ["dataset=digits", "model=mlp", "optimizer=sgd", "optimizer.lr=0.01", f"epochs={args.epochs}", "device=cpu", "progress=false"]
    on = f"noise.every={args.every}"
    variants = {"off": (["noise.every=0"], None), TORCH_FUNC: ([on], TORCH_FUNC), CLOSED_FORM: ([on], None)}
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for batch in args.batch_sizes:
            times: dict[str, list[float]] = {name: [] for name in variants}
            identical, iterations = True, None
            for round_ in range(args.rounds + 1):  # round 0 warms up
                weights = {}
                for name, (extra, method) in variants.items():
                    print(f"batch {batch}, round {round_}, {name} ...", file=sys.stderr, flush=True)
                    seconds, summary, weights[name] = one_run([*base, f"batch_size={batch}", *extra], Path(scratch), method)
                    iterations = summary["iterations"]
                    if round_:
                        times[name].append(seconds)
                identical &= all(torch.equal(weights["off"][k], w[k]) for w in weights.values() for k in w)
            measurements = -(-iterations // args.every)
            rows.append((batch, iterations, measurements, times, identical))
    total = time.perf_counter() - started

    out = [
        f"## Gradient noise: a run's time with `{on}` against off",
        "",
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; "
        f"{mem_total_gib():.1f} GiB RAM; torch threads {torch.get_num_threads()} "
        f"({'OMP_NUM_THREADS=' + os.environ['OMP_NUM_THREADS'] if 'OMP_NUM_THREADS' in os.environ else 'default'})",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"tensorboard {version('tensorboard')}",
        f"- Command: `{command}` (total {total:.0f} s); runner code: {code_version()}",
        f"- Runs: `runner.train.train` on digits (1438 training samples), MLP 64-128-10, SGD lr 0.01, "
        f"{args.epochs} epochs, CPU, everything a run writes; noise.micro_batch_size 256 (default). "
        f"{args.rounds} rounds after a warm-up, variants interleaved; medians. Load average at the end "
        f"{os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores.",
        "",
        f"| batch | iterations | measurements | off: s/run | {TORCH_FUNC} (before): s/run | {CLOSED_FORM}: s/run "
        f"| ratio to off, {TORCH_FUNC} | ratio to off, {CLOSED_FORM} | ms per measurement, {TORCH_FUNC} | ms per measurement, {CLOSED_FORM} | same final weights |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for batch, iterations, measurements, times, identical in rows:
        off = statistics.median(times["off"])
        cells = [f"{statistics.median(times[m]):.2f}" for m in (TORCH_FUNC, CLOSED_FORM)]
        cells += [f"{statistics.median(b / a for a, b in zip(times['off'], times[m])):.2f}" for m in (TORCH_FUNC, CLOSED_FORM)]
        cells += [f"{1e3 * (statistics.median(times[m]) - off) / measurements:.1f}" for m in (TORCH_FUNC, CLOSED_FORM)]
        out.append(
            f"| {batch} | {iterations} | {measurements} | {off:.2f} | {' | '.join(cells)} | {'yes (bit for bit)' if identical else 'NO'} |"
        )
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
