"""``.npz`` files: ``X`` and ``y`` arrays, read with ``allow_pickle=False``, their sizes checked against
memory before they are loaded."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from runner.data.files.checks import as_path, check_finite, check_numeric, regular_file
from runner.errors import DataError
from runner.text import plural


_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"


def _read_npz_arrays(p: Path, f: BinaryIO) -> dict[str, np.ndarray]:
    """Arrays ``X`` and ``y`` from the open npz file ``f``, or a DataError saying why not."""
    head = f.read(6)
    f.seek(0)
    # Checked before np.load, whose own message for a non-npz file blames pickling.
    if head[:2] != _ZIP_MAGIC:
        if head == _NPY_MAGIC:
            problem = "holds a single .npy array, not an .npz archive"
        elif head[:1] == b"\x80":
            problem = "is a pickle, not an .npz archive (pickles are never loaded, for security)"
        else:
            problem = "is not an .npz archive (an npz file is a zip of .npy arrays)"
        raise DataError(p, f"{problem}; save both arrays with np.savez(path, X=X, y=y)")
    try:
        # allow_pickle=False: an npz may embed pickled objects, which could run code.
        loaded = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(p, f"not a valid .npz file ({e})") from e
    with loaded:
        keys = list(loaded.files)
        missing = [k for k in ("X", "y") if k not in keys]
        if missing:
            present = ", ".join(keys) if keys else "none"
            raise DataError(
                p,
                f"missing array(s) {', '.join(missing)}; arrays present: {present} "
                "(save with np.savez(path, X=X, y=y))",
            )
        _check_npz_fits(p, loaded)
        arrays = {}
        for key in ("X", "y"):
            try:
                arrays[key] = loaded[key]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise DataError(
                        p,
                        f"array {key!r} has object dtype (pickled Python objects), which is "
                        "not loaded for security; store numeric arrays",
                    ) from e
                raise DataError(p, f"array {key!r} is unreadable ({e})") from e
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
                # A damaged member only shows up when it is decompressed.
                raise DataError(p, f"array {key!r} is unreadable ({e})") from e
    return arrays


# Beyond the arrays as stored: X as float32, then split and standardised copies of it.
_NPZ_X_COPIES_FLOAT32 = 3


def _npz_member_header(loaded: Any, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype an npz member's .npy header declares, read without decompressing the data."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with loaded.zip.open(f"{key}.npy") as member:
            reader = readers.get(np.lib.format.read_magic(member))
            if reader is None:
                return None
            shape, _fortran, dtype = reader(member)
    except (ValueError, OSError, EOFError, KeyError, zlib.error, zipfile.BadZipFile):
        return None  # reported when the array itself is read
    return shape, dtype


def _check_npz_fits(p: Path, loaded: Any) -> None:
    """Refuse arrays that cannot fit in memory, from their headers, before reading them."""
    from runner.memory import format_size, host_bytes_available

    needed = 0
    for key in ("X", "y"):
        header = _npz_member_header(loaded, key)
        if header is None:
            continue
        shape, dtype = header
        count = math.prod(shape)
        needed += count * dtype.itemsize + (count * 4 * _NPZ_X_COPIES_FLOAT32 if key == "X" else 0)
    free = host_bytes_available()
    if free is not None and needed > free:
        raise DataError(p, f"the arrays need about {format_size(needed)} in memory (as float32, with the copies training makes), and {format_size(free)} are available")


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a user's ``.npz`` archive holding arrays ``X`` and ``y``.

    Args:
        path: the ``.npz`` file, e.g. written with ``np.savez(path, X=X, y=y)``.

    Returns:
        ``(X, y)``: ``X`` as float32 with its shape kept (``(N, ...)``, so images stay
        images), ``y`` exactly as stored (1-D labels/targets or 2-D targets).

    Raises:
        DataError: the file is missing or not an npz archive; ``X`` or ``y`` is absent
            (the keys present are listed); an array is not numeric (object arrays are
            refused, never unpickled); values are NaN/inf; ``X`` and ``y`` differ in
            length; or there are no samples.
    """
    p = as_path(path)
    regular_file(p, "an .npz file with arrays X and y")
    # The file is opened here, not by np.load, which leaks its handle when the zip is corrupt.
    with open(p, "rb") as f:
        arrays = _read_npz_arrays(p, f)
    return check_arrays(p, arrays["X"], arrays["y"])


def check_arrays(p: Any, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A file's (or a function's, :mod:`runner.data.python`) ``X`` and ``y``, checked as ``load_npz`` describes;
    ``p`` names where they came from in the messages."""
    for key, arr in (("X", X), ("y", y)):
        check_numeric(p, key, arr)
    if X.ndim < 2:
        what = "is a scalar" if X.ndim == 0 else f"has shape {X.shape}"
        raise DataError(p, f"array 'X' {what}; expected (N, features...) with one row per sample (a single feature is X.reshape(-1, 1))")
    if y.ndim not in (1, 2):
        raise DataError(p, f"array 'y' has shape {y.shape}; expected (N,) or (N, k)")
    for key, arr in (("X", X), ("y", y)):
        check_finite(p, key, arr)
    if len(X) != len(y):
        raise DataError(p, f"X has {plural(len(X), 'sample')} but y has {len(y)}; they must match")
    if len(X) == 0:
        raise DataError(p, "X and y are empty (0 samples)")

    with np.errstate(over="ignore"):  # overflow is reported just below, as a DataError
        X32 = X.astype(np.float32)
    # float64 values beyond ~3.4e38 become inf in float32; catch that here, not as a NaN loss.
    check_finite(p, "X", X32, note=" after conversion to float32 (values too large)")
    return X32, y
