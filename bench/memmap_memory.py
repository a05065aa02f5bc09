"""Peak memory of streaming one shuffled epoch from memory-mapped ``.npy`` files, by data size.

For each size, ``X.npy`` (float32, ``rows x d``) and ``y.npy`` (float32 targets) are
written in a temporary directory a chunk at a time with ``np.lib.format.open_memmap``
(the written pages are released after each chunk, so the generator stays small too).
Then a fresh Python process, so that no earlier allocation hides in its peak, does what
a training run does with them: opens and checks the files, standardises features and
target from the data (two passes), draws the epoch's permutation and streams the epoch
through :class:`runner.data.memmap.BlockStream` batch by batch. It reports:

* ``baseline``: its RSS once numpy and torch are imported, before any data is touched;
* ``peak``: its lifetime peak RSS (``VmHWM`` from ``/proc/self/status``);
* ``growth = peak - baseline``, next to the part that must grow with the data: the
  epoch's permutation, 8 bytes a sample (as on the in-memory path).

``VmHWM`` rather than ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the latter is the
largest child so far, and Linux folds the pre-``exec`` image of the forked parent into
it. The files are deleted afterwards.

Usage::

    .venv/bin/python bench/memmap_memory.py                       # 1e5, 1e6, 1e7 rows
    .venv/bin/python bench/memmap_memory.py --rows 100000 --block 4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

MB = 2**20


def status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``...) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


# -------------------------------------------------------------------------- generation
def generate(directory: Path, rows: int, d: int, chunk: int = 500_000, seed: int = 0) -> None:
    """``X.npy`` (``rows x d``) and ``y.npy`` (a noisy linear target), float32, written chunk by chunk."""
    from runner.data.memmap import _release

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=d).astype(np.float32)
    X = np.lib.format.open_memmap(directory / "X.npy", mode="w+", dtype=np.float32, shape=(rows, d))
    y = np.lib.format.open_memmap(directory / "y.npy", mode="w+", dtype=np.float32, shape=(rows,))
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        features = rng.standard_normal((n, d), dtype=np.float32)
        X[start : start + n] = features
        y[start : start + n] = features @ weights + rng.standard_normal(n, dtype=np.float32)
        # Dirty pages of a shared file mapping stay in the page cache when unmapped.
        _release(X)
        _release(y)
    X.flush()
    y.flush()
    del X, y


# ------------------------------------------------------------------------------- child
def child(directory: Path, batch: int, block: int) -> None:
    """Open, standardise and stream one epoch; print what was measured as one JSON line."""
    import torch

    from runner.data import memmap
    from runner.loop import batch_slices, epoch_order
    from runner.losses import MeanSquaredError

    baseline = status_mb("VmRSS")
    started = time.perf_counter()
    full = memmap.open_memmap_dataset(directory)
    train, _ = memmap.standardize_memmap(full, None, features=True, target=True)
    prepared = time.perf_counter()
    split = memmap.MemmapSplit(train, MeanSquaredError(), torch.device("cpu"), block)
    n = len(split)
    order = epoch_order(torch.Generator().manual_seed(0), n, True, torch.device("cpu"))
    stream = split.source(order, bounded_memory=True)
    checksum = 0.0
    for positions in batch_slices(n, batch, drop_last=False):
        x, _ = stream.take(positions)
        checksum += float(x[0, 0])  # touch the data, as a model would
    finished = time.perf_counter()
    print(json.dumps({
        "baseline_mb": baseline,
        "peak_mb": status_mb("VmHWM"),
        "prepare_s": prepared - started,
        "epoch_s": finished - prepared,
        "blocks": stream.blocks_read,
        "largest_block_mb": stream.largest_block_bytes / MB,
        "checksum": checksum,
    }))


def measure(directory: Path, batch: int, block: int) -> dict:
    """Run :func:`child` in a fresh interpreter and return its report."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(directory), "--batch", str(batch), "--block", str(block)],
        check=True, capture_output=True, text=True, cwd=REPO,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ report
def machine() -> str:
    import torch

    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")), "0")
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {int(memory) / 2**20:.1f} GiB RAM; Linux {platform.release()}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    parser.add_argument("--d", type=int, default=10, help="features per row")
    parser.add_argument("--block", type=int, default=65_536, help="samples read from disk at a time")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.batch, args.block)
        return

    print(f"Machine: {machine()}")
    print(f"One shuffled epoch, batch {args.batch}, block {args.block}, d={args.d} float32 features + float32 target.\n")
    print("| rows | files (MB) | baseline RSS (MB) | peak RSS (MB) | growth (MB) | of which permutation (MB) | largest block (MB) | open+stats (s) | epoch (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="memmap_bench_") as tmp:
            directory = Path(tmp)
            generate(directory, rows, args.d)
            files_mb = sum(f.stat().st_size for f in directory.iterdir()) / MB
            r = measure(directory, args.batch, args.block)
        print(
            f"| {rows:,} | {files_mb:,.0f} | {r['baseline_mb']:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['baseline_mb']:.0f} "
            f"| {rows * 8 / MB:.1f} | {r['largest_block_mb']:.1f} | {r['prepare_s']:.1f} | {r['epoch_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
