"""Seconds from process start to the first update, and to the end of a short run.

Runs the command line exactly as a user types it (``python -m runner <overrides>``), each time
in a fresh process, and reads the times back from what the run wrote:

* **first update**: the wall time the runner records for iteration 0 (the ``loss/train_iter``
  point at step 0 carries the ``time.time()`` at which that update was issued), minus the
  time just before the process was started;
* **training done**: the wall time of the last per-iteration point, likewise;
* **process exit**: when the process ended (after the epoch-end evaluation, ``summary.json``,
  ``model.pt`` and, for a single run, the report).

One run per setting and round, settings interleaved (the order rotates every round), medians
with the spread (min–max). A last, untimed run per setting with ``python -X importtime`` gives
what the big imports cost and whether each was imported at all.

Usage::

    .venv/bin/python bench/startup.py [--rounds 5] [--device cuda] [--quick] [--baseline DIR] [--out FILE]

Every round also times the **torch floor**: a fresh ``python -c`` that imports torch and takes
one SGD step on a ``Linear(64, 10)`` (``torch.optim`` imports ``torch._dynamo`` on that step,
as the runner's does), and the table gives each run's process exit against it. ``--baseline
DIR`` times the same settings from another checkout (a worktree of an earlier commit, run
with that directory as the working directory, so ``-m runner`` imports its code) in the same
rounds, interleaved: before and after, side by side.

``--device D`` adds ``device=D`` to every run (on ``cuda``, one more setting runs the default
with ``cuda_graph=true``); on a GPU the first update's time is when it was issued, so it
includes CUDA's initialisation and the first kernels' loading but not the update's own
kernels. ``--quick`` times only the default run and skips the import table.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import REPO, code_version, cpu_model, python_for_display, version  # bench/machine.py

# (label, overrides): the default run (digits, MLP, SGD, batch 32) for one epoch, the same on a
# data set that scikit-learn does not provide, and with Adam.
SETTINGS = [
    ("default, 1 epoch (digits)", ["epochs=1"]),
    ("dataset=spirals, 1 epoch", ["dataset=spirals", "epochs=1"]),
    ("optimizer=adam, 1 epoch (digits)", ["optimizer=adam", "epochs=1"]),
]
# Modules whose import cost the table lists (cumulative µs from -X importtime, first import only).
MODULES = ["torch", "torch._dynamo", "hydra", "sklearn", "scipy", "matplotlib", "runner.report"]
TAG = "loss/train_iter"
FLOOR = ("import torch; model = torch.nn.Linear(64, 10); opt = torch.optim.SGD(model.parameters(), lr=0.1); "
         "model(torch.randn(4, 64)).sum().backward(); opt.step()")
FLOOR_LABEL = "torch floor: import torch, one SGD step"
# The same script ended as the runner ends (runner.fastexit): without the interpreter's
# teardown of torch's modules (about 1.2 s here), which the plain floor pays. Against it, the
# ratio is the runner's own work alone.
FAST_FLOOR = FLOOR + "; import os; os._exit(0)"
FAST_FLOOR_LABEL = "torch floor, ended by os._exit"
FLOORS = {FLOOR_LABEL: FLOOR, FAST_FLOOR_LABEL: FAST_FLOOR}


def command(overrides: list[str], run_dir: Path, importtime: bool = False) -> list[str]:
    flags = ["-X", "importtime"] if importtime else []
    return [sys.executable, *flags, "-m", "runner", *overrides, "progress=false", f"hydra.run.dir={run_dir}"]


def iteration_wall_times(run_dir: Path) -> list[float]:
    """Wall times of the per-iteration loss points, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.wall_time for e in sorted(acc.Scalars(TAG), key=lambda e: e.step)]


