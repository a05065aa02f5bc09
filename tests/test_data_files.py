"""Readers for user data files: tiny files of each format are written to tmp_path and read back."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shlex
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from runner.data.files import (
    IDX_NAMES,
    find_idx_files,
    load_cifar10,
    load_csv,
    load_idx,
    load_idx_dataset,
    load_npz,
)
from runner.errors import ConfigError, DataError

# 5 images of 4x3 pixels with distinct known values (0, 3, 6, ... 177).
N, H, W = 5, 4, 3
IMAGES = (np.arange(N * H * W, dtype=np.uint8) * 3).reshape(N, H, W)
LABELS = np.array([3, 1, 4, 1, 5], dtype=np.uint8)

IDX_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


# ----------------------------------------------------------------------------- writers
def idx_bytes(arr: np.ndarray, code: int | None = None) -> bytes:
    """The IDX encoding of ``arr``: 00 00 <code> <ndim>, big-endian dims, big-endian data."""
    code = IDX_CODES[arr.dtype.type] if code is None else code
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_bytes(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_pair(
    directory: Path,
    split: str = "train",
    *,
    gz: bool = False,
    dotted: bool = False,
    images: np.ndarray = IMAGES,
    labels: np.ndarray = LABELS,
) -> tuple[Path, Path]:
    prefix = "train" if split == "train" else "t10k"
    sep = "." if dotted else "-"
    suffix = ".gz" if gz else ""
    img = write_bytes(directory / f"{prefix}-images{sep}idx3-ubyte{suffix}", idx_bytes(images), gz)
    lab = write_bytes(directory / f"{prefix}-labels{sep}idx1-ubyte{suffix}", idx_bytes(labels), gz)
    return img, lab


def cifar_rows(n: int, offset: int = 0) -> np.ndarray:
    """n CIFAR rows of 3072 bytes with values depending on row and position."""
    base = np.arange(3072, dtype=np.int64)
    return np.stack([(base * 7 + 11 * (i + offset)) % 256 for i in range(n)]).astype(np.uint8)


def write_pickle(path: Path, obj: Any, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], protocol: int = 2) -> Path:
    # Protocol 2 with bytes keys mimics the official (Python 2) files.
    return write_pickle(path, {b"batch_label": b"x", b"data": data, b"labels": labels}, protocol)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def write_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class _Evil:
    """A pickle payload that runs a shell command when a plain unpickler loads it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


# -------------------------------------------------------------------------------- npz
def test_npz_images_keep_shape_and_y_is_as_stored(tmp_path: Path) -> None:
    X = IMAGES[:, None].astype(np.float64) / 7
    y = np.array([0, 2, 1, 2, 0], dtype=np.int32)
    Xr, yr = load_npz(write_npz(tmp_path / "d.npz", X=X, y=y, extra=np.zeros(2)))
    assert Xr.dtype == np.float32 and Xr.shape == (N, 1, H, W)
    np.testing.assert_array_equal(Xr, X.astype(np.float32))
    assert yr.dtype == np.int32 and yr.shape == (N,)
    np.testing.assert_array_equal(yr, y)


