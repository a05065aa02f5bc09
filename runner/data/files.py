"""Readers for data files the user brings: ``.npz``, ``.csv``, MNIST-style IDX and CIFAR-10.

Every reader checks what it reads and raises :class:`~runner.errors.DataError` (naming the
file and the exact problem) rather than letting a malformed file surface later as a shape
mismatch or a NaN loss. Nothing here ever downloads anything: when files are missing, the
error says where they were looked for so the user can put them there.

Security: user files are never unpickled freely. ``.npz`` files are read with
``allow_pickle=False`` and the CIFAR-10 pickles go through an unpickler that only resolves
the few numpy names that a plain array needs.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import math
import os
import pickle
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from runner.errors import ConfigError, DataError
from runner.text import plural

__all__ = [
    "IDX_NAMES",
    "find_idx_files",
    "load_cifar10",
    "load_csv",
    "load_idx",
    "load_idx_dataset",
    "load_npz",
]

# Config name -> the directory name torchvision uses (``<root>/<Name>/raw/``).
IDX_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}

_SPLITS = ("train", "test")
# The standard IDX file stems per split; the labels file is idx1, the images file idx3.
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type code -> big-endian numpy dtype, as in the format's specification.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_CLASSES = 10
_CIFAR_ROW = 3 * 32 * 32


def _as_path(path: str | Path) -> Path:
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


def _check_split(split: str) -> None:
    # A split is chosen by the code, not the user, so a bad one is a bug: ValueError.
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _first_bad_index(mask: np.ndarray) -> tuple[int, ...] | int:
    """Index of the first True in ``mask``: an int for 1-D arrays, a tuple otherwise."""
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(mask.ravel())), mask.shape))
    return idx[0] if len(idx) == 1 else idx


# ------------------------------------------------------------------------------- npz
def _check_numeric(path: Path, name: str, arr: np.ndarray) -> None:
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


def _check_finite(path: Path, name: str, arr: np.ndarray, note: str = "") -> None:
    """Raise if ``arr`` holds NaN or inf, saying how many and where the first one is."""
    if arr.dtype.kind != "f":
        return
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count:
        raise DataError(
            path,
            f"array {name!r} has {plural(count, 'non-finite value')} (NaN or inf){note}; "
            f"the first is at index {_first_bad_index(bad)}",
        )


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
    p = _as_path(path)
    regular_file(p, "an .npz file with arrays X and y")
    # The file is opened here, not by np.load, which leaks its handle when the zip is corrupt.
    with open(p, "rb") as f:
        arrays = _read_npz_arrays(p, f)
    return check_arrays(p, arrays["X"], arrays["y"])


def check_arrays(p: Any, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A file's (or a function's, :mod:`runner.data.python`) ``X`` and ``y``, checked as ``load_npz`` describes;
    ``p`` names where they came from in the messages."""
    for key, arr in (("X", X), ("y", y)):
        _check_numeric(p, key, arr)
    if X.ndim < 2:
        what = "is a scalar" if X.ndim == 0 else f"has shape {X.shape}"
        raise DataError(p, f"array 'X' {what}; expected (N, features...) with one row per sample (a single feature is X.reshape(-1, 1))")
    if y.ndim not in (1, 2):
        raise DataError(p, f"array 'y' has shape {y.shape}; expected (N,) or (N, k)")
    for key, arr in (("X", X), ("y", y)):
        _check_finite(p, key, arr)
    if len(X) != len(y):
        raise DataError(p, f"X has {plural(len(X), 'sample')} but y has {len(y)}; they must match")
    if len(X) == 0:
        raise DataError(p, "X and y are empty (0 samples)")

    with np.errstate(over="ignore"):  # overflow is reported just below, as a DataError
        X32 = X.astype(np.float32)
    # float64 values beyond ~3.4e38 become inf in float32; catch that here, not as a NaN loss.
    _check_finite(p, "X", X32, note=" after conversion to float32 (values too large)")
    return X32, y


