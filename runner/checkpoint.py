"""Checkpoints that survive a kill at any moment, and load without running anyone's code.

A checkpoint is written to a temporary file in the same directory, fsynced, then renamed
over ``last.ckpt`` (the previous one becomes ``prev.ckpt``): a kill during the write leaves
the old files whole. Loading always passes ``weights_only=True`` explicitly, so a malicious
pickle is refused even when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set, and a ``last``
that will not load — or loads but does not fit the run — falls back to ``prev`` with a warning.
A write that fails (a full disk) removes its temporary file.

:class:`CheckpointWriter` does the writing and the ``fsync`` s on a thread of their own, so
a run pays only for serialising its state at a boundary: the disk is never more than one
checkpoint behind, and a kill resumes from whichever whole checkpoint is on disk (resume
is exact from any of them).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import random
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from runner.errors import DataError, RunnerError
from runner.safefs import open_inside

log = logging.getLogger(__name__)

LAST, PREV = "last.ckpt", "prev.ckpt"
_TMP_PREFIX = ".writing-"
# Fault injection for the crash-safety tests: the process kills itself (SIGKILL) in the
# middle of its N-th checkpoint write, after the new file is written and before it
# replaces the old ones — the one moment no timing-based kill can be aimed at.
FAULT_ENV = "RUNNER_FAULT_KILL_IN_CHECKPOINT"
_saves = 0


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry itself is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically as ``folder/last.ckpt``, keeping the previous one as ``prev.ckpt``."""
    return write_checkpoint(folder, serialize(state))


def serialize(state: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes: a copy of ``state`` as it is now."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_checkpoint(folder: Path, data: bytes) -> Path:
    """Write serialised checkpoint bytes atomically as ``folder/last.ckpt`` (the old one becomes ``prev.ckpt``)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{_TMP_PREFIX}{os.getpid()}.ckpt"
    try:
        with open_inside(folder.parent, tmp, "wb") as f:  # <run>/checkpoints/: nothing followed out of <run>
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        raise _as_os_error(err, folder) from err
    _maybe_inject_fault()
    last = folder / LAST
    if last.exists():
        os.replace(last, folder / PREV)
    os.replace(tmp, last)
    _fsync_dir(folder)
    return last


class CheckpointWriter:
    """Writes one run's checkpoints on a background thread, newest first.

    :meth:`submit` serialises the state on the caller's thread (a snapshot: training goes on
    changing the tensors) and returns; the thread writes and fsyncs it. A checkpoint still
    waiting when a newer one arrives is replaced by it — the older one would be overwritten
    at once anyway. :meth:`wait` blocks until everything submitted is on disk and raises
    what a write raised (a full disk); :meth:`close` waits and ends the thread. Use it as a
    context manager around the run, so nothing is left half-written when the run ends.

    ``submit(state, snapshot=True)`` says that nothing in ``state`` changes any more (a fused
    group's member: its tensors are replaced, not written into, at the next boundary): the
    thread then serialises it too, off the training thread.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._pending: bytes | dict[str, Any] | None = None
        self._writing = False
        self._closed = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(raise_error=exc[0] is None)

    def submit(self, state: dict[str, Any], snapshot: bool = False) -> None:
        self._raise_error()
        data = state if snapshot else serialize(state)
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"checkpoints {self.folder}", daemon=True)
                self._thread.start()
            self._pending = data
            self._changed.notify_all()

    def wait(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._pending is None and not self._writing)
        self._raise_error()

    def close(self, raise_error: bool = True) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._pending is None and not self._writing)
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        if raise_error:
            self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                data, self._pending, self._writing = self._pending, None, True
            try:
                write_checkpoint(self.folder, data if isinstance(data, bytes) else serialize(data))
            except BaseException as err:  # handed to the training thread at its next call
                self._error = err
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()


def _maybe_inject_fault() -> None:
    global _saves
    _saves += 1
    if os.environ.get(FAULT_ENV) == str(_saves):
        os.kill(os.getpid(), signal.SIGKILL)


def _as_os_error(err: BaseException, folder: Path) -> BaseException:
    """torch's zip writer reports a failed ``write`` (``ENOSPC``) as a RuntimeError; give it
    back its errno so that callers can tell a full disk from a bug."""
    if isinstance(err, RuntimeError) and "file write failed" in str(err):
        usage = os.statvfs(folder)
        if usage.f_bavail * usage.f_frsize < 1 << 20:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return err


def _describe(err: Exception) -> str:
    """Why a file did not load, in words — never torch's advice to load it with
    ``weights_only=False``, which is the wrong advice for a file nobody vouches for."""
    if isinstance(err, pickle.UnpicklingError):
        return "it holds objects that only load by running code (refused)"
    first = str(err).splitlines()[0] if str(err) else ""
    if "weights_only" in first or "weights only" in first.lower():
        first = "not a weights-only file"
    return f"{type(err).__name__}: {first}"


def load_checkpoint(folder: Path, accept: Callable[[Any, Path], Any] | None = None) -> tuple[Any, Path] | None:
    """The newest usable checkpoint in ``folder`` and its path; ``None`` if there is none at all.

    ``accept(payload, path)`` checks a loaded payload against the run (and may restore it),
    returning what this function then returns in place of the payload. If it raises a
    :class:`RunnerError` (the user's mistake, e.g. another config) that is raised as is; any
    other exception (wrong keys, shapes, types) counts as a damaged file and the previous
    checkpoint is tried.

    Raises:
        DataError: checkpoint files exist but none of them is usable.
    """
    for stale in folder.glob(f"{_TMP_PREFIX}*"):
        stale.unlink()  # a write that was killed half-way; last/prev are intact
    found = [p for p in (folder / LAST, folder / PREV) if p.exists()]
    problems = []
    for path in found:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, corrupt, or not weights-only: never executed
            problems.append(f"{path.name}: {_describe(err)}")
        else:
            try:
                return (accept(payload, path) if accept else payload), path
            except RunnerError:
                raise
            except Exception as err:  # loads, but is not a checkpoint of this run
                problems.append(f"{path.name}: does not fit this run ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        log.warning("Checkpoint %s cannot be loaded (%s); trying the previous one.", path, problems[-1])
    if found:
        raise DataError(
            folder,
            "no checkpoint here can be loaded (" + "; ".join(problems) + "): they are damaged or not checkpoints this runner wrote. "
            "Start over with resume=never in a new output directory",
        )
    return None


def rng_state(order_generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from, in types that ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "order": order_generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], order_generator: torch.Generator) -> None:
    """Put every random state back as :func:`rng_state` recorded it."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    order_generator.set_state(state["order"])
