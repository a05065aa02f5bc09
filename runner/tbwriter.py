"""A TensorBoard event-file writer built for many scalar points per call.

The runner logs the training loss at every iteration. ``SummaryWriter.add_scalar``
costs about 85 µs per point on a CPU that trains a small model in about 290 µs per
iteration, so the loss log alone would add a third to the run time. This writer
takes a whole batch of points of one tag at once (:meth:`EventWriter.add_scalars`),
encodes them with numpy instead of building one protobuf message per point, and
hands the bytes to a background thread that appends them to the event file.

File format (what TensorBoard reads):

* The event file is a sequence of TFRecords: ``uint64 length`` (little endian),
  ``masked CRC32C(length bytes)``, ``data``, ``masked CRC32C(data)``.
* Each ``data`` is a serialised ``tensorboard.Event``. A scalar point is
  ``Event{wall_time=1 (double), step=2 (int64), summary=5 {value=1 {tag=1 (string),
  simple_value=2 (float)}}}``; only ``wall_time``, ``step`` and the float vary from
  one point to the next, so everything else is built once per tag.

The encoded bytes are the ones protobuf's own ``SerializeToString`` gives (fields in
number order, ``step`` left out when it is 0 as proto3 does, negative steps as
10-byte varints), with one exception: ``wall_time`` is always written, where
protobuf would leave out an exact ``0.0``; both parse to the same ``Event``.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import struct
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Union

import google_crc32c
import numpy as np
from numpy.typing import ArrayLike
from tensorboard.compat.proto import event_pb2, summary_pb2
from runner.safefs import open_inside

__all__ = [
    "EventWriteError",
    "EventWriter",
    "encode_scalar",
    "encode_scalars",
    "encode_summary",
    "frame_record",
    "masked_crc32c",
]

PathLike = Union[str, "os.PathLike[str]"]

# The writer thread is woken once this much is waiting, so a long epoch's worth of
# points does not pile up in memory; below it the thread wakes on its own timer.
_HANDOVER_BYTES = 256 * 1024
# The longest a point waits before it reaches the file (and a live TensorBoard).
_MAX_LATENCY_S = 1.0

_MASK_DELTA = 0xA282EAD8
_UINT64_MASK = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack
_pack_uint32 = struct.Struct("<I").pack
_pack_uint64 = struct.Struct("<Q").pack
_crc32c = google_crc32c.value

_own_uid = itertools.count()


def _next_file_counter() -> int:
    # Where TensorBoard's EventFileWriter is loaded (a SummaryWriter in the same process),
    # share its counter, so our file names stay distinct from its own in the same second.
    # Importing it just for that would load TensorBoard's TensorFlow stub (0.2-0.4 s of
    # every run's start); without it, "x" mode in _open_event_file still never truncates.
    shared = sys.modules.get("tensorboard.summary.writer.event_file_writer")
    uid = getattr(shared, "_global_uid", None)
    return int(uid.get()) if uid is not None else next(_own_uid)


class EventWriteError(OSError):
    """The background thread could not write the event file; no later point was written."""


# --------------------------------------------------------------------------- framing
def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``.

    Args:
        data: the bytes to checksum.

    Returns:
        ``((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32``, as TensorBoard checks it.
    """
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@functools.lru_cache(maxsize=1024)
def _record_header(length: int) -> bytes:
    """The 12 bytes in front of a record of ``length`` data bytes (length + its CRC)."""
    header = _pack_uint64(length)
    return header + _pack_uint32(masked_crc32c(header))


def frame_record(data: bytes) -> bytes:
    """Wraps one serialised ``Event`` as a TFRecord.

    Args:
        data: the serialised event.

    Returns:
        length, masked CRC of the length, ``data``, masked CRC of ``data``.
    """
    return _record_header(len(data)) + data + _pack_uint32(masked_crc32c(data))


