"""A seed sweep from the command line, timed as a user times it: ``hydra/launcher=fused`` against basic.

Target (issue 21): per extra epoch of the whole sweep, ``(t[6 epochs] - t[1 epoch]) / 5`` with
``t`` the wall time of the whole process, the fused launcher at least 6x faster than the basic
one at K = 8 runs, batch size 1, and at least 12x at K = 32.

Each timed process is the command a user types::

    python -m runner -m seed=0,...,K-1 regime=sgd optimizer.lr=0.01 epochs=E hydra/launcher=L

(digits, the default MLP 64-128-10, CPU, torch's default thread count; progress bars off; a
fresh sweep directory every time). So everything a user waits for is in it: start-up, Hydra,
building the runs, epoch-0 and epoch-end evaluation, checkpoints, event files, summaries and
the sweep report. The fixed costs cancel in the difference of the two lengths, which leaves
what one more epoch of the whole sweep costs.

Processes run one at a time, interleaved: every round runs each (K, launcher, epochs) once, in
an order that rotates from round to round, so a busy neighbour slows both launchers alike.
Medians with the spread (min–max) of the per-extra-epoch times; the speed-up is the ratio of
the two medians.

``--tree LABEL=PATH`` (repeatable) times the runner of another checkout as well (its ``python
-m runner`` run from PATH with this interpreter), in the same rounds: a before/after in one run.

Usage::

    .venv/bin/python bench/fused_cli.py [--ks 8 32] [--epochs 1 6] [--rounds 3] [--batch-size 1] [--tree main=/tmp/main]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import REPO, code_version, cpu_model, python_for_display, version  # bench/machine.py

LAUNCHERS = ("basic", "fused")


def command(k: int, epochs: int, launcher: str, batch_size: int, sweep_dir: Path) -> list[str]:
    seeds = ",".join(str(s) for s in range(k))
    return [
        sys.executable, "-m", "runner", "-m", f"seed={seeds}", "regime=sgd", "optimizer.lr=0.01", f"batch_size={batch_size}",
        f"epochs={epochs}", f"hydra/launcher={launcher}", "progress=false", f"hydra.sweep.dir={sweep_dir}",
    ]


def one(cwd: Path, argv: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} (in {cwd}) failed:\n{done.stderr[-3000:]}")
    return seconds


def fmt(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f} ({min(samples):.2f}–{max(samples):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 6], metavar=("SHORT", "LONG"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH", help="also time the runner of another checkout")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args()
    trees = {"this": REPO, **{t.split("=", 1)[0]: Path(t.split("=", 1)[1]).resolve() for t in args.tree}}
    short, long = args.epochs
    cells = [(tree, k, launcher, e) for tree in trees for k in args.ks for launcher in LAUNCHERS for e in (short, long)]
    times: dict[tuple[str, int, str, int], list[float]] = {cell: [] for cell in cells}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_fused_cli_") as tmp:
        n = 0
        for r in range(args.rounds):
            shift = (r * 3) % len(cells)
            for tree, k, launcher, epochs in cells[shift:] + cells[:shift]:
                n += 1
                seconds = one(trees[tree], command(k, epochs, launcher, args.batch_size, Path(tmp) / f"s{n}"))
                times[(tree, k, launcher, epochs)].append(seconds)
                print(f"round {r + 1}/{args.rounds} {tree} K={k} {launcher} epochs={epochs}: {seconds:.2f} s", file=sys.stderr, flush=True)
    load_end = os.getloadavg()

    out = [
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores; load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end (a shared machine: other jobs ran alongside)",
        f"- Python {sys.version.split()[0]}, torch {version('torch')}, hydra-core {version('hydra-core')}; this tree: {code_version()}"
        + "".join(f"; {label}: {path}" for label, path in trees.items() if label != "this"),
        f"- Command: `{python_for_display()} bench/fused_cli.py {shlex.join(sys.argv[1:])}`".rstrip()
        + f"; {args.rounds} interleaved rounds; batch size {args.batch_size}; per extra epoch = (t[{long}] − t[{short}]) / {long - short}",
        "",
        f"| tree | K | basic: s for {short} / {long} epochs | fused: s for {short} / {long} epochs | basic: s per extra epoch | fused: s per extra epoch | speed-up per extra epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tree in trees:
        for k in args.ks:
            per_epoch = {}
            for launcher in LAUNCHERS:
                a, b = times[(tree, k, launcher, short)], times[(tree, k, launcher, long)]
                per_epoch[launcher] = [(y - x) / (long - short) for x, y in zip(a, b)]
            whole = {launcher: f"{fmt(times[(tree, k, launcher, short)])} / {fmt(times[(tree, k, launcher, long)])}" for launcher in LAUNCHERS}
            ratio = statistics.median(per_epoch["basic"]) / statistics.median(per_epoch["fused"])
            ratios = [b / f for b, f in zip(per_epoch["basic"], per_epoch["fused"])]
            out.append(
                f"| {tree} | {k} | {whole['basic']} | {whole['fused']} | {fmt(per_epoch['basic'])} | {fmt(per_epoch['fused'])} | "
                f"**{ratio:.2f}x** (rounds {min(ratios):.2f}–{max(ratios):.2f}) |"
            )
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
