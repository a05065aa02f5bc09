"""Datasets: everything offline, loaded into host arrays, split and standardised once.

A :class:`Dataset` is plain NumPy: features ``X`` (float32, ``(N, *feature_shape)``; image sets
keep ``(N, C, H, W)``) and targets ``y`` (int64 class indices for classification, float32
``(N, d)`` for regression). Moving it to the training device is the loop's business.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from runner.errors import ConfigError, DataError
from runner.text import plural

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass
class Dataset:
    """Host-side data of one split.

    Attributes:
        X: float32 features, ``(N, *feature_shape)``.
        y: int64 ``(N,)`` class indices, or float32 ``(N, d)`` regression targets.
        task: ``"classification"`` or ``"regression"``.
        n_classes: number of classes (classification only).
        info: facts worth recording with the run (e.g. the true weights of ``linreg``).
    """

    X: np.ndarray
    y: np.ndarray
    task: str
    n_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.X)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def target_dim(self) -> int:
        return 1 if self.task == CLASSIFICATION else int(self.y.shape[1])

    def subset(self, index: np.ndarray) -> "Dataset":
        return replace(self, X=self.X[index], y=self.y[index])


def _classification(X: np.ndarray, y: np.ndarray, **info: Any) -> Dataset:
    classes, y_index = np.unique(y, return_inverse=True)
    info.setdefault("classes", classes.tolist())
    return Dataset(X.astype(np.float32), y_index.astype(np.int64), CLASSIFICATION, len(classes), info)


def _regression(X: np.ndarray, y: np.ndarray, **info: Any) -> Dataset:
    y = np.asarray(y, dtype=np.float32)
    return Dataset(X.astype(np.float32), y.reshape(len(y), -1), REGRESSION, None, info)


# ---------------------------------------------------------------- bundled with scikit-learn
def _sklearn_data_file(name: str) -> Path | None:
    """A data file shipped inside the installed scikit-learn, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # a top-level name: located, not imported
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / name
    return path if path.is_file() else None


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digit images and their labels, as ``sklearn.datasets.load_digits`` gives them.

    Read from scikit-learn's own ``digits.csv.gz`` the way its loader reads it (64 pixel
    columns then the label), without importing scikit-learn: that import (about a second)
    would otherwise be most of the default run's start-up beyond torch. Falls back to the
    loader if the file is not where scikit-learn keeps it.
    """
    path = _sklearn_data_file("digits.csv.gz")
    if path is None:
        from sklearn import datasets

        bunch = datasets.load_digits()
        return bunch.images, bunch.target
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _sklearn(cfg: Any) -> Dataset:
    if cfg.name == "digits":
        images, target = _digits_images()
        # Kept as 1x8x8 images so that a CNN can use them; dense models flatten.
        return _classification(images[:, None, :, :], target)
    from sklearn import datasets

    if cfg.name == "diabetes":
        bunch = datasets.load_diabetes()
        return _regression(bunch.data, bunch.target, feature_names=list(bunch.feature_names))
    bunch = getattr(datasets, f"load_{cfg.name}")()
    return _classification(bunch.data, bunch.target, feature_names=list(bunch.feature_names))


# ----------------------------------------------------------------------------- synthetic
def _linreg(cfg: Any) -> Dataset:
    rng = np.random.default_rng(cfg.seed)
    weights = rng.normal(size=cfg.d)
    bias = float(rng.normal())
    X = rng.normal(size=(cfg.n, cfg.d))
    y = X @ weights + bias + cfg.noise * rng.normal(size=cfg.n)
    return _regression(X, y, true_weights=weights.tolist(), true_bias=bias)


def _moons(cfg: Any) -> Dataset:
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=cfg.n, noise=cfg.noise, random_state=cfg.seed)
    return _classification(X, y)


def _blobs(cfg: Any) -> Dataset:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(
        n_samples=cfg.n,
        centers=cfg.centers,
        n_features=cfg.n_features,
        cluster_std=cfg.cluster_std,
        random_state=cfg.seed,
    )
    return _classification(X, y)


def _spirals(cfg: Any) -> Dataset:
    """Interleaved Archimedean spirals, one arm per class: not linearly separable."""
    rng = np.random.default_rng(cfg.seed)
    labels = np.arange(cfg.n) % cfg.classes
    t = np.sqrt(rng.uniform(size=cfg.n))  # sqrt: points spread evenly along the arm's length
    angle = 2 * np.pi * (cfg.turns * t + labels / cfg.classes)
    X = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    X += cfg.noise * rng.normal(size=X.shape)
    return _classification(X, labels)


# ----------------------------------------------------------------------------- files
def _file(cfg: Any) -> Dataset:
    from runner.data import files

    path = Path(cfg.path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError("dataset.path", cfg.path, f"an existing .npz or .csv file (there is no such file; relative paths start at {Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        X, y = files.load_npz(path)
    elif suffix == ".csv":
        X, y, names = files.load_csv(path, cfg.target)
    else:
        raise ConfigError("dataset.path", cfg.path, "a .npz file (arrays X and y) or a .csv file with a header row")
    return _with_task(X, y, cfg.task, path)


def _with_task(X: np.ndarray, y: np.ndarray, task: str, path: Path) -> Dataset:
    integral = y.ndim == 1 and np.all(np.mod(y, 1) == 0)
    if task == "auto":
        task = CLASSIFICATION if integral else REGRESSION
    if task == CLASSIFICATION and not integral:
        raise DataError(path, "dataset.task=classification needs a 1-D target of whole numbers (class labels)")
    if task == CLASSIFICATION:
        return _classification(X, y.astype(np.int64), source=str(path))
    return _regression(X, y, source=str(path))


def _python(cfg: Any) -> Dataset:
    """A user's function's data; its own validation part, if it returns one, rides in ``info``
    until :func:`split` takes it off (so ``val_fraction`` does not split it again)."""
    from runner.data import python

    (X, y), val = python.load(cfg.fn)
    source = f"{cfg.fn}()"
    if val is None:
        return _with_task(X, y, cfg.task, source)
    # Classes are numbered over both parts together, so a label means the same in each.
    whole = _with_task(np.concatenate([X, val[0]]), np.concatenate([y, val[1]]), cfg.task, source)
    whole.info["validation_rows"] = len(val[0])
    return whole


def _idx(cfg: Any) -> Dataset:
    from runner.data import files

    X, y = files.load_idx_dataset(cfg.root, cfg.name, "train")
    return _classification(X, y)


def _cifar10(cfg: Any) -> Dataset:
    from runner.data import files

    X, y = files.load_cifar10(cfg.root, "train")
    return _classification(X, y)


LOADERS: dict[str, Callable[[Any], Dataset]] = {
    "digits": _sklearn,
    "iris": _sklearn,
    "wine": _sklearn,
    "breast_cancer": _sklearn,
    "diabetes": _sklearn,
    "linreg": _linreg,
    "moons": _moons,
    "blobs": _blobs,
    "spirals": _spirals,
    "file": _file,
    "mnist": _idx,
    "fashion_mnist": _idx,
    "kmnist": _idx,
    "cifar10": _cifar10,
    "python": _python,
}


def load_dataset(cfg: Any) -> Dataset:
    """Load the whole data set named by ``cfg.name`` (a ``conf/dataset`` option)."""
    if cfg.name not in LOADERS:
        raise ConfigError("dataset.name", cfg.name, f"one of {', '.join(LOADERS)}")
    key = _loaded_key(cfg)
    if key is not None and key in _loaded:
        return _copy(_loaded[key])
    dataset = LOADERS[cfg.name](cfg)
    if len(dataset) == 0:
        raise DataError(cfg.name, "the data set is empty")
    if key is not None:
        _loaded[key] = _copy(dataset)
    return dataset


# The data sets loaded while :func:`loaded_once` is on, by their resolved config; None: off.
_loaded: dict[str, Dataset] | None = None


def _loaded_key(cfg: Any) -> str | None:
    """The key of ``cfg`` in :data:`_loaded`, or None when it is not kept: the memo is off, or
    the data come from the user's own function (which may draw anew or read a changed file)."""
    if _loaded is None or cfg.name == "python":
        return None
    from omegaconf import OmegaConf

    return json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)