# --------------------------------------------------------------------------- one event
def _varint(u: int) -> bytes:
    # Unrolled for the lengths steps and message sizes usually have; this sits on the
    # per-point path of add_scalar.
    if u < 0x80:
        return bytes((u,))
    if u < 0x4000:
        return bytes(((u & 0x7F) | 0x80, u >> 7))
    if u < 0x200000:
        return bytes(((u & 0x7F) | 0x80, ((u >> 7) & 0x7F) | 0x80, u >> 14))
    out = bytearray()
    while u > 0x7F:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def _check_step(step: Any) -> int:
    if type(step) is int and _INT64_MIN <= step <= _INT64_MAX:
        return step
    try:
        step = int(step.__index__())
    except (AttributeError, TypeError):
        raise TypeError(f"step must be an integer, got {step!r}") from None
    if not _INT64_MIN <= step <= _INT64_MAX:
        raise ValueError(f"step {step} does not fit in int64")
    return step


def _step_field(step: int) -> bytes:
    # proto3 leaves an int64 field out when it is 0; matching that keeps the bytes
    # identical to SerializeToString.
    return b"\x10" + _varint(step & _UINT64_MASK) if step else b""


def _float32_bytes(value: float) -> bytes:
    try:
        return _pack_float(value)
    except OverflowError:
        # struct refuses finite doubles beyond float32's range; protobuf and numpy
        # round them to infinity, and so must we.
        return _pack_float(math.copysign(math.inf, value))


@functools.lru_cache(maxsize=4096)
def _scalar_tail(tag: str) -> bytes:
    """The bytes of a scalar event between ``step`` and the 4 float bytes.

    ``0x2a len(Summary) [0x0a len(Value) [0x0a len(tag) tag] 0x15``, i.e. everything but
    the value itself, which is the same for every point of the tag.
    """
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a str, got {type(tag).__name__}")
    tag_bytes = tag.encode("utf-8")
    # proto3 leaves out an empty string, as it does a zero step.
    value_head = (b"\x0a" + _varint(len(tag_bytes)) + tag_bytes if tag_bytes else b"") + b"\x15"
    value_len = len(value_head) + 4
    summary_len = 1 + len(_varint(value_len)) + value_len
    return b"\x2a" + _varint(summary_len) + b"\x0a" + _varint(value_len) + value_head


def encode_scalar(tag: str, step: int, value: float, wall_time: float) -> bytes:
    """One scalar point as a framed record, encoded in plain Python.

    Used for single points, where numpy's per-call overhead (tens of µs) would cost
    more than the encoding itself.

    Args:
        tag: the scalar's name.
        step: the global step, any int64.
        value: the value; stored as float32, as TensorBoard does.
        wall_time: seconds since the epoch.

    Returns:
        The TFRecord bytes of the event.
    """
    tail = _scalar_tail(tag)
    step = _check_step(step)
    data = b"\x09" + _pack_double(float(wall_time)) + _step_field(step) + tail + _float32_bytes(float(value))
    # frame_record inlined: a function call is a measurable part of the ~1.5 µs here.
    crc = _crc32c(data)
    masked = (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF
    return _record_header(len(data)) + data + _pack_uint32(masked)


def encode_summary(summary: summary_pb2.Summary, step: int, wall_time: float) -> bytes:
    """An event carrying an arbitrary ``Summary`` (text, hparams, images ...) as a record.

    Args:
        summary: the summary, as built by ``torch.utils.tensorboard.summary`` or by hand.
        step: the global step, any int64.
        wall_time: seconds since the epoch.

    Returns:
        The TFRecord bytes of the event.
    """
    if not isinstance(summary, summary_pb2.Summary):
        raise TypeError(
            "summary must be a tensorboard.compat.proto.summary_pb2.Summary, "
            f"got {type(summary).__module__}.{type(summary).__name__}"
        )
    step = _check_step(step)
    body = summary.SerializeToString()
    data = b"\x09" + _pack_double(float(wall_time)) + _step_field(step) + b"\x2a" + _varint(len(body)) + body
    return frame_record(data)


# --------------------------------------------------------------------------- many events
_CRC32C_POLY_REFLECTED = 0x82F63B78


def _crc_byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_CRC32C_POLY_REFLECTED), table >> 1)
    return table


_CRC_BYTE_TABLE = _crc_byte_table()
# Row d: what a byte contributes to the CRC register when d more bytes follow it.
_crc_rows = _CRC_BYTE_TABLE[None, :].copy()