def test_npz_two_dim_targets_and_compressed(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    y = np.arange(10, dtype=np.float64).reshape(5, 2) / 4
    np.savez_compressed(path, X=np.ones((5, 3), dtype=np.int64), y=y)
    X, yr = load_npz(str(path))
    assert X.dtype == np.float32 and X.shape == (5, 3)
    assert yr.dtype == np.float64 and yr.shape == (5, 2)
    np.testing.assert_array_equal(yr, y)


# -------------------------------------------------------------------------------- csv
def test_csv_reads_features_target_and_names(tmp_path: Path) -> None:
    # A BOM, spaces around header names and a trailing blank line are all common in the wild.
    path = write_text(
        tmp_path / "d.csv",
        "\ufeffa, label ,b\n1,0,2.5\n-3e2, 1 ,4\n5,2,0.125\n\n",
    )
    X, y, names = load_csv(path, "label")
    assert names == ["a", "b"]
    assert X.dtype == np.float32 and X.shape == (3, 2)
    np.testing.assert_array_equal(X, np.array([[1, 2.5], [-300, 4], [5, 0.125]], np.float32))
    assert y.dtype == np.float64 and y.shape == (3,)
    np.testing.assert_array_equal(y, [0.0, 1.0, 2.0])


def test_csv_target_none_lists_columns(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ConfigError) as info:
        load_csv(path, None)
    assert info.value.key == "dataset.target" and info.value.value is None
    assert f"columns in {path} are: a, b, c" in str(info.value)


def test_csv_unknown_target_lists_columns(tmp_path: Path) -> None:
    path = write_text(tmp_path / "d.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ConfigError) as info:
        load_csv(path, "d")
    assert info.value.value == "d"
    assert str(path) in str(info.value) and "a, b, c" in str(info.value)


# -------------------------------------------------------------------------------- idx
@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_idx_every_type_code_round_trips(tmp_path: Path, dtype: type) -> None:
    # Negative values for signed types, values above 127 for uint8: both catch sign mix-ups.
    offset = 200 if dtype == np.uint8 else -5
    arr = (np.arange(24).reshape(2, 3, 4) + offset).astype(dtype)
    if np.dtype(dtype).kind == "f":
        arr = arr / 4 + np.array(1e-3, dtype)  # fractional values survive only a true float parse
    path = write_bytes(tmp_path / "a-idx3-ubyte", idx_bytes(arr))
    out = load_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # a writable copy, not a view of the file's bytes


def test_idx_gzip_is_detected_from_content(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "labels-no-gz-suffix", idx_bytes(LABELS), gz=True)
    np.testing.assert_array_equal(load_idx(path), LABELS)


def _assert_idx_dataset(X: np.ndarray, y: np.ndarray) -> None:
    assert X.dtype == np.float32 and X.shape == (N, 1, H, W)
    np.testing.assert_array_equal(X[:, 0], IMAGES.astype(np.float32) / 255)
    assert X.min() >= 0 and X.max() <= 1
    assert y.dtype == np.int64 and y.shape == (N,)
    np.testing.assert_array_equal(y, LABELS)


@pytest.mark.parametrize(
    "layout, gz, dotted",
    [
        ("root", False, False),
        ("root", True, False),
        ("root", False, True),
        ("root", True, True),
        ("raw", False, False),
        ("raw", True, False),
        ("named", False, False),
    ],
)
@pytest.mark.parametrize("name", list(IDX_NAMES))
def test_idx_dataset_layouts(tmp_path: Path, name: str, layout: str, gz: bool, dotted: bool) -> None:
    directory = {
        "root": tmp_path,
        "raw": tmp_path / IDX_NAMES[name] / "raw",
        "named": tmp_path / name,
    }[layout]
    img, lab = write_idx_pair(directory, gz=gz, dotted=dotted)
    assert find_idx_files(tmp_path, name, "train") == (img, lab)
    _assert_idx_dataset(*load_idx_dataset(str(tmp_path), name, "train"))


def test_idx_test_split_uses_t10k_files(tmp_path: Path) -> None:
    write_idx_pair(tmp_path, "train", images=IMAGES[:2], labels=LABELS[:2])
    write_idx_pair(tmp_path, "test")
    _assert_idx_dataset(*load_idx_dataset(tmp_path, "mnist", "test"))


def test_idx_root_wins_over_torchvision_layout(tmp_path: Path) -> None:
    write_idx_pair(tmp_path)
    write_idx_pair(tmp_path / "MNIST" / "raw", images=IMAGES[:2], labels=LABELS[:2])
    _assert_idx_dataset(*load_idx_dataset(tmp_path, "mnist"))


def test_idx_missing_lists_every_path_tried(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        find_idx_files(tmp_path, "fashion_mnist", "test")
    msg = str(info.value)
    assert "Nothing is downloaded" in msg
    for directory in (tmp_path, tmp_path / "FashionMNIST" / "raw", tmp_path / "fashion_mnist"):
        for fname in (
            "t10k-images-idx3-ubyte",
            "t10k-images-idx3-ubyte.gz",
            "t10k-images.idx3-ubyte",
            "t10k-images.idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte",
            "t10k-labels-idx1-ubyte.gz",
            "t10k-labels.idx1-ubyte",
            "t10k-labels.idx1-ubyte.gz",
        ):
            assert str(directory / fname) in msg


def test_idx_images_without_labels_are_pointed_out(tmp_path: Path) -> None:
    img = write_bytes(tmp_path / "train-images-idx3-ubyte", idx_bytes(IMAGES))
    with pytest.raises(DataError, match="Found only") as info:
        load_idx_dataset(tmp_path, "kmnist")
    assert str(img) in str(info.value)


def test_idx_unknown_name_and_split() -> None:
    with pytest.raises(ConfigError, match="mnist, fashion_mnist, kmnist"):
        find_idx_files("data", "emnist", "train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        find_idx_files("data", "mnist", "val")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_cifar10("data", "val")


# ------------------------------------------------------------------------------ cifar
def test_cifar_train_batches_in_standard_dir(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    rows = [cifar_rows(2, offset=2 * b) for b in range(5)]
    for b in range(5):
        write_cifar_batch(d / f"data_batch_{b + 1}", rows[b], [b, 9 - b])
    write_cifar_batch(d / "test_batch", cifar_rows(1), [7])
    X, y = load_cifar10(tmp_path, "train")
    assert X.dtype == np.float32 and X.shape == (10, 3, 32, 32)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 9, 1, 8, 2, 7, 3, 6, 4, 5])
    data = np.concatenate(rows)
    # Channel c, pixel (i, j) is byte c*1024 + i*32 + j of the row.
    for n, c, i, j in [(0, 0, 0, 0), (3, 1, 5, 7), (9, 2, 31, 31), (6, 2, 0, 31)]:
        assert X[n, c, i, j] == np.float32(data[n, c * 1024 + i * 32 + j]) / np.float32(255)
    np.testing.assert_array_equal(X.reshape(10, -1), data.astype(np.float32) / 255)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_test_batch_in_root_any_protocol(tmp_path: Path, protocol: int) -> None:
    data = cifar_rows(3)
    # str keys, as a batch re-saved from Python 3 would have.
    write_pickle(tmp_path / "test_batch", {"data": data, "labels": [0, 5, 9]}, protocol)
    X, y = load_cifar10(str(tmp_path), "test")
    assert X.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(X.reshape(3, -1), data.astype(np.float32) / 255)
    np.testing.assert_array_equal(y, [0, 5, 9])


def test_cifar_pickle_written_by_numpy1_loads(tmp_path: Path) -> None:
    # The official files name numpy.core.multiarray (numpy 1.x), not numpy._core.
    data = cifar_rows(2)
    raw = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2)
    new, old = b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    if new in raw:
        raw = raw.replace(new, old)
    assert old in raw
    write_bytes(tmp_path / "test_batch", raw)
    X, y = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(X.reshape(2, -1), data.astype(np.float32) / 255)
    np.testing.assert_array_equal(y, [1, 2])


def test_cifar_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    # Control: the payload really does run when unpickled naively.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    path = write_bytes(tmp_path / "test_batch", payload)
    with pytest.raises(DataError, match="refused to unpickle") as info:
        load_cifar10(tmp_path, "test")
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_cifar_missing_lists_every_path_tried(tmp_path: Path) -> None:
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1", cifar_rows(1), [0])
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path, "train")
    msg = str(info.value)
    assert "Nothing is downloaded" in msg
    for d in (tmp_path / "cifar-10-batches-py", tmp_path):
        for i in range(1, 6):
            assert str(d / f"data_batch_{i}") in msg
    assert f"{tmp_path / 'cifar-10-batches-py' / 'data_batch_1'} (found)" in msg


# ----------------------------------------------------------------------- error table
def _csv(text: str, target: str = "y") -> Callable[[Path], tuple[Callable[[], Any], Path]]:
    def build(tmp: Path) -> tuple[Callable[[], Any], Path]:
        path = write_text(tmp / "d.csv", text)
        return (lambda: load_csv(path, target)), path

    return build


def _npz(**arrays: Any) -> Callable[[Path], tuple[Callable[[], Any], Path]]:
    def build(tmp: Path) -> tuple[Callable[[], Any], Path]:
        path = write_npz(tmp / "d.npz", **arrays)
        return (lambda: load_npz(path)), path

    return build


def _npz_file(content: Callable[[Path], None]) -> Callable[[Path], tuple[Callable[[], Any], Path]]:
    def build(tmp: Path) -> tuple[Callable[[], Any], Path]:
        path = tmp / "d.npz"
        content(path)
        return (lambda: load_npz(path)), path

    return build


def _idx(data: bytes) -> Callable[[Path], tuple[Callable[[], Any], Path]]:
    def build(tmp: Path) -> tuple[Callable[[], Any], Path]:
        path = write_bytes(tmp / "x-idx3-ubyte", data)
        return (lambda: load_idx(path)), path

    return build


def _idx_pair(images: np.ndarray, labels: np.ndarray) -> Callable[[Path], tuple[Callable[[], Any], Path]]:
    def build(tmp: Path) -> tuple[Callable[[], Any], Path]:
        img, lab = write_idx_pair(tmp / "MNIST" / "raw", images=images, labels=labels)
        return (lambda: load_idx_dataset(tmp, "mnist")), img

    return build


def _cifar(obj: Any = None, raw: bytes | None = None) -> Callable[[Path], tuple[Callable[[], Any], Path]]:
    def build(tmp: Path) -> tuple[Callable[[], Any], Path]:
        path = tmp / "test_batch"
        if raw is not None:
            write_bytes(path, raw)
        else:
            write_pickle(path, obj)
        return (lambda: load_cifar10(tmp, "test")), path

    return build


def _missing(loader: Callable[[Path], Any], name: str) -> Callable[[Path], tuple[Callable[[], Any], Path]]:
    def build(tmp: Path) -> tuple[Callable[[], Any], Path]:
        path = tmp / name
        return (lambda: loader(path)), path

    return build


X5 = np.arange(15, dtype=np.float64).reshape(5, 3)
Y5 = np.arange(5)
X_NAN = X5.copy()
X_NAN[1, 0] = np.nan
X_NAN[3, 2] = np.inf
Y_INF = Y5.astype(float)
Y_INF[3] = -np.inf
X_HUGE = X5.copy()
X_HUGE[2, 1] = 1e300
GOOD_IDX = idx_bytes(IMAGES)

BAD_INPUTS = [
    # npz
    ("npz-missing", _missing(load_npz, "nope.npz"), ["file not found"]),
    ("npz-not-zip", _npz_file(lambda p: p.write_text("X,y\n1,2\n")), ["is not an .npz archive"]),
    ("npz-single-npy", _npz_file(lambda p: p.write_bytes(npy_bytes(X5))), ["single .npy array"]),
    ("npz-truncated-zip", _npz_file(lambda p: (np.savez(p, X=X5, y=Y5), p.write_bytes(p.read_bytes()[:60]))), ["not a valid .npz file"]),
    ("npz-no-y", _npz(X=X5, labels=Y5), ["missing array(s) y", "arrays present: X, labels"]),
    ("npz-object-X", _npz(X=np.array([{"a": 1}] * 5, dtype=object), y=Y5), ["'X'", "object dtype", "not loaded for security"]),
    ("npz-string-y", _npz(X=X5, y=np.array(["a", "b", "c", "d", "e"])), ["'y'", "string dtype"]),
    ("npz-nonfinite-X", _npz(X=X_NAN, y=Y5), ["'X' has 2 non-finite", "first is at index (1, 0)"]),
    ("npz-nonfinite-y", _npz(X=X5, y=Y_INF), ["'y' has 1 non-finite", "first is at index 3"]),
    ("npz-float32-overflow", _npz(X=X_HUGE, y=Y5), ["after conversion to float32", "index (2, 1)"]),
    ("npz-length-mismatch", _npz(X=X5, y=Y5[:4]), ["X has 5 samples but y has 4"]),
    ("npz-empty", _npz(X=np.zeros((0, 3)), y=np.zeros(0)), ["empty (0 samples)"]),
    ("npz-y-3d", _npz(X=X5, y=np.zeros((5, 1, 1))), ["'y' has shape (5, 1, 1)"]),
    # csv
    ("csv-missing", _missing(lambda p: load_csv(p, "y"), "nope.csv"), ["file not found"]),
    ("csv-empty-file", _csv(""), ["file is empty", "header row"]),
    ("csv-no-header", _csv("1,2,3\n4,5,6\n"), ["line 1 looks like data", "not a header"]),
    ("csv-duplicate-column", _csv("a,y,a\n1,2,3\n"), ["'a' appears more than once"]),
    ("csv-not-a-number", _csv("a,b,y\n1,2,3\n4,abc,6\n"), ["line 3, column 'b': 'abc' is not a number"]),
    ("csv-empty-cell", _csv("a,b,y\n1, ,3\n"), ["line 2, column 'b': empty cell"]),
    ("csv-nan-cell", _csv("a,b,y\n1,2,3\n4,5,6\n7,8,NaN\n"), ["line 4, column 'y'", "not a finite number"]),
    ("csv-ragged", _csv("a,b,y\n1,2,3\n4,5\n"), ["line 3 has 2 fields but the header has 3"]),
    ("csv-no-rows", _csv("a,b,y\n"), ["no data rows"]),
    ("csv-only-target", _csv("a;b;y\n1;2;3\n", target="a;b;y"), ["no feature columns", "separated by ';'"]),
    ("csv-float32-overflow", _csv("a,y\n1e300,1\n"), ["line 2, column 'a'", "too large for float32"]),
    # idx
    ("idx-missing", _missing(load_idx, "nope-idx3-ubyte"), ["file not found"]),
    ("idx-bad-magic", _idx(b"\x12\x34\x56\x78" + bytes(8)), ["bad magic number", "found 12 34 56 78"]),
    ("idx-html", _idx(b"<html><body>404</body></html>"), ["bad magic number", "HTML"]),
    ("idx-unknown-type", _idx(b"\x00\x00\x0a\x01" + struct.pack(">I", 2) + b"ab"), ["unknown IDX type code 0x0A"]),
    ("idx-short-header", _idx(b"\x00\x00\x08\x03" + struct.pack(">I", 5)), ["truncated header", "need 16 bytes, found 8"]),
    ("idx-truncated", _idx(GOOD_IDX[:-1]), ["truncated data", "5x4x3 of uint8 = 60 bytes, found 59"]),
    ("idx-trailing", _idx(GOOD_IDX + b"\x00\x00"), ["2 trailing bytes", "found 62"]),
    ("idx-bad-gzip", _idx(gzip.compress(GOOD_IDX)[:-6]), ["corrupt gzip data"]),
    ("idx-count-mismatch", _idx_pair(IMAGES, LABELS[:4]), ["has 5 images but", "train-labels-idx1-ubyte has 4 labels"]),
    ("idx-images-not-3d", _idx_pair(IMAGES.reshape(N, H * W), LABELS), ["expected images of shape (N, rows, cols)"]),
    ("idx-float-images", _idx_pair(IMAGES.astype(np.float32), LABELS), ["expected uint8 pixels, found float32"]),
    # cifar
    ("cifar-not-pickle", _cifar(raw=b"this is not a pickle"), ["not a valid CIFAR-10 pickle"]),
    ("cifar-not-dict", _cifar([1, 2, 3]), ["expected a pickled dict, found list"]),
    ("cifar-no-labels", _cifar({b"data": cifar_rows(2)}), ["missing key b'labels'", "keys present: b'data'"]),
    ("cifar-wrong-shape", _cifar({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}), ["shape (n, 3072)", "shape (2, 1024)"]),
    ("cifar-wrong-dtype", _cifar({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), ["found float32 array"]),
    ("cifar-label-count", _cifar({b"data": cifar_rows(2), b"labels": [0]}), ["2 rows but b'labels' has 1"]),
    ("cifar-label-range", _cifar({b"data": cifar_rows(2), b"labels": [0, 10]}), ["label 10 at index 1", "0..9"]),
    ("cifar-evil-global", _cifar(raw=pickle.dumps({b"data": eval}, protocol=2)), ["refused to unpickle", "eval"]),
]


@pytest.mark.parametrize("build, fragments", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_data_error(
    tmp_path: Path,
    build: Callable[[Path], tuple[Callable[[], Any], Path]],
    fragments: list[str],
) -> None:
    call, path = build(tmp_path)
    with pytest.raises(DataError) as info:
        call()
    msg = str(info.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
