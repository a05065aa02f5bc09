"""Readers for data files the user brings: ``.npz``, ``.csv``, MNIST-style IDX and CIFAR-10, one
module per format, the checks they share in :mod:`runner.data.files.checks`.

Every reader checks what it reads and raises :class:`~runner.errors.DataError` (naming the
file and the exact problem) rather than letting a malformed file surface later as a shape
mismatch or a NaN loss. Nothing here ever downloads anything: when files are missing, the
error says where they were looked for so the user can put them there.

Security: user files are never unpickled freely. ``.npz`` files are read with
``allow_pickle=False`` and the CIFAR-10 pickles go through an unpickler that only resolves
the few numpy names that a plain array needs.
"""

from runner.data.files.cifar import load_cifar10
from runner.data.files.csvtable import load_csv
from runner.data.files.idx import IDX_NAMES, find_idx_files, load_idx, load_idx_dataset
from runner.data.files.npz import check_arrays, load_npz

__all__ = [
    "IDX_NAMES",
    "check_arrays",
    "find_idx_files",
    "load_cifar10",
    "load_csv",
    "load_idx",
    "load_idx_dataset",
    "load_npz",
]
