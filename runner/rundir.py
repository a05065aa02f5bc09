"""The run directory: self-contained, one writer at a time, checked before anything is written.

* **Self-contained.** Nothing stored in the directory names a path: a checkpoint records
  the event file by its *name*, found again inside ``<run>/``, so a copied or moved
  run resumes in its new place and never writes into the original.
* **One writer.** A process holds an exclusive ``fcntl.flock`` on ``<run>/.lock`` (which also
  holds its pid, for the message) while it uses the directory; a second process is refused
  at once. The kernel drops the lock when its process dies, so a lock "left behind" by a
  killed run is simply taken.
* **The record matches the results.** Hydra rewrites ``.hydra/`` before any of our code
  runs; the record of the run the directory holds is kept in ``.hydra/accepted/`` and put
  back whenever a rerun is refused or finds nothing to do.
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runner.errors import DataError, RunnerError, print_error
from runner.safefs import check_no_links, copy_inside, open_inside

LOCK_FILE = ".lock"
EVENT_PREFIX = "events.out.tfevents."
HYDRA_RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")
ACCEPTED = "accepted"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEW_DIRECTORY = "start over with resume=never and a new output directory (hydra.run.dir=...)"


class RunDirRefused(DataError):
    """The run directory cannot be used by this run; it is left exactly as it was.

    A sweep must not record a failure over it either: the directory holds someone's results.
    """


class DiskFull(RunnerError):
    """No space left where the run writes. The last checkpoint is intact: free space and
    rerun the same command to resume."""

    def __init__(self, out: Path):
        super().__init__(f"{out}: the disk is full (no space left on device); free some space and rerun the same command to resume")


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


# ------------------------------------------------------------------ the directory itself
def check_usable(out: Path) -> None:
    """``out`` is (or can become) a directory: not an existing file, not below one, and
    nothing in it is a link (:func:`runner.safefs.check_no_links`)."""
    check_no_links(out)
    for path in (out, *out.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                what = "the output directory" if path == out else f"a parent of the output directory ({out})"
                raise RunDirRefused(path, f"is an existing file, not a directory; it is {what}. Choose another hydra.run.dir")
            return


# ------------------------------------------------------------------ one writer
_held: dict[Path, list[Any]] = {}  # resolved run dir -> [open lock file, nesting depth]


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the duration; re-entrant within a process (the CLI's callback
    takes it before Hydra writes, :func:`runner.train.train` takes it again)."""
    key = out.resolve()
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(out), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            _held.pop(key)[0].close()  # closing the file releases the lock


def _acquire(out: Path) -> Any:
    out.mkdir(parents=True, exist_ok=True)
    # "a+" creates the file without truncating it: the pid in it is the holder's until we hold the lock.
    handle = open_inside(out, LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirRefused(out, f"another process (pid {holder}) is writing this run directory; wait for it to end, or choose another hydra.run.dir") from None
    except BaseException:
        handle.close()
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


# ------------------------------------------------------------------ files named inside the run
def event_file(out: Path, stored: Any) -> Path:
    """The event file a checkpoint continues, from the name it stored.

    The name must be a plain event-file name that resolves to a regular file inside the
    run's own event directory: a checkpoint is input, and the writer truncates this file.
    (Checkpoints of format 1 stored a path; only its last component is used.)
    """
    folder = out  # the run directory is TensorBoard's run: the event file lives in it
    name = stored if isinstance(stored, str) else None
    plain = name is not None and name == Path(name).name and "\\" not in name and "\0" not in name and name.startswith(EVENT_PREFIX)
    path = folder / name if plain else None
    if path is None or path.is_symlink() or path.resolve().parent != folder.resolve():
        raise RunDirRefused(out, f"the checkpoint names the event file {stored!r}, which is not a file of this run; it is not a checkpoint this runner wrote: {NEW_DIRECTORY}")
    if not path.is_file():
        raise RunDirRefused(path, f"the event file this run's checkpoint continues is missing; restore it, or {NEW_DIRECTORY}")
    return path


# ------------------------------------------------------------------ Hydra's record of the run
def hydra_job_of(out: Path) -> Any:
    """Hydra's config of the job writing into ``out``, or ``None`` when no Hydra job does: outside
    Hydra, after a plain ``compose`` (no run directory), or when the last job Hydra ran in this
    process was another run (its choices and record are not this one's)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    job_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None)
    if job_dir is None or Path(job_dir).resolve() != out.resolve():
        return None
    return hydra_cfg


def hydra_record_dir(out: Path) -> Path | None:
    """Where Hydra wrote this job's ``config.yaml`` etc. (``None`` outside a Hydra job)."""
    hydra_cfg = hydra_job_of(out)
    if hydra_cfg is None or hydra_cfg.output_subdir is None:
        return None
    return out / hydra_cfg.output_subdir


def keep_record(out: Path) -> None:
    """The run was accepted: its ``.hydra`` files are the record of what this directory holds."""
    folder = hydra_record_dir(out)
    if folder is None:
        return
    kept = folder / ACCEPTED
    kept.mkdir(exist_ok=True)
    for name in HYDRA_RECORD:
        if (folder / name).is_file():
            copy_inside(out, folder / name, kept / name)


def restore_record(out: Path) -> None:
    """Undo Hydra's rewrite of ``.hydra/`` for a run that was refused or had nothing to do."""
    folder = hydra_record_dir(out)
    if folder is None or not (folder / ACCEPTED).is_dir():
        return
    for name in HYDRA_RECORD:
        if (folder / ACCEPTED / name).is_file():
            copy_inside(out, folder / ACCEPTED / name, folder / name)


# ------------------------------------------------------------------ before Hydra writes anything
class RunDirCallback(Callback):
    """Checks the run directory before Hydra creates it (a file there would be a traceback
    from Hydra's ``mkdir``), and holds its lock from before Hydra writes until the run ends."""

    def __init__(self) -> None:
        self._lock: Any = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        out = Path(str(config.hydra.run.dir)).absolute()
        try:
            check_usable(out)
            if (out / LOCK_FILE).exists():  # a directory some run has used; a new one is train()'s to lock
                self._lock = exclusive(out)
                self._lock.__enter__()
        except RunnerError as err:
            # Hydra turns a callback's exception into a warning and carries on.
            print_error(str(err))
            raise SystemExit(2) from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_usable(Path(str(config.hydra.sweep.dir)).absolute())
        except RunnerError as err:
            print_error(str(err))
            raise SystemExit(2) from None
