"""What every reader shares: a path as typed (``~`` expanded), a regular file before it is opened, a
split's name, and the numeric checks an array of samples goes through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from runner.errors import DataError
from runner.text import plural


_SPLITS = ("train", "test")


def as_path(path: str | Path) -> Path:
    # "~/data" is a natural thing to type in a config and Hydra does not expand it.
    return Path(path).expanduser()


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def regular_file(path: Path, expected: str) -> None:
    """Refuse anything but a regular file (after following links) before it is opened:
    reading a FIFO blocks forever and a device such as /dev/zero never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise DataError(path, f"is {kind}; expected {expected} (a regular file)")


def check_split(split: str) -> None:
    # A split is chosen by the code, not the user, so a bad one is a bug: ValueError.
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def first_bad_index(mask: np.ndarray) -> tuple[int, ...] | int:
    """Index of the first True in ``mask``: an int for 1-D arrays, a tuple otherwise."""
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(mask.ravel())), mask.shape))
    return idx[0] if len(idx) == 1 else idx


def check_numeric(path: Path, name: str, arr: np.ndarray) -> None:
    """Reject arrays that cannot be turned into numbers for training."""
    kind = arr.dtype.kind
    if kind in "biuf":
        return
    what = {
        "O": "object (arbitrary Python objects)",
        "U": "string",
        "S": "bytes",
        "c": "complex",
        "M": "datetime",
        "m": "timedelta",
        "V": "structured/void",
    }.get(kind, "non-numeric")
    raise DataError(
        path, f"array {name!r} has {what} dtype {arr.dtype}; expected integers, floats or bools"
    )


def check_finite(path: Path, name: str, arr: np.ndarray, note: str = "") -> None:
    """Raise if ``arr`` holds NaN or inf, saying how many and where the first one is."""
    if arr.dtype.kind != "f":
        return
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count:
        raise DataError(
            path,
            f"array {name!r} has {plural(count, 'non-finite value')} (NaN or inf){note}; "
            f"the first is at index {first_bad_index(bad)}",
        )