# ------------------------------------------------------------------------------- csv
def _parse_cell(path: Path, line: int, column: str, cell: str) -> float:
    """One CSV cell as a finite float, or a DataError pointing at it."""
    if not cell.strip():
        raise DataError(path, f"line {line}, column {column!r}: empty cell; every cell must be a number")
    try:
        value = float(cell)
    except ValueError:
        raise DataError(path, f"line {line}, column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(
            path, f"line {line}, column {column!r}: {cell.strip()!r} is not a finite number"
        )
    return value


# Parsed cells are Python floats in lists (pointer + object) until the whole file is read,
# then one float64 table and a float32 copy of the features.
_CSV_BYTES_PER_CELL = 8 + 24 + 8 + 4
_CSV_BYTES_PER_ROW = 56 + 8


def _csv_memory_budget() -> float:
    from runner.memory import host_bytes_available

    free = host_bytes_available()
    return math.inf if free is None else free


def _csv_too_big(p: Path, rows_so_far: int, row_bytes: int, budget: float) -> str:
    """Parsing stops before memory runs out; the estimate is for the whole file."""
    from runner.memory import format_size

    read = max(rows_so_far, 1)
    estimate = row_bytes * read * max(1.0, os.stat(p).st_size / max(1, _bytes_of_rows(p, read)))
    return f"parsing it needs about {format_size(estimate)} in memory, and {format_size(budget)} are available; use dataset=memmap for data bigger than memory"


def _bytes_of_rows(p: Path, rows: int) -> int:
    with open(p, "rb") as f:
        return sum(len(f.readline()) for _ in range(rows + 1))


