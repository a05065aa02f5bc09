"""CIFAR-10's Python pickles, read by an unpickler that resolves only the numpy names a plain array
needs: a user's file never runs code."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from runner.data.files.checks import as_path, check_split
from runner.errors import DataError
from runner.text import plural


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_CLASSES = 10
_CIFAR_ROW = 3 * 32 * 32


# What a pickled numpy array refers to, and nothing else. _reconstruct (protocols 0-4)
# and _frombuffer (protocol 5) are taken from numpy's own reduce output so the right
# objects are used whatever numpy version wrote or reads the file; both module names are
# accepted because files written by numpy 1.x say numpy.core and 2.x say numpy._core.
_RECONSTRUCT = np.empty(1).__reduce__()[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, bytes and numpy arrays; refuses any other global.

    A plain ``pickle.load`` runs whatever callable the file names (``os.system``...), so
    every global is checked against a fixed list before it is resolved.
    """

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` only if it is on the allow-list; raise DataError otherwise."""
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                self._path,
                f"refused to unpickle {module}.{name}: only numpy arrays are allowed in a "
                "CIFAR-10 batch file (this file is not a genuine CIFAR-10 batch and may be unsafe)",
            ) from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file as ``(data uint8 (n, 3072), labels int64 (n,))``."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed pickles raise nearly any exception type
        raise DataError(path, f"not a valid CIFAR-10 pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a pickled dict, found {type(obj).__name__}")

    def get(key: str) -> Any:
        # The official files (Python 2 pickles) have bytes keys; accept str keys too so a
        # batch re-saved from Python 3 still loads.
        for k in (key.encode(), key):
            if k in obj:
                return obj[k]
        present = ", ".join(repr(k) for k in obj) or "none"
        raise DataError(path, f"missing key b{key!r}; keys present: {present}")

    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != _CIFAR_ROW
    ):
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(path, f"b'data' should be a uint8 array of shape (n, {_CIFAR_ROW}), found {desc}")
    try:
        y = np.asarray(labels)
    except Exception as e:  # noqa: BLE001 - arbitrary pickled content
        raise DataError(path, f"b'labels' is not a list of integers ({e})") from e
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(
            path, f"b'labels' should be a list of integers, found {y.dtype} of shape {y.shape}"
        )
    if len(y) != len(data):
        raise DataError(path, f"b'data' has {plural(len(data), 'row')} but b'labels' has {plural(len(y), 'entry', 'entries')}")
    out_of_range = (y < 0) | (y >= _CIFAR_CLASSES)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise DataError(path, f"label {int(y[i])} at index {i} is outside 0..{_CIFAR_CLASSES - 1}")
    return data, y.astype(np.int64)


def load_cifar10(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from the extracted "python version" batch files.

    Looks for ``data_batch_1`` .. ``data_batch_5`` (train) or ``test_batch`` (test) in
    ``root/cifar-10-batches-py``, then in ``root`` itself. The pickles are read with an
    unpickler that only accepts numpy arrays, so a tampered file cannot run code.

    Args:
        root: the data directory (``dataset.root``).
        split: ``train`` or ``test``.

    Returns:
        ``(X, y)``: ``X`` float32 of shape ``(N, 3, 32, 32)`` in [0, 1], ``y`` int64 ``(N,)``.

    Raises:
        ValueError: ``split`` is neither ``train`` nor ``test``.
        DataError: the batch files are not found (every path tried is listed), or a file
            is not a well-formed CIFAR-10 batch (missing keys, wrong shapes or dtypes,
            labels outside 0..9, or a pickle naming anything but numpy arrays).
    """
    check_split(split)
    base = as_path(root)
    names = _CIFAR_FILES[split]
    tried: list[Path] = []
    chosen: list[Path] | None = None
    for d in (base / _CIFAR_DIR, base):
        files = [d / n for n in names]
        tried.extend(files)
        if all(f.is_file() for f in files):
            chosen = files
            break
    if chosen is None:
        listing = "\n  ".join(f"{t} ({'found' if t.is_file() else 'missing'})" for t in tried)
        hint = ""
        archives = [d / "cifar-10-python.tar.gz" for d in (base, base / _CIFAR_DIR)]
        for a in archives:
            if a.is_file():
                hint = f"\n{a} exists: extract it (tar xzf) to get {_CIFAR_DIR}/."
                break
        raise DataError(
            base,
            f"CIFAR-10 {split} batches not found. Nothing is downloaded: extract the "
            f"CIFAR-10 python version (cifar-10-python.tar.gz) so that "
            f"{base / _CIFAR_DIR / names[0]} exists. Paths tried:\n  {listing}{hint}",
        )

    parts = [_read_cifar_batch(f) for f in chosen]
    data = np.concatenate([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([lab for _, lab in parts]) if len(parts) > 1 else parts[0][1]
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    X = data.reshape(-1, 3, 32, 32).astype(np.float32)
    X /= 255.0
    return X, y
