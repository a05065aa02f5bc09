"""The event file of a run, appended to from a background thread.

The training thread only encodes points (:mod:`runner.events.encode`: about 0.3 µs per point
in :meth:`EventWriter.add_scalars`) and hands the bytes over; a daemon thread appends them to
the file at least once a second, so a live TensorBoard follows the run and the loop never
waits on the disk.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Union

from numpy.typing import ArrayLike
from tensorboard.compat.proto import event_pb2, summary_pb2

from runner.events.encode import encode_scalar, encode_scalars, encode_summary, frame_record
from runner.safefs import open_inside

__all__ = ["EventWriteError", "EventWriter"]

PathLike = Union[str, "os.PathLike[str]"]

# The writer thread is woken once this much is waiting, so a long epoch's worth of
# points does not pile up in memory; below it the thread wakes on its own timer.
_HANDOVER_BYTES = 256 * 1024
# The longest a point waits before it reaches the file (and a live TensorBoard).
_MAX_LATENCY_S = 1.0

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
                source_metadata=event_pb2.SourceMetadata(writer="runner.events"),
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
