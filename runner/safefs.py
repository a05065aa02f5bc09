"""Files inside a run or sweep directory: never a link followed out of it.

A run directory is copied with ``cp -a``/``tar``, which keep symbolic links; a link planted
at ``.lock``, ``summary.json`` or a log would make the runner write into whatever it points
at. Two guards, used by every writer of the project:

* :func:`check_no_links` walks a directory before anything is written into it (the CLI's
  Hydra callback calls it before Hydra writes ``.hydra/`` and the log, the report before it
  writes ``report.md``) and refuses the first entry that is a link, naming it.
* :func:`open_inside` opens a file for writing with ``O_NOFOLLOW`` after checking that no
  directory between the root and the file is a link: a link planted while the run goes on
  is refused too, never followed.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import IO, Any

from runner.errors import DataError

_FLAGS = {
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "r+": os.O_RDWR,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}


class LinkRefused(DataError):
    """An entry of a run directory is a symbolic link: the runner writes no file through it."""

    def __init__(self, path: Path, why: str = ""):
        target = os.readlink(path) if os.path.islink(path) else None
        points = f" (to {target})" if target is not None else ""
        super().__init__(
            path,
            f"is a symbolic link{points}{why}; the runner never writes through a link in a run directory. "
            "Replace it with a copy of the file (cp -L) or remove it, then rerun",
        )


def check_no_links(root: Path) -> None:
    """Refuse the first entry under ``root`` (not ``root`` itself) that is a symbolic link.

    ``root`` itself may be reached through a link (the user chose that path); nothing below
    it may be one. A missing ``root`` has nothing to check.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        # os.walk lists a link to a directory among ``dirs`` without descending into it.
        for name in sorted(dirs) + sorted(files):
            path = Path(folder) / name
            if path.is_symlink():
                raise LinkRefused(path)


def _relative_parts(root: Path, path: Path) -> tuple[str, ...]:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise DataError(path, f"is outside the directory {root} it is written into") from None
    if not parts or ".." in parts:
        raise DataError(path, f"is not a file inside {root}")
    return parts


def _full(root: Path | str, path: Path | str) -> Path:
    """``path`` as given when it already starts with ``root``, else taken relative to ``root``."""
    root, path = Path(root), Path(path)
    return path if path == root or root in path.parents else root / path


def check_inside(root: Path, path: Path) -> None:
    """``path`` (absolute, or relative to ``root``) names an entry inside ``root`` reached
    without any link: no directory between them is a link, nor the entry itself."""
    root, path = Path(root), _full(root, path)
    parts = _relative_parts(root, path)
    current = root
    for part in parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return  # created by the caller, with O_NOFOLLOW
        if stat.S_ISLNK(mode):
            raise LinkRefused(current)
    if not os.path.realpath(path).startswith(os.path.realpath(root) + os.sep):
        raise DataError(path, f"resolves outside the directory {root} it is written into")


def open_inside(root: Path, path: Path | str, mode: str = "w") -> IO[Any]:
    """Open ``path`` (inside ``root``) for writing like :func:`open`, refusing any link on
    the way: ``mode`` is one of w, a, x, r+, a+ with an optional ``b``."""
    root, path = Path(root), _full(root, path)
    check_inside(root, path)
    base = mode.replace("b", "")
    try:
        fd = os.open(path, _FLAGS[base] | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if os.path.islink(path):  # ELOOP: planted after check_inside looked
            raise LinkRefused(path) from None
        raise err
    return os.fdopen(fd, mode)


def write_bytes_inside(root: Path, path: Path | str, data: bytes) -> None:
    with open_inside(root, path, "wb") as handle:
        handle.write(data)


def copy_inside(root: Path, source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (both inside ``root``) with its times, following no link."""
    check_inside(root, source)
    if os.path.islink(source):
        raise LinkRefused(source)
    with open(source, "rb") as src, open_inside(root, target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copystat(source, target, follow_symlinks=False)


def save_figure(fig: Any, root: Path, path: Path, **kwargs: Any) -> None:
    """``fig.savefig`` into ``path`` inside ``root`` (matplotlib itself would follow a link)."""
    with open_inside(root, path, "wb") as handle:
        fig.savefig(handle, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