def cpu_seconds() -> float:
    """User + system CPU seconds of every child waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor_run(code: str) -> dict[str, float]:
    started, cpu = time.time(), cpu_seconds()
    subprocess.run([sys.executable, "-c", code], check=True)
    return {"process exit": time.time() - started, "cpu": cpu_seconds() - cpu}


def one_run(overrides: list[str], root: Path, n: int, code: Path = REPO) -> dict[str, float]:
    run_dir = root / f"r{n}"
    started, cpu = time.time(), cpu_seconds()
    done = subprocess.run(command(overrides, run_dir), cwd=code, capture_output=True, text=True)
    ended, cpu = time.time(), cpu_seconds() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command(overrides, run_dir))} failed:\n{done.stderr[-2000:]}")
    walls = iteration_wall_times(run_dir)
    return {"first update": walls[0] - started, "training done": walls[-1] - started, "process exit": ended - started, "cpu": cpu}


def import_costs(overrides: list[str], root: Path, n: int) -> dict[str, float | None]:
    """Cumulative import seconds of MODULES in one run (None: not imported)."""
    run_dir = root / f"importtime{n}"
    done = subprocess.run(command(overrides, run_dir, importtime=True), cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command(overrides, run_dir, True))} failed:\n{done.stderr[-2000:]}")
    costs: dict[str, float | None] = dict.fromkeys(MODULES)
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", line)
        if match and match.group(3) in costs and costs[match.group(3)] is None:
            costs[match.group(3)] = int(match.group(1)) / 1e6
    return costs


def gpu_name(device: str | None) -> str:
    """The GPU the runs trained on (asked in a child, so this process never initialises CUDA)."""
    if device != "cuda":
        return ""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(), torch.version.cuda)"], capture_output=True, text=True)
    return f"; GPU and torch CUDA: {done.stdout.strip() or 'unknown'}"


def fmt(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f} ({min(samples):.2f}–{max(samples):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per setting (default 5)")
    parser.add_argument("--device", help="add device=DEVICE to every run (e.g. cuda)")
    parser.add_argument("--quick", action="store_true", help="only the default run, no import table")
    parser.add_argument("--baseline", type=Path, help="also time the settings from this checkout, interleaved")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args()
    load_start = os.getloadavg()
    settings = SETTINGS[:1] if args.quick else list(SETTINGS)
    if args.device == "cuda":
        settings.append(("default, 1 epoch, cuda_graph=true", ["epochs=1", "cuda_graph=true"]))
    if args.device:
        settings = [(f"{label}, device={args.device}", [*overrides, f"device={args.device}"]) for label, overrides in settings]
    # (label, overrides, checkout): None is a floor.
    timed: list[tuple[str, list[str] | None, Path]] = [(label, overrides, REPO) for label, overrides in settings]
    if args.baseline:
        base = f"baseline {code_version(args.baseline.resolve())}"
        timed += [(f"{label} [{base}]", overrides, args.baseline.resolve()) for label, overrides in settings]
    timed += [(label, None, REPO) for label in FLOORS]
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in timed}
    imports = {}
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        root = Path(tmp)
        n = 0
        for r in range(args.rounds + 1):  # round 0 warms the file cache, untimed
            shift = r % len(timed)
            for label, overrides, code in timed[shift:] + timed[:shift]:
                n += 1
                sample = floor_run(FLOORS[label]) if overrides is None else one_run(overrides, root, n, code)
                if r:
                    results[label].append(sample)
            print(f"  round {r}/{args.rounds}{' (warm-up)' if r == 0 else ''} done", file=sys.stderr, flush=True)
        for n, (label, overrides) in enumerate([] if args.quick else settings):
            imports[label] = import_costs(overrides, root, n)
    load_end = os.getloadavg()

    cmd = shlex.join([python_for_display(), "bench/startup.py", *sys.argv[1:]])
    out = [
        "## Start-up: seconds to the first update",
        "",
        f"- Machine: {platform.platform()}; CPU: {cpu_model()}; {os.cpu_count()} logical cores{gpu_name(args.device)}",
        f"- Versions: python {platform.python_version()}, torch {version('torch')}, hydra-core {version('hydra-core')}, "
        f"scikit-learn {version('scikit-learn')}, matplotlib {version('matplotlib')}",
        f"- Command: `{cmd}`; runner code: {code_version()}",
        f"- Load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}",
        f"- Each run: `python -m runner <overrides> progress=false hydra.run.dir=<tmp>` in a fresh process "
        f"(a single run also writes its report). {args.rounds} rounds after one warm-up round, settings interleaved; "
        "seconds from just before the process starts, median (min–max); the CPU seconds the process used (not counting waits for the disk).",
        "",
        "| run | first update, s | training done, s | process exit, s | exit / torch floor | exit / floor ended by os._exit | CPU s (user + sys) | CPU / floor's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    floor = {key: statistics.median(s[key] for s in results[FLOOR_LABEL]) for key in ("process exit", "cpu")}
    fast_floor = statistics.median(s["process exit"] for s in results[FAST_FLOOR_LABEL])
    for label, samples in results.items():
        cells = [fmt([s[key] for s in samples]) if key in samples[0] else "" for key in ("first update", "training done", "process exit")]
        ratios = {key: statistics.median(s[key] for s in samples) / floor[key] for key in floor}
        exit_fast = statistics.median(s["process exit"] for s in samples) / fast_floor
        out.append(f"| {label} | " + " | ".join(cells) + f" | {ratios['process exit']:.2f} | {exit_fast:.2f} | {fmt([s['cpu'] for s in samples])} | {ratios['cpu']:.2f} |")
    out += [] if args.quick else [
        "",
        "Import cost in one run of each (cumulative seconds from `python -X importtime`, which itself slows "
        "imports; — = not imported at all):",
        "",
        "| run | " + " | ".join(f"`{m}`" for m in MODULES) + " |",
        "|---|" + "---:|" * len(MODULES),
    ]
    for label, costs in imports.items():
        out.append(f"| {label} | " + " | ".join("—" if costs[m] is None else f"{costs[m]:.2f}" for m in MODULES) + " |")
    markdown = "\n".join(out) + "\n"
    print(markdown)
    if args.out:
        args.out.write_text(markdown)


if __name__ == "__main__":
    main()
