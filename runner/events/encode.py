"""TensorBoard events encoded as bytes, a whole series of scalar points per call.

The runner logs the training loss at every iteration. ``SummaryWriter.add_scalar``
costs about 85 µs per point on a CPU that trains a small model in about 290 µs per
iteration, so the loss log alone would add a third to the run time. This module
encodes a whole batch of points of one tag at once (:func:`encode_scalars`) with numpy
instead of building one protobuf message per point; :mod:`runner.events.writer` hands the
bytes to a background thread that appends them to the event file.

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
import math
import struct
import time
from typing import Any

import google_crc32c
import numpy as np
from numpy.typing import ArrayLike
from tensorboard.compat.proto import summary_pb2

__all__ = ["encode_scalar", "encode_scalars", "encode_summary", "frame_record", "masked_crc32c"]

_MASK_DELTA = 0xA282EAD8
_UINT64_MASK = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack
_pack_uint32 = struct.Struct("<I").pack
_pack_uint64 = struct.Struct("<Q").pack
_crc32c = google_crc32c.value


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
