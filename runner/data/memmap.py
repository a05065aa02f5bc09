"""Data bigger than memory: ``X.npy`` and ``y.npy`` memory-mapped, streamed one block at a time.

A :class:`MemmapDataset` holds two read-only memory maps and, for a split part, an array
of the file rows it owns, never the data. Everything the in-memory path does once over
whole arrays happens here in bounded pieces, with the *same* arithmetic, so that data
which would fit in memory gives the same result either way, bit for bit:

* :func:`open_memmap_dataset` checks the files in one blockwise pass (dtypes, lengths,
  NaN/inf, float32 overflow) and detects the task; class labels are remapped to
  ``0..C-1`` from a blockwise union of the distinct labels, as ``np.unique`` would.
* :func:`split_memmap` is :func:`runner.data.split` itself, acting on index arrays.
* :func:`standardize_memmap` computes the training part's mean and std in blockwise
  passes that add in the order NumPy's whole-array ``mean``/``std`` use (see
  :func:`_column_sum`), and stores them; they are applied as rows are read.
* :class:`MemmapSplit` serves training through a :class:`BlockStream`: the epoch's
  permutation is global, exactly as in memory, and the disk is read one block of that
  permutation at a time.

Memory: a read holds one block of rows (plus the batch being served), and the pages
of the files a read touches are handed back to the kernel after each piece (``madvise
(MADV_DONTNEED)``), so the mapped file does not pile up in the process's resident set
either; the kernel's page cache may keep the file, but as reclaimable cache. What does
grow with the data size is 8 bytes per sample: the split's index arrays and the
epoch's permutation, as in the in-memory path.
"""

from __future__ import annotations

import math
import mmap
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from runner import data as datasets
from runner.batches import EpochSource
from runner.data.files.checks import check_numeric, first_bad_index
from runner.errors import ConfigError, DataError
from runner.losses import Loss
from runner.text import plural

__all__ = [
    "FILES",
    "BlockStream",
    "MemmapDataset",
    "MemmapSplit",
    "Scaling",
    "load_memmap_parts",
    "load_memmap_splits",
    "open_memmap_dataset",
    "split_memmap",
    "standardize_memmap",
]

FILES = ("X.npy", "y.npy")
TASKS = ("auto", datasets.CLASSIFICATION, datasets.REGRESSION)

# One read from the maps copies at most about this many bytes, and maps at most about
# this many bytes of the file into the process before they are released.
_PIECE_BYTES = 8 << 20
# A page fault on a file mapping maps the neighbouring cached pages too, up to this much
# (Linux's default fault_around_bytes), so a scattered read maps that much per row.
_FAULT_AROUND_BYTES = 64 << 10
# Sequential scans (validation, statistics) read this much per step.
_SCAN_BYTES = 4 << 20
# numpy.add's pairwise summation works on blocks of this size (numpy's PW_BLOCKSIZE); a
# leaf of our own recursion must be at least this large for the tree to be numpy's.
_PAIRWISE_BLOCK = 128
_NPY_MAGIC = b"\x93NUMPY"


