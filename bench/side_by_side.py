"""Two runs at once on one machine: what torch's default thread count costs, timed as a user times it.

torch starts one OpenMP thread per core in every process. Alone, that is its fastest setting
for a small model give or take a few per cent; with two such processes on the same cores, each
one's threads busy-wait at every parallel region while the other's hold the cores, and both
crawl. This script times the README's first sweep (``python -m runner -m
regime=bgd,sgd,minibatch optimizer.lr=0.01``) as whole processes:

- alone, and two copies started together, each with torch's default thread count;
- the same with ``OMP_NUM_THREADS=1`` (one thread per process, as torchrun sets for its ranks);

and ``hydra/launcher=slurm_local`` (submitit's local executor: the jobs of a sweep run side by
side as processes) on ``experiment=gd_compare`` (5 jobs), as the README prints it (each job kept
to the preset's ``cpus_per_task`` threads) and through the plugin's own launcher (torch's default
in each job).

Rounds interleave the settings (the order rotates), so a busy neighbour slows them alike;
medians with the spread (min–max). Wall seconds of each process; for two at once, the later
of the two to finish.

Usage::

    .venv/bin/python bench/side_by_side.py [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import code_version, cpu_model, version  # bench/machine.py

FIRST_SWEEP = ["-m", "regime=bgd,sgd,minibatch", "optimizer.lr=0.01"]
SLURM_LOCAL = ["-m", "experiment=gd_compare", "hydra/launcher=slurm_local"]
# What slurm_local ran before runner.cluster.LocalLauncher kept each job to cpus_per_task threads.
PLUGIN_LOCAL_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"

# (label, argv after `python -m runner`, OMP_NUM_THREADS or None for torch's default, copies at once)
SETTINGS = [
    ("first sweep, alone, default threads", FIRST_SWEEP, None, 1),
    ("first sweep, two at once, default threads", FIRST_SWEEP, None, 2),
    ("first sweep, alone, OMP_NUM_THREADS=1", FIRST_SWEEP, "1", 1),
    ("first sweep, two at once, OMP_NUM_THREADS=1", FIRST_SWEEP, "1", 2),
    ("gd_compare on slurm_local (5 jobs side by side), as the README prints it", SLURM_LOCAL, None, 1),
    ("gd_compare on slurm_local through the plugin's own LocalLauncher (torch's default threads in each job)",
     [*SLURM_LOCAL, f"hydra.launcher._target_={PLUGIN_LOCAL_LAUNCHER}"], None, 1),
]


def timed(argv: list[str], threads: str | None, copies: int, root: Path) -> float:
    """Seconds until the last of ``copies`` processes started together has exited (each must exit 0)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR", "OMP_NUM_THREADS")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    started = time.perf_counter()
    procs = []
    for copy in range(copies):
        cwd = Path(tempfile.mkdtemp(prefix=f"copy{copy}-", dir=root))
        procs.append(subprocess.Popen([sys.executable, "-m", "runner", *argv, "progress=false"], cwd=cwd, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{err[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    seconds: dict[str, list[float]] = {label: [] for label, *_ in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        for round_ in range(args.rounds):
            shift = round_ % len(SETTINGS)
            for label, argv, threads, copies in SETTINGS[shift:] + SETTINGS[:shift]:
                seconds[label].append(timed(argv, threads, copies, Path(tmp)))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    lines = [
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {len(os.sched_getaffinity(0))} cores this process may use",
        f"- Versions: Python {platform.python_version()}, torch {version('torch')}, hydra-core {version('hydra-core')}, "
        f"submitit {version('submitit')}; runner at {code_version()}",
        f"- Command: `{Path(sys.executable).name} bench/side_by_side.py --rounds {args.rounds}`; load average at the end "
        f"{os.getloadavg()[0]:.2f}",
        "",
        "| what ran | wall s, median (min–max) |",
        "|---|---:|",
    ]
    for label, values in seconds.items():
        lines.append(f"| {label} | {statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f}) |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