def load_csv(path: str | Path, target: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a numeric CSV file with a header row; one named column is the target.

    Args:
        path: the ``.csv`` file (comma-separated, UTF-8, first row names the columns).
        target: the name of the target column (``dataset.target``).

    Returns:
        ``(X, y, feature_names)``: ``X`` float32 of shape ``(N, F)`` from every other
        column in file order, ``y`` float64 of shape ``(N,)`` and the ``F`` column names.

    Raises:
        ConfigError: ``target`` is None or not one of the columns (the columns are listed).
        DataError: the file is missing, unreadable or has no header; a row has the wrong
            number of fields; a cell is empty, NaN/inf or not a number (the message gives
            the line as a text editor numbers it, header = line 1, the column and the
            value); there are no data rows or no feature columns.
    """
    p = _as_path(path)
    regular_file(p, "a .csv file")

    try:
        # utf-8-sig: spreadsheet programs often write a BOM that would otherwise stick to
        # the first column name.
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(p, "file is empty; expected a header row naming the columns")
            names = [h.strip() for h in header]
            _check_header(p, names)
            if target is None:
                raise ConfigError(
                    "dataset.target",
                    None,
                    f"the name of the target column; columns in {p} are: {', '.join(names)}",
                )
            if target not in names:
                raise ConfigError(
                    "dataset.target", target, f"one of the columns in {p}: {', '.join(names)}"
                )
            if len(names) == 1:
                hint = ""
                if any(sep in header[0] for sep in ";\t"):
                    hint = " (only commas separate columns; is this file separated by ';' or tabs?)"
                raise DataError(p, f"has only the target column {target!r}, no feature columns{hint}")

            rows: list[list[float]] = []
            lines: list[int] = []
            width = len(names)
            row_bytes = width * _CSV_BYTES_PER_CELL + _CSV_BYTES_PER_ROW
            budget = _csv_memory_budget()
            for row in reader:
                if not row:
                    # A blank line (typically a trailing newline) carries no sample.
                    continue
                line = reader.line_num
                if len(rows) % 4096 == 0 and (len(rows) + 4096) * row_bytes > budget:
                    raise DataError(p, _csv_too_big(p, len(rows), row_bytes, budget))
                if len(row) != width:
                    raise DataError(
                        p, f"line {line} has {plural(len(row), 'field')} but the header has {width}"
                    )
                try:
                    rows.append([float(c) for c in row])
                except ValueError:
                    # Slow path only on failure, to name the exact cell.
                    rows.append([_parse_cell(p, line, n, c) for n, c in zip(names, row)])
                lines.append(line)
    except UnicodeDecodeError as e:
        raise DataError(p, f"is not UTF-8 text ({e})") from e
    except csv.Error as e:
        raise DataError(p, f"is not a readable CSV file ({e})") from e

    if not rows:
        raise DataError(p, "has a header but no data rows")
    table = np.asarray(rows, dtype=np.float64)
    bad = ~np.isfinite(table)
    if bad.any():
        # float() accepts "nan"/"inf"; report them like any other bad cell.
        i, j = (int(v) for v in np.argwhere(bad)[0])
        _parse_cell(p, lines[i], names[j], str(table[i, j]))

    t = names.index(target)
    features = [n for k, n in enumerate(names) if k != t]
    X64 = np.delete(table, t, axis=1)
    with np.errstate(over="ignore"):  # overflow is reported just below, as a DataError
        X = X64.astype(np.float32)
    too_big = ~np.isfinite(X)
    if too_big.any():
        i, j = (int(v) for v in np.argwhere(too_big)[0])
        raise DataError(
            p, f"line {lines[i]}, column {features[j]!r}: {X64[i, j]!r} is too large for float32"
        )
    y = table[:, t].copy()
    return X, y, features


def _check_header(path: Path, names: Sequence[str]) -> None:
    """A header must name every column once, and must not look like a data row."""
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise DataError(path, f"line 1 (header): column(s) {empty} have no name")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(path, f"line 1 (header): column name {n!r} appears more than once")
        seen.add(n)

    def is_number(s: str) -> bool:
        try:
            float(s)
        except ValueError:
            return False
        return True

    if all(is_number(n) for n in names):
        raise DataError(
            path,
            f"line 1 looks like data ({', '.join(names)}), not a header; "
            "the first row must name the columns",
        )


# ------------------------------------------------------------------------------- idx
def _candidate_dirs(root: Path, name: str) -> list[Path]:
    return [root, root / IDX_NAMES[name] / "raw", root / name]


def _spellings(stem: str) -> list[str]:
    # "train-images-idx3-ubyte" is also commonly distributed as "train-images.idx3-ubyte".
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def find_idx_files(root: str | Path, name: str, split: str) -> tuple[Path, Path]:
    """Locate the images and labels IDX files of an MNIST-format data set.

    Looks in ``root``, then ``root/<Name>/raw`` (torchvision's layout, e.g.
    ``data/MNIST/raw``), then ``root/<name>``, for the standard file names, each plain or
    ``.gz``, and also with ``.idx3-ubyte``/``.idx1-ubyte`` instead of ``-idx3-ubyte``.
    The first directory holding both files wins.

    Args:
        root: the data directory (``dataset.root``).
        name: ``mnist``, ``fashion_mnist`` or ``kmnist``.
        split: ``train`` or ``test`` (``t10k-*`` files).

    Returns:
        ``(images_path, labels_path)``.

    Raises:
        ConfigError: ``name`` is not an IDX data set.
        ValueError: ``split`` is neither ``train`` nor ``test``.
        DataError: no directory holds both files; the message lists every path tried.
    """
    if name not in IDX_NAMES:
        raise ConfigError("dataset.name", name, f"one of {', '.join(IDX_NAMES)}")
    _check_split(split)
    base = _as_path(root)
    image_stem, label_stem = _IDX_STEMS[split]
    tried: list[Path] = []
    partial: list[Path] = []
    for d in _candidate_dirs(base, name):
        found: list[Path | None] = []
        for stem in (image_stem, label_stem):
            hit = None
            for fname in _spellings(stem):
                candidate = d / fname
                tried.append(candidate)
                if hit is None and candidate.is_file():
                    hit = candidate
            found.append(hit)
        images, labels = found
        if images is not None and labels is not None:
            return images, labels
        partial.extend(f for f in found if f is not None)

    listing = "\n  ".join(str(t) for t in tried)
    note = ""
    if partial:
        note = (
            f"\nFound only {', '.join(str(f) for f in partial)}; "
            "the images and labels files must be in the same directory."
        )
    raise DataError(
        base,
        f"{IDX_NAMES[name]} {split} files not found. Nothing is downloaded: put "
        f"{image_stem} and {label_stem} (plain or .gz) in one of these places. "
        f"Paths tried:\n  {listing}{note}",
    )


def load_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (plain or gzip-compressed) into a native-endian array.

    The format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, one big-endian
    uint32 per dimension, then the data in big-endian order.

    Args:
        path: the IDX file; gzip compression is detected from its content.

    Returns:
        The array, with the dtype and shape the header declares.

    Raises:
        DataError: the file is missing, a corrupt gzip, has a bad magic number (the bytes
            found are shown), an unknown type code, a truncated header or data (expected vs
            found byte counts), or bytes after the data.
    """
    p = _as_path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    raw = p.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        # Detected from content, not the name, so a mis-named file still loads.
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(p, f"corrupt gzip data ({e})") from e

    if len(raw) < 4:
        raise DataError(p, f"truncated header: expected at least 4 bytes, found {len(raw)}")
    magic = raw[:4]
    if magic[:2] != b"\x00\x00":
        hint = " (this looks like an HTML page, not data)" if raw.lstrip()[:1] == b"<" else ""
        raise DataError(
            p,
            f"bad magic number: expected 00 00 <type> <ndim>, found {magic.hex(' ')}{hint}; "
            "this is not an IDX file",
        )
    code, ndim = magic[2], magic[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(p, f"unknown IDX type code 0x{code:02X} (known: {known})")
    dtype = _IDX_DTYPES[code]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            p,
            f"truncated header: {plural(ndim, 'dimension')} need {header_len} bytes, found {len(raw)}",
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    # Python ints: a corrupt header can declare sizes that overflow a fixed-width product.
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header_len
    shape_txt = "x".join(str(d) for d in dims) or "scalar"
    if found < expected:
        raise DataError(
            p,
            f"truncated data: header declares {shape_txt} of {dtype.newbyteorder('=')} "
            f"= {expected} bytes, found {found}",
        )
    if found > expected:
        raise DataError(
            p,
            f"{plural(found - expected, 'trailing byte')} after the data: header declares {shape_txt} of "
            f"{dtype.newbyteorder('=')} = {expected} bytes, found {found}",
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header_len)
    # astype copies into native byte order, giving a writable array independent of `raw`.
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def load_idx_dataset(
    root: str | Path, name: str, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST, Fashion-MNIST or KMNIST from local IDX files.

    Args:
        root: the data directory (see :func:`find_idx_files` for where files are looked for).
        name: ``mnist``, ``fashion_mnist`` or ``kmnist``.
        split: ``train`` or ``test``.

    Returns:
        ``(X, y)``: ``X`` float32 of shape ``(N, 1, H, W)`` with pixels scaled to [0, 1],
        ``y`` int64 of shape ``(N,)``.

    Raises:
        ConfigError: ``name`` is not an IDX data set.
        DataError: files missing (every path tried is listed) or malformed; images not
            uint8 ``(N, H, W)`` or labels not integer ``(N,)``; image and label counts differ
            (both files are named).
    """
    images_path, labels_path = find_idx_files(root, name, split)
    images = load_idx(images_path)
    labels = load_idx(labels_path)
    if images.ndim != 3:
        raise DataError(
            images_path, f"expected images of shape (N, rows, cols), found shape {images.shape}"
        )
    if images.dtype != np.uint8:
        # Scaling by 255 is only right for 8-bit pixels.
        raise DataError(images_path, f"expected uint8 pixels, found {images.dtype}")
    if labels.ndim != 1:
        raise DataError(labels_path, f"expected labels of shape (N,), found shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(labels_path, f"expected integer labels, found {labels.dtype}")
    if len(images) != len(labels):
        raise DataError(
            images_path,
            f"has {plural(len(images), 'image')} but {labels_path} has {plural(len(labels), 'label')}; "
            "the two files must come from the same split",
        )
    if len(images) == 0:
        raise DataError(images_path, "holds 0 images")
    X = images[:, None, :, :].astype(np.float32)
    X /= 255.0  # in place: avoids a float64 temporary the size of the data set
    return X, labels.astype(np.int64)


# ----------------------------------------------------------------------------- cifar
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
    _check_split(split)
    base = _as_path(root)
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