def _copy(dataset: Dataset) -> Dataset:
    """A copy whose arrays and info the caller may change (split pops ``info`` keys)."""
    return replace(dataset, X=dataset.X.copy(), y=dataset.y.copy(), info=copy.deepcopy(dataset.info))


@contextmanager
def loaded_once() -> Iterator[None]:
    """Inside, each distinct data set config is read or generated once (a sweep's validation
    builds every job, and its jobs mostly share one data set); every caller gets its own copy."""
    global _loaded
    _loaded = {}
    try:
        yield
    finally:
        _loaded = None


def split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out ``round(val_fraction * N)`` samples, drawn with ``seed``; the rest trains.

    The training part keeps the data set's order (sorted by original index), so
    ``shuffle=false`` trains in file order. A data set that brings its own validation part
    (``dataset=python`` returning four arrays: its last ``info["validation_rows"]`` rows) keeps it.
    """
    own = dataset.info.pop("validation_rows", None)
    if own is not None:
        n = len(dataset) - own
        return dataset.subset(np.arange(n)), dataset.subset(np.arange(n, len(dataset)))
    if val_fraction == 0:
        return dataset, None
    n_val = int(round(val_fraction * len(dataset)))
    if n_val < 1 or n_val >= len(dataset):
        raise ConfigError(
            "val_fraction",
            val_fraction,
            f"a fraction leaving at least one sample on each side of {plural(len(dataset), 'sample')} (or 0 for no validation)",
        )
    perm = np.random.default_rng(seed).permutation(len(dataset))
    return dataset.subset(np.sort(perm[n_val:])), dataset.subset(np.sort(perm[:n_val]))


def training_subset(train: Dataset, size: int, seed: int) -> Dataset:
    """``size`` samples of the training part, drawn with ``seed`` (kept in their order).

    The draw uses its own stream, so the validation split (drawn with the same seed)
    is the one a run without ``train_size`` has.
    """
    if size > len(train):
        raise ConfigError("train_size", size, f"at most the training part's {plural(len(train), 'sample')} (or null for all)")
    keep = np.random.default_rng([seed, 1]).permutation(len(train))[:size]
    return train.subset(np.sort(keep))


def _mean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = a.mean(axis=0, dtype=np.float64), a.std(axis=0, dtype=np.float64)
    # A constant column (e.g. a border pixel that is always 0) is centred but not scaled.
    std[std == 0] = 1.0
    return mean, std


def standardize(train: Dataset, val: Dataset | None, features: bool, target: bool) -> tuple[Dataset, Dataset | None]:
    """Scale features (and, for regression, the target) to zero mean and unit variance.

    The statistics come from the training part only, so nothing about the validation
    part leaks into training. The target's mean and std are recorded in ``info``.
    """
    x_mean, x_std = _mean_std(train.X) if features else (0.0, 1.0)
    scale_target = target and train.task == REGRESSION
    y_mean, y_std = _mean_std(train.y) if scale_target else (0.0, 1.0)
    info = {**train.info, "target_mean": np.ravel(y_mean).tolist(), "target_std": np.ravel(y_std).tolist()} if scale_target else train.info

    def apply(part: Dataset) -> Dataset:
        X = ((part.X - x_mean) / x_std).astype(np.float32)
        y = ((part.y - y_mean) / y_std).astype(np.float32) if scale_target else part.y
        return replace(part, X=X, y=y, info=info)

    return apply(train), (apply(val) if val is not None else None)
