"""Cost per logged scalar point: torch's SummaryWriter against runner.events.writer.EventWriter.

Every variant writes the same points (one tag, steps 0..N-1, float64 values, wall
time "now") to a fresh log directory. The variants run interleaved, in a rotating
order, for ``--repeats`` rounds, so that a noisy neighbour on the machine hits them
all alike; the tables show medians (and minima) over the rounds.

* "log" is the time spent in the logging calls on the caller's thread, per point.
* "flush+close" is the time ``close()`` then blocks for, per run (for the writers
  with a thread, whatever the thread had not written yet).

The second table isolates the encoding (no file at all), to show where the time goes
and why the writer encodes the way it does.

Usage::

    .venv/bin/python bench/event_writer.py --points 100000 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np

from runner.events import encode, writer as event_writer  # the project installed in .venv (make setup)

from tensorboard.compat.proto import event_pb2, summary_pb2
from torch.utils.tensorboard import SummaryWriter

TAG = "train/loss"

# A run: (logdir, steps, values) -> (seconds in logging calls, seconds in flush+close).
Run = Callable[[Path, np.ndarray, np.ndarray], "tuple[float, float]"]


# --------------------------------------------------------------------------- writers
def run_summary_writer(logdir: Path, steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    writer = SummaryWriter(log_dir=str(logdir))
    steps_l, values_l = steps.tolist(), values.tolist()
    t0 = time.perf_counter()
    for step, value in zip(steps_l, values_l):
        writer.add_scalar(TAG, value, step)
    t1 = time.perf_counter()
    writer.close()
    return t1 - t0, time.perf_counter() - t1


def run_event_writer_scalar(logdir: Path, steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    writer = event_writer.EventWriter(logdir)
    steps_l, values_l = steps.tolist(), values.tolist()
    t0 = time.perf_counter()
    for step, value in zip(steps_l, values_l):
        writer.add_scalar(TAG, value, step)
    t1 = time.perf_counter()
    writer.close()
    return t1 - t0, time.perf_counter() - t1


def event_writer_batches(batch: int) -> Run:
    def run(logdir: Path, steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
        writer = event_writer.EventWriter(logdir)
        t0 = time.perf_counter()
        for begin in range(0, len(steps), batch):
            writer.add_scalars(TAG, steps[begin : begin + batch], values[begin : begin + batch])
        t1 = time.perf_counter()
        writer.close()
        return t1 - t0, time.perf_counter() - t1

    return run


def sync_scalar(logdir: Path, steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Hand encoding per point, written by the caller: the writer thread's counterfactual."""
    logdir.mkdir(parents=True, exist_ok=True)
    steps_l, values_l = steps.tolist(), values.tolist()
    with open(logdir / "events.out.tfevents.sync", "wb") as file:
        t0 = time.perf_counter()
        for step, value in zip(steps_l, values_l):
            file.write(encode.encode_scalar(TAG, step, value, time.time()))
        t1 = time.perf_counter()
    return t1 - t0, time.perf_counter() - t1


def sync_batches(batch: int) -> Run:
    def run(logdir: Path, steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
        logdir.mkdir(parents=True, exist_ok=True)
        with open(logdir / "events.out.tfevents.sync", "wb") as file:
            t0 = time.perf_counter()
            for begin in range(0, len(steps), batch):
                file.write(encode.encode_scalars(TAG, steps[begin : begin + batch], values[begin : begin + batch]))
                file.flush()
            t1 = time.perf_counter()
        return t1 - t0, time.perf_counter() - t1

    return run


# --------------------------------------------------------------------------- encoders only
def encode_protobuf(steps: np.ndarray, values: np.ndarray, batch: int) -> bytes:
    """An Event message per point, serialised by protobuf, framed with google_crc32c."""
    wall = time.time()
    out = []
    for step, value in zip(steps.tolist(), values.tolist()):
        event = event_pb2.Event(
            wall_time=wall,
            step=step,
            summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=TAG, simple_value=value)]),
        )
        out.append(encode.frame_record(event.SerializeToString()))
    return b"".join(out)


def encode_by_hand(steps: np.ndarray, values: np.ndarray, batch: int) -> bytes:
    wall = time.time()
    return b"".join(encode.encode_scalar(TAG, s, v, wall) for s, v in zip(steps.tolist(), values.tolist()))


def encode_numpy(steps: np.ndarray, values: np.ndarray, batch: int) -> bytes:
    return b"".join(
        encode.encode_scalars(TAG, steps[b : b + batch], values[b : b + batch]) for b in range(0, len(steps), batch)
    )


def _one_batch_of_records(steps: np.ndarray, values: np.ndarray, batch: int) -> tuple[np.ndarray, int]:
    """A batch's records as rows, and the data length (steps with 3-byte varints, so one length)."""
    blob = encode.encode_scalars(TAG, 16384 + steps[:batch], values[:batch])
    (length,) = struct.unpack_from("<Q", blob)
    return np.frombuffer(blob, dtype=np.uint8).reshape(-1, length + 16).copy(), length