# ------------------------------------------------------------------------ reading the maps
def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` object behind a memory-mapped array or a view of one."""
    base: Any = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base


def _release(arr: np.ndarray) -> None:
    """Unmap from this process every page of ``arr``'s file that a read brought in.

    The pages stay in the kernel's page cache, so reading them again costs a minor
    fault, not a disk read; but they stop counting as this process's memory, which is
    what keeps a pass over a file larger than RAM from growing the resident set.
    """
    mapping = _mapping(arr)
    if mapping is not None and not mapping.closed and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _gather(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of ``arr[rows]`` for ascending ``rows``, leaving none of the file mapped."""
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1:
        # Consecutive rows: one slice is a plain memcpy, no index arithmetic.
        out = np.array(arr[int(rows[0]) : int(rows[-1]) + 1])
    else:
        out = np.asarray(arr[rows])
    _release(arr)
    return out


def _piece_rows(row_bytes: int, consecutive: bool) -> int:
    """Rows per read, so that the copy and the pages it maps stay near ``_PIECE_BYTES``.

    Consecutive rows map only their own pages; scattered rows may each map a whole
    fault-around window.
    """
    return max(1, _PIECE_BYTES // max(row_bytes, 1 if consecutive else _FAULT_AROUND_BYTES))


def _scan_rows(row_bytes: int, single_column: bool = False) -> int:
    """Rows per step of a sequential scan: about ``_SCAN_BYTES``.

    For single-column data a whole multiple of NumPy's buffer size, because NumPy sums
    such a column one buffer at a time (see :func:`_column_sum`).
    """
    rows = max(1, _SCAN_BYTES // max(row_bytes, 1))
    if single_column:
        buffer = np.getbufsize()
        rows = max(buffer, rows - rows % buffer)
    return rows


# --------------------------------------------------------------------------- the dataset
@dataclass(frozen=True, eq=False)
class Scaling:
    """``(value - mean) / std`` in float64, rounded to float32, as :func:`runner.data.standardize` does."""

    mean: np.ndarray
    std: np.ndarray

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True, eq=False)
class MemmapDataset:
    """One part of a memory-mapped data set: the maps, the rows it owns, how to read them.

    Reads the same values :class:`runner.data.Dataset` would hold: float32 features,
    int64 class indices or float32 ``(N, d)`` regression targets, standardised if asked.

    Attributes:
        x_map: read-only memory map of ``X.npy``, ``(N_file, *feature_shape)``, any numeric dtype.
        y_map: read-only memory map of ``y.npy``, ``(N_file,)`` or ``(N_file, d)``.
        task: ``"classification"`` or ``"regression"``.
        n_classes: number of classes (classification only).
        classes: the distinct labels in ascending order, as int64: label ``classes[i]``
            is class ``i`` (classification only).
        index: the file rows of this part, ascending (int64); ``None`` for every row.
        x_scaling: applied to features as they are read; ``None`` for raw values.
        y_scaling: applied to regression targets as they are read; ``None`` for raw values.
        info: facts worth recording with the run, as in :class:`runner.data.Dataset`.
    """

    x_map: np.ndarray
    y_map: np.ndarray
    task: str
    n_classes: int | None = None
    classes: np.ndarray | None = None
    index: np.ndarray | None = None
    x_scaling: Scaling | None = None
    y_scaling: Scaling | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.x_map)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x_map.shape[1:])

    @property
    def target_dim(self) -> int:
        if self.task == datasets.CLASSIFICATION or self.y_map.ndim == 1:
            return 1
        return int(self.y_map.shape[1])

    def subset(self, index: np.ndarray) -> MemmapDataset:
        """The samples at positions ``index`` of this part (what :func:`runner.data.split` calls)."""
        positions = np.asarray(index, dtype=np.int64)
        return replace(self, index=positions if self.index is None else self.index[positions])

    def file_rows(self, positions: np.ndarray) -> np.ndarray:
        """The rows of the files that hold the samples at ``positions`` of this part."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions if self.index is None else self.index[positions]

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Float32 features of ascending file ``rows``, standardised if this part is."""
        values = _gather(self.x_map, rows).astype(np.float32, copy=False)
        return self.x_scaling.apply(values) if self.x_scaling is not None else values

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """Targets of ascending file ``rows``: int64 class indices, or float32 ``(n, d)``."""
        raw = _gather(self.y_map, rows)
        if self.task == datasets.CLASSIFICATION:
            return np.searchsorted(self.classes, raw.astype(np.int64)).astype(np.int64, copy=False)
        values = raw.astype(np.float32, copy=False).reshape(len(raw), -1)
        return self.y_scaling.apply(values) if self.y_scaling is not None else values

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and targets of the samples at ``positions``, in that order.

        The file rows are visited in ascending order (sequential disk access, and each
        page is read once however many of its rows are wanted), piece by piece, and
        every piece is written straight to its place in the requested order.
        """
        rows = self.file_rows(positions)
        n = len(rows)
        x = np.empty((n, *self.feature_shape), dtype=np.float32)
        y_shape = (n,) if self.task == datasets.CLASSIFICATION else (n, self.target_dim)
        y = np.empty(y_shape, dtype=np.int64 if self.task == datasets.CLASSIFICATION else np.float32)
        ascending = bool(np.all(rows[1:] >= rows[:-1]))
        by_row = None if ascending else np.argsort(rows, kind="stable")
        consecutive = ascending and (n == 0 or int(rows[-1]) - int(rows[0]) == n - 1)
        step = _piece_rows(self.x_map.itemsize * math.prod(self.feature_shape), consecutive)
        for start in range(0, n, step):
            where = slice(start, start + step) if by_row is None else by_row[start : start + step]
            piece = rows[where]
            x[where] = self.features(piece)
            y[where] = self.targets(piece)
        return x, y


# ---------------------------------------------------------------------------- opening
def _locate(path: Path) -> tuple[Path, Path]:
    """``X.npy`` and ``y.npy`` in the directory ``path``, or a DataError listing what was looked for."""
    tried = [path / name for name in FILES]
    if all(p.is_file() for p in tried):
        return tried[0], tried[1]
    listing = "\n  ".join(f"{p} ({'found' if p.is_file() else 'missing'})" for p in tried)
    if not path.exists():
        where = "directory not found"
    elif not path.is_dir():
        where = "is a file, not a directory"
    else:
        where = "files missing"
    raise DataError(
        path,
        f"{where}; a memmap data set is a directory holding X.npy (features, one row per sample) "
        f"and y.npy (targets), e.g. written with np.save. Paths tried:\n  {listing}",
    )


def _npy_dtype(path: Path) -> np.dtype | None:
    """The dtype an ``.npy`` header declares (None for a header version not read here); a
    DataError if ``path`` is not an ``.npy`` file at all."""
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            kind = "an .npz archive" if head[:2] == b"PK" else "not an .npy file"
            raise DataError(path, f"is {kind}; write each array with np.save (X.npy and y.npy)")
        f.seek(0)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        try:
            reader = readers.get(np.lib.format.read_magic(f))
            return reader(f)[2] if reader is not None else None
        except ValueError as e:
            raise DataError(path, f"has a malformed .npy header ({e})") from e


def _open_npy(path: Path, name: str) -> np.ndarray:
    """``path`` memory-mapped read-only; a DataError if it is not a plain numeric ``.npy`` array."""
    dtype = _npy_dtype(path)
    if dtype is not None:
        # Checked before mapping, whose own message for an object array is less helpful.
        check_numeric(path, name, np.empty(0, dtype=dtype))
    try:
        # allow_pickle=False: an object array would be unpickled, which can run code.
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(path, f"not a readable .npy array ({e}); write it with np.save") from e
    check_numeric(path, name, arr)
    return arr


def _check_shapes(x_path: Path, y_path: Path, X: np.ndarray, y: np.ndarray) -> None:
    if X.ndim < 2:
        what = "is a scalar" if X.ndim == 0 else f"has shape {X.shape}"
        raise DataError(x_path, f"array 'X' {what}; expected (N, features...) with one row per sample (a single feature is X.reshape(-1, 1))")
    if y.ndim not in (1, 2):
        raise DataError(y_path, f"array 'y' has shape {y.shape}; expected (N,) or (N, k)")
    if len(X) != len(y):
        raise DataError(x_path, f"X has {plural(len(X), 'sample')} but {y_path} has {len(y)}; they must match")
    if len(X) == 0:
        raise DataError(x_path, "X and y are empty (0 samples)")


class _BadValues:
    """Counts the flagged values of an array scanned in row blocks and keeps the first one's index."""

    def __init__(self) -> None:
        self.count = 0
        self.first: tuple[int, ...] | int | None = None

    def add(self, mask: np.ndarray, row_offset: int) -> None:
        count = int(mask.sum())
        if count and self.first is None:
            first = first_bad_index(mask)
            self.first = first + row_offset if isinstance(first, int) else (first[0] + row_offset, *first[1:])
        self.count += count


def _check_finite(path: Path, name: str, bad: _BadValues, note: str = "") -> None:
    if bad.count:
        raise DataError(
            path,
            f"array {name!r} has {plural(bad.count, 'non-finite value')} (NaN or inf){note}; the first is at index {bad.first}",
        )


class _LabelScan:
    """Whether a 1-D target holds whole numbers only and, while it does, its distinct values.

    Args:
        y: the target.
        task: the requested task; for ``regression`` nothing needs collecting.
    """

    def __init__(self, y: np.ndarray, task: str):
        self.integral = y.ndim == 1 and task != datasets.REGRESSION
        self.classes = np.empty(0, dtype=np.int64)

    def add(self, block: np.ndarray) -> None:
        if not self.integral:
            return
        # Same test as runner.data._with_task, block by block.
        if block.dtype.kind == "f" and not np.all(np.mod(block, 1) == 0):
            self.integral = False
            return
        # The union of each block's distinct labels is the whole target's np.unique.
        self.classes = np.union1d(self.classes, np.unique(block.astype(np.int64)))


@dataclass(eq=False)
class _Scan:
    """What one pass over both files found."""

    labels: _LabelScan
    y_too_big: _BadValues  # float64 targets beyond float32's range (matters for regression only)


def _scan(x_path: Path, y_path: Path, X: np.ndarray, y: np.ndarray, task: str) -> _Scan:
    """One pass over both files: NaN/inf, float32 overflow, and what the labels look like."""
    bad = {"X": _BadValues(), "y": _BadValues()}
    too_big = {"X": _BadValues(), "y": _BadValues()}
    labels = _LabelScan(y, task)
    # Per row a step holds both rows as stored, their masks and an int64 file row.
    row_bytes = (X.itemsize + 1) * math.prod(X.shape[1:]) + (y.itemsize + 1) * math.prod(y.shape[1:]) + 8
    step = _scan_rows(row_bytes)
    for start in range(0, len(X), step):
        rows = np.arange(start, min(start + step, len(X)))
        for name, arr in (("X", X), ("y", y)):
            block = _gather(arr, rows)
            if block.dtype.kind == "f":
                finite = np.isfinite(block)
                bad[name].add(~finite, start)
                if block.itemsize > 4:  # only float64 and wider can exceed float32's range
                    with np.errstate(over="ignore"):  # overflow is what is being looked for
                        too_big[name].add(finite & ~np.isfinite(block.astype(np.float32)), start)
            if name == "y":
                labels.add(block)
    for name, path in (("X", x_path), ("y", y_path)):
        _check_finite(path, name, bad[name])
    _check_finite(x_path, "X", too_big["X"], note=" after conversion to float32 (values too large)")
    return _Scan(labels, too_big["y"])


def open_memmap_dataset(path: str | Path, task: str = "auto") -> MemmapDataset:
    """Memory-map ``X.npy`` and ``y.npy`` in the directory ``path`` and check them.

    Reads each file once, in blocks (memory bounded by the block, not the file), and
    decides the task exactly as the in-memory ``.npz`` loader does.

    Args:
        path: a directory holding ``X.npy`` (``(N, *features)``, numeric) and ``y.npy``
            (``(N,)`` or ``(N, d)``, numeric).
        task: ``auto`` (a 1-D target of whole numbers is classification, anything else
            regression), ``classification`` or ``regression``.

    Returns:
        The whole data set, unsplit and unstandardised. For classification the labels
        are read as ``0..C-1`` in the order of the sorted distinct labels.

    Raises:
        ConfigError: ``task`` is not one of the three above.
        DataError: a file is missing (the paths looked for are listed) or is not a
            numeric ``.npy`` array; shapes are wrong; ``X`` and ``y`` differ in length or
            are empty; a value is NaN/inf (the count and first index are given) or too
            large for float32; ``task=classification`` with targets that are not labels.
    """
    if task not in TASKS:
        raise ConfigError("dataset.task", task, f"one of {', '.join(TASKS)}")
    directory = Path(path).expanduser()
    x_path, y_path = _locate(directory)
    X, y = _open_npy(x_path, "X"), _open_npy(y_path, "y")
    _check_shapes(x_path, y_path, X, y)
    scan = _scan(x_path, y_path, X, y, task)
    labels = scan.labels

    if task == "auto":
        task = datasets.CLASSIFICATION if labels.integral else datasets.REGRESSION
    info: dict[str, Any] = {"source": str(directory)}
    if task == datasets.CLASSIFICATION:
        if not labels.integral:
            raise DataError(y_path, "dataset.task=classification needs a 1-D target of whole numbers (class labels)")
        info["classes"] = labels.classes.tolist()
        return MemmapDataset(X, y, task, len(labels.classes), labels.classes, info=info)
    _check_finite(y_path, "y", scan.y_too_big, note=" after conversion to float32 (values too large)")
    return MemmapDataset(X, y, task, info=info)


# ----------------------------------------------------------------- split and standardise
def split_memmap(ds: MemmapDataset, val_fraction: float, seed: int) -> tuple[MemmapDataset, MemmapDataset | None]:
    """Hold out the same samples :func:`runner.data.split` would, as index arrays only.

    It *is* that function: it draws the permutation and calls :meth:`MemmapDataset.subset`.
    """
    return datasets.split(ds, val_fraction, seed)


def _column_sum(load: Callable[[int, int], np.ndarray], n: int, step: int, columns: int) -> np.ndarray:
    """``sum(axis=0)`` of an ``(n, columns)`` float64 array loaded ``step`` rows at a time,
    added in the order NumPy adds the whole array, so that the result is bit-identical.

    NumPy reduces a C-ordered array (``np.save``'s default; a Fortran-ordered file gives
    sums equal only to rounding) over axis 0 row after row when rows have several
    columns. A single column is reduced with pairwise summation instead: a float64
    column in one pairwise tree (``_pairwise_sum``), and a column cast on the fly
    (float32 values summed as float64, the ``mean(dtype=float64)`` case) one buffer at a
    time, pairwise within each buffer and in sequence across buffers.

    Args:
        load: ``load(start, stop)`` returns rows ``start:stop`` as float64 ``(stop - start, columns)``.
        n: number of rows.
        step: rows per load; a multiple of ``np.getbufsize()`` for one column.
        columns: values per row.
    """
    total = np.zeros(columns)
    for start in range(0, n, step):
        block = load(start, min(start + step, n))
        if columns == 1:
            buffer = np.getbufsize()
            flat = block.reshape(-1)
            for offset in range(0, len(flat), buffer):
                total = total + np.add.reduce(flat[offset : offset + buffer])
        else:
            # Carrying the running total in as the block's first row continues the
            # row-by-row sum exactly where the previous block stopped.
            block[0] += total
            total = block.sum(axis=0)
    return total


def _pairwise_sum(load: Callable[[int, int], np.ndarray], start: int, stop: int, leaf: int) -> float:
    """NumPy's pairwise sum of a float64 column, with the leaves loaded on demand.

    NumPy splits ``n > 128`` values at ``n // 2`` rounded down to a multiple of 8 and
    adds the halves; a sub-range it would split the same way is summed by NumPy itself
    once it is at most ``leaf`` long, which gives the same tree.
    """
    n = stop - start
    if n <= leaf:
        return float(np.add.reduce(load(start, stop).reshape(-1)))
    half = n // 2
    half -= half % 8
    return _pairwise_sum(load, start, start + half, leaf) + _pairwise_sum(load, start + half, stop, leaf)


def _scaling(load: Callable[[int, int], np.ndarray], n: int, shape: tuple[int, ...], row_bytes: int) -> Scaling:
    """The mean and std :func:`runner.data._mean_std` would compute, from a blockwise float32 source.

    As ``np.std``: the mean is the float64 column sum over ``n``; the std is the square
    root of the float64 sum of squared deviations over ``n``; a std of 0 becomes 1.

    Args:
        load: ``load(start, stop)`` returns rows ``start:stop`` as float32 ``(rows, *shape)``.
        n: number of rows.
        shape: shape of one row.
        row_bytes: bytes of one row on disk, to size the reads.
    """
    columns = math.prod(shape)
    # Per row a step holds the row as stored, its float64 copy and its int64 file row.
    step = _scan_rows(row_bytes + 8 * columns + 8, single_column=columns == 1)

    def values(start: int, stop: int) -> np.ndarray:
        return load(start, stop).reshape(stop - start, columns).astype(np.float64)

    mean = np.true_divide(_column_sum(values, n, step, columns), n)

    def squares(start: int, stop: int) -> np.ndarray:
        deviation = values(start, stop)
        deviation -= mean  # in place: the same float64 subtraction, one buffer fewer
        return np.square(deviation, out=deviation)

    if columns == 1:
        # The squares are float64 already: one pairwise tree over the whole column.
        leaf = max(_PAIRWISE_BLOCK, step - step % 8)
        square_sum = np.array([_pairwise_sum(squares, 0, n, leaf)])
    else:
        square_sum = _column_sum(squares, n, step, columns)
    std = np.sqrt(np.true_divide(square_sum, n))
    std[std == 0] = 1.0  # a constant column is centred but not scaled
    return Scaling(mean.reshape(shape), std.reshape(shape))


def _part_loader(read: Callable[[np.ndarray], np.ndarray], part: MemmapDataset) -> Callable[[int, int], np.ndarray]:
    """``load(start, stop)``: ``read`` applied to the file rows of positions ``start:stop`` of ``part``."""

    def load(start: int, stop: int) -> np.ndarray:
        return read(part.file_rows(np.arange(start, stop)))

    return load


def standardize_memmap(
    train: MemmapDataset, val: MemmapDataset | None, features: bool, target: bool
) -> tuple[MemmapDataset, MemmapDataset | None]:
    """:func:`runner.data.standardize`, lazily: the statistics now, the scaling as rows are read.

    The statistics come from the training part only, in blockwise passes that give the
    same float64 values as the in-memory computation; each read then computes
    ``((x - mean) / std)`` in float64 and rounds to float32, as the in-memory path does.

    Args:
        train: the training part (not yet standardised).
        val: the validation part, or None.
        features: scale the features.
        target: scale the target too (regression only); its mean and std go into ``info``.

    Raises:
        ValueError: ``train`` is standardised already.
    """
    if train.x_scaling is not None or train.y_scaling is not None:
        raise ValueError("the training part is standardised already")
    x_scaling = y_scaling = None
    if features:
        row_bytes = train.x_map.itemsize * math.prod(train.feature_shape)
        x_scaling = _scaling(_part_loader(train.features, train), len(train), train.feature_shape, row_bytes)
    info = train.info
    if target and train.task == datasets.REGRESSION:
        row_bytes = train.y_map.itemsize * train.target_dim
        y_scaling = _scaling(_part_loader(train.targets, train), len(train), (train.target_dim,), row_bytes)
        info = {**train.info, "target_mean": np.ravel(y_scaling.mean).tolist(), "target_std": np.ravel(y_scaling.std).tolist()}

    def apply(part: MemmapDataset) -> MemmapDataset:
        return replace(part, x_scaling=x_scaling, y_scaling=y_scaling, info=info)

    return apply(train), (apply(val) if val is not None else None)


# ------------------------------------------------------------------------- for the loop
class BlockStream:
    """An epoch's samples in ``order``, read from disk one block of positions at a time.

    Block ``k`` holds the samples at ``order[k * block_size : (k + 1) * block_size]``.
    ``take`` serves slices of the cached block; a request that spans blocks is assembled
    block by block, so memory holds one block plus the request.

    Attributes:
        blocks_read: how many blocks were read from disk (instrumentation for tests).
        largest_block_bytes: the largest block held, in bytes of tensors (instrumentation).
    """

    def __init__(self, split: MemmapSplit, order: Tensor, block_size: int):
        self.split, self.order, self.block_size = split, order, block_size
        self._block: tuple[int, Tensor, Tensor] | None = None
        self.blocks_read = 0
        self.largest_block_bytes = 0

    def _load(self, k: int) -> tuple[Tensor, Tensor]:
        if self._block is None or self._block[0] != k:
            self._block = None  # freed before the next is read: never two blocks at once
            start = k * self.block_size
            positions = self.order[start : start + self.block_size].cpu().numpy()
            x, y, _ = self.split.load(positions)
            self._block = (k, x, y)
            self.blocks_read += 1
            held = x.element_size() * x.nelement() + y.element_size() * y.nelement()
            self.largest_block_bytes = max(self.largest_block_bytes, held)
        return self._block[1], self._block[2]

    def take(self, positions: slice) -> tuple[Tensor, Tensor]:
        """Inputs and targets of the samples at ``order[positions]``, on the split's device."""
        wanted = np.arange(*positions.indices(len(self.order)))
        if len(wanted) == 0:
            x, y = self._load(0)
            return x[:0], y[:0]
        blocks = wanted // self.block_size
        first, last = int(blocks[0]), int(blocks[-1])
        step = wanted[1] - wanted[0] if len(wanted) > 1 else 1
        if first == last and step == 1:
            x, y = self._load(first)
            offset = first * self.block_size
            return x[wanted[0] - offset : wanted[-1] + 1 - offset], y[wanted[0] - offset : wanted[-1] + 1 - offset]
        return self._assemble(wanted, blocks)

    def _assemble(self, wanted: np.ndarray, blocks: np.ndarray) -> tuple[Tensor, Tensor]:
        """A request spanning blocks (or strided): copied block by block into fresh tensors."""
        runs = np.split(np.arange(len(wanted)), np.flatnonzero(np.diff(blocks)) + 1)
        x_out = y_out = None
        for run in runs:
            k = int(blocks[run[0]])
            x, y = self._load(k)
            if x_out is None:
                x_out = x.new_empty((len(wanted), *x.shape[1:]))
                y_out = y.new_empty((len(wanted), *y.shape[1:]))
            local = torch.from_numpy(wanted[run] - k * self.block_size).to(x.device)
            into = slice(int(run[0]), int(run[-1]) + 1)
            x_out[into] = x.index_select(0, local)
            y_out[into] = y.index_select(0, local)
        return x_out, y_out


class MemmapSplit:
    """A memory-mapped split, ready for training: :class:`runner.batches.Split` without the data in memory.

    Args:
        ds: the part to serve (split and standardised).
        loss_fn: encodes each block's targets (:meth:`runner.losses.Loss.encode_targets`).
        device: where the tensors go.
        block_size: samples read from disk at a time during training.

    Raises:
        ConfigError: ``block_size`` is not a positive integer.
    """

    def __init__(self, ds: MemmapDataset, loss_fn: Loss, device: torch.device, block_size: int):
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
            raise ConfigError("dataset.block_size", block_size, "an integer >= 1 (samples read from disk at a time)")
        self.ds, self.loss_fn, self.device, self.block_size = ds, loss_fn, device, int(block_size)

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, positions: np.ndarray) -> tuple[Tensor, Tensor, Tensor | None]:
        """The samples at ``positions`` on the device: inputs, loss-ready targets, class labels or None.

        The same tensors, value for value, as ``runner.build.to_device`` makes of the
        whole part, then indexes.
        """
        x, y = self.ds.read(positions)
        y_tensor = torch.from_numpy(y).to(self.device)
        labels = y_tensor if self.ds.task == datasets.CLASSIFICATION else None
        return torch.from_numpy(x).to(self.device), self.loss_fn.encode_targets(y_tensor, self.ds.n_classes), labels

    def source(self, order: Tensor, bounded_memory: bool) -> EpochSource:
        """This epoch's batches in ``order``, always streamed (memory is bounded either way)."""
        return BlockStream(self, order, self.block_size)

    def chunks(self, size: int) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
        """The whole split in file order, ``size`` samples at a time, as :meth:`InMemorySplit.chunks`."""
        for start in range(0, len(self), size):
            yield self.load(np.arange(start, min(start + size, len(self))))


# ------------------------------------------------------------------------- for build_run
def load_memmap_parts(cfg_dataset: Any, val_fraction: float, seed: int) -> tuple[MemmapDataset, MemmapDataset | None]:
    """Open, split and standardise the data set ``cfg_dataset`` describes, as ``build_run`` does in memory.

    Args:
        cfg_dataset: has ``path``, ``task``, ``standardize`` and ``standardize_target``.
        val_fraction: share of samples held out for validation (0 for none).
        seed: draws the validation samples.
    """
    full = open_memmap_dataset(cfg_dataset.path, cfg_dataset.task)
    train, val = split_memmap(full, val_fraction, seed)
    return standardize_memmap(train, val, features=cfg_dataset.standardize, target=cfg_dataset.standardize_target)


def load_memmap_splits(
    cfg_dataset: Any, val_fraction: float, seed: int, loss_fn: Loss, device: torch.device
) -> tuple[MemmapSplit, MemmapSplit | None, MemmapDataset]:
    """:func:`load_memmap_parts`, wrapped for training.

    Args:
        cfg_dataset: as for :func:`load_memmap_parts`, plus ``block_size``.
        val_fraction: share of samples held out for validation (0 for none).
        seed: draws the validation samples.
        loss_fn: encodes targets as blocks are read.
        device: the training device.

    Returns:
        The training split, the validation split (or None) and the training part's
        dataset, for its metadata (``task``, ``n_classes``, ``feature_shape``, ``info``).
    """
    train, val = load_memmap_parts(cfg_dataset, val_fraction, seed)
    block_size = cfg_dataset.block_size
    return (
        MemmapSplit(train, loss_fn, device, block_size),
        MemmapSplit(val, loss_fn, device, block_size) if val is not None else None,
        train,
    )
