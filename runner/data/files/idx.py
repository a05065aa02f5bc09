"""MNIST-style IDX files (``train-images-idx3-ubyte`` and friends, gzipped or not), looked for in the
root itself, in torchvision's ``<Name>/raw/`` and in ``<name>/``."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from runner.data.files.checks import as_path, check_split
from runner.errors import ConfigError, DataError
from runner.text import plural


# Config name -> the directory name torchvision uses (``<root>/<Name>/raw/``).
IDX_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


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
    check_split(split)
    base = as_path(root)
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
    p = as_path(path)
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