def _crc_contributions(depth: int) -> np.ndarray:
    """CRC32C contribution table with at least ``depth`` rows (see :func:`encode_scalars`).

    CRC32C is affine over GF(2): for messages of one length, ``crc(a ^ b) = crc(a) ^
    crc(b) ^ crc(0...)``. A byte ``v`` followed by ``d`` bytes therefore changes the CRC
    of a message by ``rows[d][v]`` whatever the other bytes are, which turns the CRC of
    thousands of records that differ in a few bytes into a few table look-ups each.
    """
    global _crc_rows
    rows = _crc_rows
    if len(rows) < depth:
        grown = [rows]
        last = rows[-1]
        for _ in range(depth + 64 - len(rows)):
            # One more zero byte through the register: r = (r >> 8) ^ T[r & 0xff].
            last = (last >> 8) ^ _CRC_BYTE_TABLE[last & 0xFF]
            grown.append(last[None, :])
        rows = np.concatenate(grown)
        # Rebinding is atomic, so two threads growing it at once only duplicate work.
        _crc_rows = rows
    return rows


# 2**7, 2**14, ..., 2**63: a uint64 needs 1 + (how many of these it reaches) varint bytes.
_VARINT_LIMITS = np.array([1 << (7 * i) for i in range(1, 10)], dtype=np.uint64)
# Up to this many runs of equal record length are encoded run by run (a fixed cost of
# about 20 µs each); beyond it one block per length and a scatter is cheaper.
_MAX_RUNS = 16


