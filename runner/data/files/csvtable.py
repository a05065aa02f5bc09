"""``.csv`` files: a header row, numeric cells, one column the target; read row by row within a
memory budget."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from runner.data.files.checks import as_path, regular_file
from runner.errors import ConfigError, DataError
from runner.text import plural


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
    p = as_path(path)
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