def crc_by_table(steps: np.ndarray, values: np.ndarray, batch: int) -> bytes:
    """The data CRC step as the writer does it: per varying byte, one table look-up."""
    rows, length = _one_batch_of_records(steps, values, batch)
    row_len = length + 16
    tail_start = row_len - 8
    # The step varint and the float vary (the wall time is one constant per batch).
    columns = np.array([22, 23, 24, tail_start, tail_start + 1, tail_start + 2, tail_start + 3])
    distance = (row_len - 5) - columns
    table = encode._crc_contributions(int(distance.max()) + 1)
    for _ in range(len(steps) // len(rows)):
        crc = np.bitwise_xor.reduce(table[distance[None, :], rows[:, columns]], axis=1) ^ np.uint32(12345)
        masked = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)
        rows[:, row_len - 4 :] = masked.astype("<u4").view(np.uint8).reshape(-1, 4)
    return b""


def crc_per_record(steps: np.ndarray, values: np.ndarray, batch: int) -> bytes:
    """The same step with one google_crc32c call per record (slice, call, mask, store)."""
    rows, length = _one_batch_of_records(steps, values, batch)
    row_len = length + 16
    crc32c = google_crc32c.value
    for _ in range(len(steps) // len(rows)):
        blob = rows.tobytes()
        crc = np.fromiter(
            (crc32c(blob[i + 12 : i + 12 + length]) for i in range(0, len(blob), row_len)), np.uint32, len(rows)
        )
        masked = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)
        rows[:, row_len - 4 :] = masked.astype("<u4").view(np.uint8).reshape(-1, 4)
    return b""


# --------------------------------------------------------------------------- reporting
def versions() -> str:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    import torch

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, tensorboard {version('tensorboard')}, "
        f"protobuf {version('protobuf')}, google_crc32c {version('google-crc32c')} "
        f"({google_crc32c.implementation} implementation), numpy {np.__version__}"
    )


def median_min(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} ({min(samples):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000, help="points per run (default 100000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--batch", type=int, default=1000, help="points per add_scalars call (default 1000)")
    args = parser.parse_args()
    points, batch = args.points, args.batch

    steps = np.arange(points, dtype=np.int64)
    values = np.random.default_rng(0).standard_normal(points)
    writers: dict[str, Run] = {
        "SummaryWriter.add_scalar, per point": run_summary_writer,
        "EventWriter.add_scalar, per point": run_event_writer_scalar,
        f"EventWriter.add_scalars, batches of {batch}": event_writer_batches(batch),
        f"EventWriter.add_scalars, batches of {10 * batch}": event_writer_batches(10 * batch),
        "sync: encode_scalar + file.write per point (no thread)": sync_scalar,
        f"sync: encode_scalars + file.write per {batch} (no thread)": sync_batches(batch),
    }
    encoders: dict[str, Callable[[np.ndarray, np.ndarray, int], bytes]] = {
        "protobuf Event + SerializeToString + google_crc32c framing, per point": encode_protobuf,
        "hand-encoded bytes in Python, per point (add_scalar's path)": encode_by_hand,
        f"numpy vectorised incl. table CRC32C, per {batch} (add_scalars' path)": encode_numpy,
        f"data CRC step alone, vectorised table look-ups, per {batch}": crc_by_table,
        f"data CRC step alone, google_crc32c.value per record, per {batch}": crc_per_record,
    }

    log_us: dict[str, list[float]] = {name: [] for name in writers}
    close_ms: dict[str, list[float]] = {name: [] for name in writers}
    encode_us: dict[str, list[float]] = {name: [] for name in encoders}
    root = Path(tempfile.mkdtemp(prefix="bench_event_writer_"))
    try:
        for repeat in range(args.repeats):
            names = list(writers)
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                logdir = root / f"r{repeat}" / str(names.index(name))
                log_s, close_s = writers[name](logdir, steps, values)
                log_us[name].append(log_s / points * 1e6)
                close_ms[name].append(close_s * 1e3)
                shutil.rmtree(logdir)
            for name, encode_all in encoders.items():
                t0 = time.perf_counter()
                encode_all(steps, values, batch)
                encode_us[name].append((time.perf_counter() - t0) / points * 1e6)
            print(f"round {repeat + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"Versions: {versions()}")
    print(f"{points} points of one tag per run, {args.repeats} interleaved rounds; median (min).")
    print()
    print("| writer | log, µs/point | flush+close, ms |")
    print("|---|---:|---:|")
    for name in writers:
        print(f"| {name} | {median_min(log_us[name])} | {median_min(close_ms[name])} |")
    print()
    print("| encoding only (no I/O) | µs/point |")
    print("|---|---:|")
    for name in encoders:
        print(f"| {name} | {median_min(encode_us[name])} |")


if __name__ == "__main__":
    main()