def _as_steps(steps: ArrayLike) -> np.ndarray:
    arr = np.asarray(steps)
    if arr.ndim != 1:
        raise ValueError(f"steps must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return np.zeros(0, dtype=np.uint64)
        raise TypeError(f"steps must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.size and int(arr.max()) > _INT64_MAX:
        raise ValueError("steps must fit in int64")
    # Two's complement is exactly how protobuf varint-encodes a negative int64.
    return arr.astype("<i8", copy=False).view("<u8")


def _as_values(values: ArrayLike, count: int) -> np.ndarray:
    # Doubles beyond float32's range become +-inf, as protobuf's float field does.
    with np.errstate(over="ignore"):
        arr = np.asarray(values, dtype="<f4")
    if arr.shape != (count,):
        raise ValueError(f"values must have shape ({count},) like steps, got {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_wall_times(wall_times: ArrayLike | float | None, count: int) -> float | np.ndarray:
    if wall_times is None:
        return time.time()
    arr = np.asarray(wall_times, dtype="<f8")
    if arr.ndim == 0:
        return float(arr)
    if arr.shape != (count,):
        raise ValueError(f"wall_times must be None, a number or of shape ({count},), got {arr.shape}")
    return np.ascontiguousarray(arr)


def _encode_group(
    tail: bytes, steps_u: np.ndarray, values: np.ndarray, wall_times: float | np.ndarray, slot: int
) -> np.ndarray:
    """Records of points whose step field is ``slot`` bytes long, one row per record.

    All rows have the same layout, so each is a copy of one template with the
    varying bytes (wall time, step varint, float, data CRC) written column-wise.
    """
    count = len(values)
    varint_len = slot - 1 if slot else 0
    data_len = 9 + slot + len(tail) + 4
    row_len = 12 + data_len + 4
    const_wall = not isinstance(wall_times, np.ndarray)

    data = bytearray(data_len)
    data[0] = 0x09
    if const_wall:
        data[1:9] = _pack_double(wall_times)
    if slot:
        data[9] = 0x10
    data[9 + slot : data_len - 4] = tail
    template = _record_header(data_len) + bytes(data) + b"\x00\x00\x00\x00"

    rows = np.empty((count, row_len), dtype=np.uint8)
    rows[:] = np.frombuffer(template, dtype=np.uint8)
    # Columns (in record coordinates) whose bytes vary from row to row.
    varying = []
    if not const_wall:
        rows[:, 13:21] = wall_times.view(np.uint8).reshape(count, 8)
        varying.append(np.arange(13, 21))
    if varint_len:
        shifts = np.arange(varint_len, dtype=np.uint64) * np.uint64(7)
        groups7 = ((steps_u[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
        groups7[:, :-1] |= 0x80
        start = 12 + 10
        rows[:, start : start + varint_len] = groups7
        varying.append(np.arange(start, start + varint_len))
    float_start = row_len - 8
    rows[:, float_start : float_start + 4] = values.view(np.uint8).reshape(count, 4)
    varying.append(np.arange(float_start, float_start + 4))

    columns = np.concatenate(varying)
    # Distance of each varying byte from the end of the data (data ends at row_len - 4).
    distance = (row_len - 5) - columns
    table = _crc_contributions(int(distance.max()) + 1)
    # The template's varying bytes are zero, so its CRC is the affine constant.
    crc = np.uint32(_crc32c(bytes(data)))
    contrib = table[distance[None, :], rows[:, columns]]
    crc = np.bitwise_xor.reduce(contrib, axis=1) ^ crc
    masked = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_MASK_DELTA)
    rows[:, row_len - 4 :] = masked.astype("<u4").view(np.uint8).reshape(count, 4)
    return rows


def encode_scalars(
    tag: str, steps: ArrayLike, values: ArrayLike, wall_times: ArrayLike | float | None = None
) -> bytes:
    """Many scalar points of one tag as consecutive framed records, encoded with numpy.

    Args:
        tag: the scalar's name.
        steps: one int64 step per point.
        values: one value per point; stored as float32, as TensorBoard does.
        wall_times: ``None`` for now, one number for all points, or one per point.

    Returns:
        The records, in the order of the points.

    Raises:
        TypeError: ``steps`` are not integers or ``tag`` is not a str.
        ValueError: the lengths disagree or a step does not fit in int64.
    """
    tail = _scalar_tail(tag)
    steps_u = _as_steps(steps)
    count = len(steps_u)
    values_f = _as_values(values, count)
    wall = _as_wall_times(wall_times, count)
    if count == 0:
        return b""

    # Step field length per point: nothing for 0 (proto3 default), else tag + varint.
    slots = np.where(steps_u == 0, 0, 2 + np.searchsorted(_VARINT_LIMITS, steps_u, side="right"))
    run_bounds = np.concatenate(([0], np.flatnonzero(slots[1:] != slots[:-1]) + 1, [count]))
    if len(run_bounds) <= _MAX_RUNS + 1:
        # The usual case: steps that grow, so points of one record length are
        # contiguous (at most one run per varint length).
        blocks = []
        for begin, end in zip(run_bounds[:-1].tolist(), run_bounds[1:].tolist()):
            run_wall = wall[begin:end] if isinstance(wall, np.ndarray) else wall
            rows = _encode_group(tail, steps_u[begin:end], values_f[begin:end], run_wall, int(slots[begin]))
            blocks.append(rows.tobytes())
        return b"".join(blocks)

    # Record lengths interleaved (steps out of order, or around 0): encode each
    # length as one block, then scatter its rows to their place in the output.
    row_lens = 12 + 9 + slots + len(tail) + 4 + 4
    ends = np.cumsum(row_lens)
    starts = ends - row_lens
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for slot in np.unique(slots).tolist():
        idx = np.flatnonzero(slots == slot)
        group_wall = wall if not isinstance(wall, np.ndarray) else wall[idx]
        rows = _encode_group(tail, steps_u[idx], values_f[idx], group_wall, slot)
        out[starts[idx][:, None] + np.arange(rows.shape[1])] = rows
    return out.tobytes()


# --------------------------------------------------------------------------- the writer
class _Sink:
    """The file, the hand-over list and the writer thread.

    Kept apart from :class:`EventWriter` and never pointing back to it, so that a
    writer that is dropped without ``close()`` is still finalised (and its points
    written) instead of being kept alive by its own thread.
    """

    def __init__(self, file: Any, path: Path) -> None:
        self.file = file
        self.path = path
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        # bytes to append, or a threading.Event to set once everything before it is flushed.
        self.pending: list[bytes | threading.Event] = []
        self.pending_bytes = 0
        self.wake = False
        self.stopping = False
        self.closed = False
        self.error: BaseException | None = None
        # One flag for closed / failed / forked, so the per-point path tests one attribute.
        self.unusable = False
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name=f"EventWriter:{path.name}", daemon=True)
        self.thread.start()
        _LIVE_SINKS.add(self)

    # ---- caller side
    def raise_if_failed(self) -> None:
        error = self.error
        if error is not None:
            errno = getattr(error, "errno", None)
            raise EventWriteError(errno, f"writing TensorBoard events failed: {error}", str(self.path)) from error

    def check_usable(self) -> None:
        if self.closed:
            raise ValueError(f"EventWriter for {self.path} is closed")
        if os.getpid() != self.pid:
            # The writer thread did not survive fork(); points put here would be lost.
            raise RuntimeError(f"EventWriter for {self.path} was created in process {self.pid}, not this one")
        self.raise_if_failed()

    def put(self, chunk: bytes) -> None:
        with self.lock:
            if self.unusable:
                self.check_usable()
            self.pending.append(chunk)
            self.pending_bytes += len(chunk)
            if self.pending_bytes >= _HANDOVER_BYTES and not self.wake:
                self.wake = True
                self.cond.notify()

    def flush(self) -> None:
        done = threading.Event()
        with self.cond:
            self.check_usable()
            self.pending.append(done)
            self.wake = True
            self.cond.notify()
        while not done.wait(timeout=0.5):
            if not self.thread.is_alive():
                break
        self.raise_if_failed()
        if not done.is_set():
            raise RuntimeError(f"the writer thread of {self.path} stopped before flushing")

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.unusable = True
            if os.getpid() != self.pid:
                # A forked child's copy: the file belongs to the parent, leave it alone.
                return
            self.stopping = True
            self.wake = True
            self.cond.notify()
        self.thread.join()
        try:
            self.file.close()
        except Exception as exc:  # noqa: BLE001 - surfaced just below, never dropped
            if self.error is None:
                self.error = exc
        self.raise_if_failed()

    # ---- writer thread
    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.wake:
                    self.cond.wait(_MAX_LATENCY_S)
                batch, self.pending = self.pending, []
                self.pending_bytes = 0
                self.wake = False
                stop = self.stopping
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[bytes | threading.Event]) -> None:
        chunks: list[bytes] = []
        for item in batch:
            if isinstance(item, threading.Event):
                self._append(chunks)
                chunks = []
                item.set()
            else:
                chunks.append(item)
        self._append(chunks)

    def _append(self, chunks: list[bytes]) -> None:
        if not chunks or self.error is not None:
            # After a failure nothing more is written: a record after a gap would read
            # as if the lost points had never been logged.
            return
        try:
            self.file.write(b"".join(chunks))
            # Flushed per batch (at most about once a second) so a live TensorBoard sees it.
            self.file.flush()
        except Exception as exc:  # noqa: BLE001 - re-raised on the caller's thread
            self.error = exc
            self.unusable = True


_LIVE_SINKS: weakref.WeakSet[_Sink] = weakref.WeakSet()


def _mark_forked() -> None:
    # The child has no writer thread; make its next call raise instead of queueing
    # points that would never be written.
    for sink in list(_LIVE_SINKS):
        sink.unusable = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked)


def _open_event_file(logdir: Path, filename_suffix: str) -> tuple[Any, Path]:
    # Same name as TensorBoard's EventFileWriter; "x" mode so that a name collision
    # (another writer in the same second with the same counter) never truncates a file.
    for _ in range(100):
        name = "events.out.tfevents.%010d.%s.%s.%s%s" % (
            time.time(),
            socket.gethostname(),
            os.getpid(),
            _next_file_counter(),
            filename_suffix,
        )
        path = logdir / name
        try:
            return open_inside(logdir, path, "xb"), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free event file name in {logdir}")


class EventWriter:
    """Appends TensorBoard events to a new event file from a background thread.

    The training thread only encodes (about 0.3 µs per point in
    :meth:`add_scalars`, 2 µs in :meth:`add_scalar`) and appends the bytes to a list;
    a daemon thread writes them, at least once a second. An I/O error in that thread
    is raised by the next call on this writer. ``close()`` runs at interpreter exit
    (and when the writer is garbage collected), so a finished run never loses points.

    Args:
        logdir: directory of the run; created if missing.
        filename_suffix: appended to the event file's name.

    Raises:
        OSError: the directory or the file cannot be created (the error names the path).
    """

    def __init__(self, logdir: PathLike, filename_suffix: str = "", resume_from: tuple[PathLike, int] | None = None) -> None:
        """
        Args:
            logdir: the run's TensorBoard directory (created if needed).
            filename_suffix: appended to the new event file's name.
            resume_from: ``(event file, byte size)`` recorded by :meth:`flush_position` at a
                checkpoint. The file is cut back to that size and appended to, so the
                records written after the checkpoint (which a resumed run writes again) are
                not there twice, and no reader sees a second file out of order.
        """
        if resume_from is not None:
            path, size = Path(resume_from[0]), int(resume_from[1])
            with open_inside(path.parent, path, "r+b") as existing:
                existing.truncate(size)
            self._sink = _Sink(open_inside(path.parent, path, "ab"), path)
            self._finalizer = weakref.finalize(self, self._sink.close)
            return
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        file, path = _open_event_file(logdir, filename_suffix)
        try:
            header = event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer="runner.tbwriter"),
            )
            file.write(frame_record(header.SerializeToString()))
            file.flush()
        except BaseException:
            file.close()
            raise
        self._sink = _Sink(file, path)
        self._finalizer = weakref.finalize(self, self._sink.close)

    @property
    def path(self) -> Path:
        """The event file."""
        return self._sink.path

    def flush_position(self) -> tuple[Path, int]:
        """Flush, and return ``(event file, its size)``: the point a resumed run restarts from."""
        self.flush()
        return self.path, self.path.stat().st_size

    def add_scalars(
        self, tag: str, steps: ArrayLike, values: ArrayLike, wall_times: ArrayLike | float | None = None
    ) -> None:
        """Logs many points of one scalar.

        Args:
            tag: the scalar's name, e.g. ``"train/loss"``.
            steps: one int64 step per point (list or integer array).
            values: one value per point; TensorBoard stores float32.
            wall_times: ``None`` for now, one number for all points, or one per point.

        Raises:
            ValueError: the writer is closed, or the arguments' lengths disagree.
            TypeError: ``steps`` are not integers.
            EventWriteError: an earlier write failed.
        """
        self._sink.check_usable()
        chunk = encode_scalars(tag, steps, values, wall_times)
        if chunk:
            self._sink.put(chunk)

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Logs one point of one scalar (same arguments as ``SummaryWriter.add_scalar``).

        Args:
            tag: the scalar's name.
            value: the value; TensorBoard stores float32.
            step: the global step.
            wall_time: seconds since the epoch; ``None`` for now.

        Raises:
            ValueError: the writer is closed.
            EventWriteError: an earlier write failed.
        """
        self._sink.put(encode_scalar(tag, step, value, time.time() if wall_time is None else wall_time))

    def add_summary(self, summary: summary_pb2.Summary, step: int, wall_time: float | None = None) -> None:
        """Logs a ``Summary`` built elsewhere (text, hparams, images ...).

        Args:
            summary: e.g. ``torch.utils.tensorboard.summary.text(tag, text)``.
            step: the global step.
            wall_time: seconds since the epoch; ``None`` for now.

        Raises:
            TypeError: ``summary`` is not a ``Summary``.
            ValueError: the writer is closed.
            EventWriteError: an earlier write failed.
        """
        self._sink.put(encode_summary(summary, step, time.time() if wall_time is None else wall_time))

    def flush(self) -> None:
        """Blocks until everything logged so far is written and flushed to the OS.

        Raises:
            ValueError: the writer is closed.
            EventWriteError: a write failed.
        """
        self._sink.flush()

    def close(self) -> None:
        """Writes everything logged so far, stops the thread and closes the file.

        Calling it again does nothing.

        Raises:
            EventWriteError: a write failed (raised by the first ``close()`` only).
        """
        self._finalizer()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sink.closed else "open"
        return f"EventWriter({str(self._sink.path)!r}, {state})"
