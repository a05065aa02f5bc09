"""Memory-mapped data: the same samples, statistics, batches and losses as in memory, in bounded memory."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runner import data as datasets
from runner.data import memmap
from runner.data.files import load_npz
from runner.epochs import TIMED_PREFIXES
from runner.errors import ConfigError, DataError
from runner.loggers import MemoryLogger
from runner.losses import CategoricalCrossentropy, Hinge, MeanSquaredError, SparseCategoricalCrossentropy
from runner.loop import batch_slices, epoch_order, evaluate
from runner.models import MLP
from runner.build import build_run, to_device
from runner.train import fit

CPU = torch.device("cpu")
N = 103  # a prime: every batch and block size below leaves a partial last one


# ------------------------------------------------------------------------------ data
def classification_arrays(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float64 features with unequal scales, labels 3/7/11 (not 0..C-1, to exercise the remap)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 1000.0] + [0.0, 5.0, -3.0, 1e4]
    y = np.array([3, 7, 11], dtype=np.int32)[rng.integers(0, 3, size=n)]
    return X, y


def regression_arrays(n: int = N, seed: int = 1, target_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float32 features, float64 targets ``(n,)`` or ``(n, target_dim)`` far from zero mean."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32) * 4.0
    shape = (n,) if target_dim is None else (n, target_dim)
    y = 50.0 + 7.0 * rng.normal(size=shape)
    return X, y


def write(directory: Path, X: np.ndarray, y: np.ndarray) -> Path:
    """``X.npy`` and ``y.npy`` for the memmap path and ``data.npz`` with the same arrays for the in-memory one."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "X.npy", X)
    np.save(directory / "y.npy", y)
    np.savez(directory / "data.npz", X=X, y=y)
    return directory


def in_memory(directory: Path, val_fraction: float, seed: int, features: bool, target: bool, task: str = "auto"):
    """What build_run makes of ``data.npz``: loaded, split and standardised in memory."""
    X, y = load_npz(directory / "data.npz")
    full = datasets._with_task(X, y, task, directory / "data.npz")
    train, val = datasets.split(full, val_fraction, seed)
    return datasets.standardize(train, val, features=features, target=target)


def memmapped(directory: Path, val_fraction: float, seed: int, features: bool, target: bool, task: str = "auto"):
    full = memmap.open_memmap_dataset(directory, task)
    train, val = memmap.split_memmap(full, val_fraction, seed)
    return memmap.standardize_memmap(train, val, features=features, target=target)


def read_all(part: memmap.MemmapDataset) -> tuple[np.ndarray, np.ndarray]:
    return part.read(np.arange(len(part)))


def assert_same_part(expected: datasets.Dataset, got: memmap.MemmapDataset) -> None:
    """Same samples, values bit for bit, and the same metadata."""
    X, y = read_all(got)
    assert X.dtype == expected.X.dtype and y.dtype == expected.y.dtype
    np.testing.assert_array_equal(X, expected.X, strict=True)
    np.testing.assert_array_equal(y, expected.y, strict=True)
    assert (len(got), got.feature_shape, got.target_dim) == (len(expected), expected.feature_shape, expected.target_dim)
    assert (got.task, got.n_classes) == (expected.task, expected.n_classes)
    strip = lambda info: {k: v for k, v in info.items() if k != "source"}  # noqa: E731 - the directory vs the npz
    assert strip(got.info) == strip(expected.info)


@pytest.fixture
def cls_dir(tmp_path) -> Path:
    return write(tmp_path / "cls", *classification_arrays())


@pytest.fixture
def reg_dir(tmp_path) -> Path:
    return write(tmp_path / "reg", *regression_arrays())


# ------------------------------------------------------------------- split, standardise
@pytest.mark.parametrize("val_fraction,seed", [(0.2, 0), (0.2, 5), (0.5, 1), (0.0, 0)])
def test_split_selects_the_same_rows_as_in_memory(val_fraction, seed, cls_dir, reg_dir):
    for directory in (cls_dir, reg_dir):
        expected = in_memory(directory, val_fraction, seed, features=False, target=False)
        got = memmapped(directory, val_fraction, seed, features=False, target=False)
        for exp, part in zip(expected, got):
            assert (exp is None) == (part is None)
            if exp is not None:
                assert_same_part(exp, part)
    if val_fraction:
        train, val = memmap.split_memmap(memmap.open_memmap_dataset(cls_dir), val_fraction, seed)
        perm = np.random.default_rng(seed).permutation(N)
        n_val = round(val_fraction * N)
        np.testing.assert_array_equal(train.index, np.sort(perm[n_val:]))
        np.testing.assert_array_equal(val.index, np.sort(perm[:n_val]))


def test_split_refuses_the_fractions_the_in_memory_split_refuses(cls_dir):
    with pytest.raises(ConfigError, match="val_fraction"):
        memmap.split_memmap(memmap.open_memmap_dataset(cls_dir), 0.999, 0)


@pytest.mark.parametrize("features,target", [(True, False), (True, True), (False, True), (False, False)])
def test_standardisation_equals_in_memory_bit_for_bit(features, target, cls_dir, tmp_path):
    reg2_dir = write(tmp_path / "reg2", *regression_arrays(target_dim=2))
    reg_dir = write(tmp_path / "reg1", *regression_arrays())
    for directory in (cls_dir, reg_dir, reg2_dir):
        expected = in_memory(directory, 0.2, 3, features, target)
        got = memmapped(directory, 0.2, 3, features, target)
        for exp, part in zip(expected, got):
            assert_same_part(exp, part)


@pytest.mark.parametrize(
    "shape,target_dim",
    [((6,), None), ((1,), None), ((2, 3, 3), 3)],  # several columns; one column (pairwise sums); images
)
def test_statistics_over_many_blocks_equal_numpys_whole_array_ones(shape, target_dim, tmp_path, monkeypatch):
    """With scans of a few hundred bytes the statistics come from many blocks, and NumPy's
    summation order must still be reproduced exactly, on values of wildly different sizes."""
    monkeypatch.setattr(memmap, "_SCAN_BYTES", 512)
    n = 30_011  # several of NumPy's 8192-value buffers, and not a multiple of any
    rng = np.random.default_rng(7)
    X = rng.lognormal(sigma=6.0, size=(n, *shape)) * rng.choice([-1.0, 1.0], size=(n, *shape))
    y_shape = (n,) if target_dim is None else (n, target_dim)
    y = rng.lognormal(sigma=6.0, size=y_shape).astype(np.float32)
    directory = write(tmp_path / "wide", X, y)
    expected = in_memory(directory, 0.25, 0, features=True, target=True)
    got = memmapped(directory, 0.25, 0, features=True, target=True)
    for exp, part in zip(expected, got):
        assert_same_part(exp, part)
    train_raw = datasets.split(datasets._with_task(*load_npz(directory / "data.npz"), "auto", directory), 0.25, 0)[0]
    mean, std = datasets._mean_std(train_raw.X)
    np.testing.assert_array_equal(got[0].x_scaling.mean, mean, strict=True)
    np.testing.assert_array_equal(got[0].x_scaling.std, std, strict=True)


def test_classes_are_remapped_from_labels_spread_over_many_scan_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(memmap, "_SCAN_BYTES", 256)
    y = np.repeat([40, -2, 9, 40, 1000], 37)  # each label in its own blocks; 40 twice
    X = np.arange(len(y), dtype=np.float32)[:, None]
    directory = write(tmp_path / "labels", X, y)
    ds = memmap.open_memmap_dataset(directory)
    assert ds.task == datasets.CLASSIFICATION and ds.n_classes == 4
    assert ds.info["classes"] == [-2, 9, 40, 1000]
    expected = in_memory(directory, 0.0, 0, features=False, target=False)[0]
    assert_same_part(expected, ds)


def test_task_detection_follows_the_in_memory_rules(tmp_path):
    whole = write(tmp_path / "whole", np.ones((5, 2)), np.array([0.0, 1.0, 2.0, 1.0, 0.0]))
    assert memmap.open_memmap_dataset(whole).task == datasets.CLASSIFICATION
    assert memmap.open_memmap_dataset(whole, "regression").task == datasets.REGRESSION
    fractional = write(tmp_path / "fractional", np.ones((5, 2)), np.array([0.0, 1.5, 2.0, 1.0, 0.0]))
    assert memmap.open_memmap_dataset(fractional).task == datasets.REGRESSION
    columns = write(tmp_path / "columns", np.ones((5, 2)), np.ones((5, 2), dtype=np.int64))
    assert memmap.open_memmap_dataset(columns).task == datasets.REGRESSION
    with pytest.raises(DataError, match="whole numbers"):
        memmap.open_memmap_dataset(fractional, "classification")
    with pytest.raises(ConfigError, match="dataset.task"):
        memmap.open_memmap_dataset(whole, "clustering")


# ---------------------------------------------------------------------- batches in an epoch
def splits_for(directory: Path, loss_fn, block_size: int, val_fraction: float = 0.2):
    """The in-memory and the memmap training splits of the same data, standardised alike."""
    train, _ = in_memory(directory, val_fraction, 0, features=True, target=True)
    mtrain, _ = memmapped(directory, val_fraction, 0, features=True, target=True)
    return to_device(train, loss_fn, CPU), memmap.MemmapSplit(mtrain, loss_fn, CPU, block_size)


def assert_same_tensors(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> None:
    for e, g in zip(expected, got, strict=True):
        assert e.dtype == g.dtype and e.shape == g.shape and e.device == g.device
        assert torch.equal(e, g)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("batch_size", [1, 10, "full"])
@pytest.mark.parametrize("task,loss_fn", [("cls", CategoricalCrossentropy()), ("cls", SparseCategoricalCrossentropy()), ("reg", MeanSquaredError())])
def test_block_stream_serves_exactly_the_in_memory_batches(block_size, batch_size, task, loss_fn, cls_dir, reg_dir):
    reference, split = splits_for(cls_dir if task == "cls" else reg_dir, loss_fn, block_size)
    n = len(reference)
    b = n if batch_size == "full" else batch_size
    generator = torch.Generator().manual_seed(11)
    for _ in range(2):  # two epochs, two permutations
        order = epoch_order(generator, n, True, CPU)
        expected, stream = reference.source(order, False), split.source(order, False)
        for positions in batch_slices(n, b, drop_last=False):
            assert_same_tensors(expected.take(positions), stream.take(positions))
        # An epoch reads each block once, and holds no more than one block.
        assert stream.blocks_read == math.ceil(n / block_size)
        row_bytes = 4 * 4 + (4 * 3 if isinstance(loss_fn, CategoricalCrossentropy) else 8)
        assert stream.largest_block_bytes <= min(block_size, n) * row_bytes


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_block_stream_serves_any_slice(block_size, cls_dir):
    """Strided, repeated, overlapping, out-of-range and empty requests, in any order, as ``order[positions]``."""
    loss_fn = Hinge()  # float {-1, +1} targets, one column per class
    reference, split = splits_for(cls_dir, loss_fn, block_size)
    order = epoch_order(torch.Generator().manual_seed(2), len(reference), True, CPU)
    expected, stream = reference.source(order, True), split.source(order, True)
    for positions in [slice(50, 60), slice(0, 82, 3), slice(5, 70, 9), slice(75, 82), slice(10, 20), slice(10, 20), slice(40, 40), slice(-5, None), slice(0, 200)]:
        assert_same_tensors(expected.take(positions), stream.take(positions))


# ---------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("size", [1, 10, 82, 1000])
def test_chunks_cover_every_sample_once_in_file_order(size, cls_dir, reg_dir):
    for directory, loss_fn in ((cls_dir, SparseCategoricalCrossentropy()), (reg_dir, MeanSquaredError())):
        reference, split = splits_for(directory, loss_fn, block_size=7)
        chunks = list(split.chunks(size))
        assert [len(x) for x, _, _ in chunks] == [len(x) for x, _, _ in reference.chunks(size)]
        assert sum(len(x) for x, _, _ in chunks) == len(split) == len(reference)
        for expected, got in zip(reference.chunks(size), chunks, strict=True):
            assert (expected[2] is None) == (got[2] is None)
            assert_same_tensors([t for t in expected if t is not None], [t for t in got if t is not None])


def test_evaluate_equals_the_in_memory_result(cls_dir):
    loss_fn = SparseCategoricalCrossentropy()
    reference, split = splits_for(cls_dir, loss_fn, block_size=7)
    torch.manual_seed(0)
    model = MLP(in_shape=(4,), out_features=3)
    for size in (1, 16, 8192):
        (loss_a, acc_a), (loss_b, acc_b) = evaluate(model, loss_fn, reference, size), evaluate(model, loss_fn, split, size)
        assert torch.equal(loss_a, loss_b) and torch.equal(acc_a, acc_b)


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize(
    "regime",
    ["batch_size=full", "batch_size=1", "batch_size=10", "batch_size=10 micro_batch_size=3"],
    ids=["bgd", "sgd", "minibatch", "minibatch-micro"],
)
@pytest.mark.parametrize("task", ["cls", "reg"])
def test_training_on_the_memmap_gives_bit_identical_losses(regime, task, cls_dir, reg_dir, make_cfg):
    """``fit`` on the same config, once in memory and once with the memmap splits swapped in."""
    directory = cls_dir if task == "cls" else reg_dir
    data = ["dataset=file", f"dataset.path={directory / 'data.npz'}", "val_fraction=0.2", "epochs=2", "shuffle=true"]
    if task == "reg":
        data += ["model=linear", "loss=mse", "dataset.standardize_target=true", "optimizer.lr=0.05"]
    cfg = make_cfg(*data, *regime.split())

    reference, memory_logger = build_run(cfg), MemoryLogger()
    expected_summary = fit(reference, memory_logger)

    run = build_run(cfg)
    dataset_cfg = SimpleNamespace(
        path=directory, task=cfg.dataset.task, standardize=cfg.dataset.standardize,
        standardize_target=cfg.dataset.standardize_target, block_size=7,
    )
    run.train, run.val, run.dataset = memmap.load_memmap_splits(dataset_cfg, cfg.val_fraction, cfg.seed, run.loss_fn, run.device)
    logger = MemoryLogger()
    summary = fit(run, logger)

    iterations = {"full": 1, "1": 82, "10": 9}[regime.split()[0].split("=")[1]]  # 82 training samples
    assert len(logger.scalars["loss/train_iter"]) == 2 * iterations
    for tag, series in memory_logger.scalars.items():
        if not tag.startswith(TIMED_PREFIXES):  # the only tags stepped by, or holding, wall time
            assert logger.scalars[tag] == series, tag
    same = ("status", "epochs", "iterations", "samples_seen", "train_loss", "val_loss", "train_acc", "val_acc", "n_train", "n_val")
    assert {k: summary[k] for k in same} == {k: expected_summary[k] for k in same}


def test_load_memmap_splits_reads_the_config_fields(cls_dir):
    cfg = SimpleNamespace(path=str(cls_dir), task="auto", standardize=True, standardize_target=False, block_size=16)
    train, val, part = memmap.load_memmap_splits(cfg, 0.2, 0, SparseCategoricalCrossentropy(), CPU)
    assert (len(train), len(val), train.block_size, part.n_classes) == (82, 21, 16, 3)
    assert part.info["classes"] == [3, 7, 11] and part.info["source"] == str(cls_dir)
    assert memmap.load_memmap_splits(cfg, 0.0, 0, SparseCategoricalCrossentropy(), CPU)[1] is None
    with pytest.raises(ConfigError, match="dataset.block_size"):
        memmap.MemmapSplit(part, SparseCategoricalCrossentropy(), CPU, 0)


# ---------------------------------------------------------------------------------- memory
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def write_large(directory: Path, n: int, d: int, chunk: int = 200_000) -> None:
    """float32 ``X.npy`` and ``y.npy`` of ``n`` rows, written a chunk at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    X = np.lib.format.open_memmap(directory / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    y = np.lib.format.open_memmap(directory / "y.npy", mode="w+", dtype=np.float32, shape=(n,))
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        X[start : start + rows] = rng.standard_normal((rows, d), dtype=np.float32)
        y[start : start + rows] = rng.standard_normal(rows, dtype=np.float32)
        memmap._release(X)
        memmap._release(y)
    X.flush()
    y.flush()
    del X, y


def stream_epoch_peak(directory: Path, n: int, batch_size: int, block_size: int) -> tuple[float, memmap.BlockStream]:
    """Peak RSS growth (MB) while opening, standardising and streaming one shuffled epoch."""
    order = epoch_order(torch.Generator().manual_seed(0), n, True, CPU)  # 8 bytes a sample, as in memory
    if not _reset_peak_rss():
        pytest.skip("cannot reset the peak RSS on this system")
    before = _status_mb("VmRSS")
    train, _ = memmap.standardize_memmap(memmap.open_memmap_dataset(directory), None, features=True, target=True)
    stream = memmap.MemmapSplit(train, MeanSquaredError(), CPU, block_size).source(order, False)
    for positions in batch_slices(n, batch_size, drop_last=False):
        stream.take(positions)
    return _status_mb("VmHWM") - before, stream


def test_streaming_an_epoch_holds_one_block_not_the_file(tmp_path):
    """2e6 rows x 10 float32 (80 MB): a full epoch at batch 1000 with blocks of 4096 rows."""
    n, d, block = 2_000_000, 10, 4096
    write_large(tmp_path / "big", n, d)
    growth, stream = stream_epoch_peak(tmp_path / "big", n, batch_size=1000, block_size=block)
    assert stream.blocks_read == math.ceil(n / block)
    assert stream.largest_block_bytes == block * (d + 1) * 4
    assert growth < 40, f"peak RSS grew by {growth:.1f} MB over an 80 MB file"


@pytest.mark.slow
def test_streaming_a_file_larger_than_the_memory_budget(tmp_path):
    """1e7 rows x 25 float32 (1 GB): still tens of MB, not the file."""
    n, d = 10_000_000, 25
    write_large(tmp_path / "huge", n, d, chunk=500_000)
    growth, _ = stream_epoch_peak(tmp_path / "huge", n, batch_size=4096, block_size=65_536)
    assert growth < 80 + n * 8 / 2**20, f"peak RSS grew by {growth:.1f} MB over a 1 GB file"


# ---------------------------------------------------------------------------------- errors
def test_missing_directory_lists_the_paths_looked_for(tmp_path):
    with pytest.raises(DataError, match="directory not found") as e:
        memmap.open_memmap_dataset(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "X.npy") in str(e.value) and str(tmp_path / "nowhere" / "y.npy") in str(e.value)


def test_missing_file_says_which_was_found(tmp_path):
    np.save(tmp_path / "X.npy", np.ones((3, 2)))
    with pytest.raises(DataError, match="files missing") as e:
        memmap.open_memmap_dataset(tmp_path)
    assert f"{tmp_path / 'X.npy'} (found)" in str(e.value) and f"{tmp_path / 'y.npy'} (missing)" in str(e.value)


def test_a_file_instead_of_a_directory(cls_dir):
    with pytest.raises(DataError, match="is a file, not a directory"):
        memmap.open_memmap_dataset(cls_dir / "data.npz")


@pytest.mark.parametrize(
    "X,y,match",
    [
        (np.ones((4, 2)), np.ones(5), "X has 4 samples but .* has 5"),
        (np.ones((0, 2)), np.ones(0), r"empty \(0 samples\)"),
        (np.array(["a", "b"]), np.ones(2), "string dtype"),
        (np.ones((2, 2)), np.array([1 + 2j, 3j]), "complex dtype"),
        (np.ones((2, 2)), np.ones((2, 2, 2)), r"shape \(2, 2, 2\)"),
        (np.float64(3.0), np.ones(1), "scalar"),
        (np.full((3, 2), 1e39), np.ones(3), "6 non-finite value.* after conversion to float32"),
    ],
    ids=["mismatched-n", "empty", "strings", "complex", "y-3d", "x-scalar", "float32-overflow"],
)
def test_malformed_arrays_are_data_errors(X, y, match, tmp_path):
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(DataError, match=match):
        memmap.open_memmap_dataset(tmp_path)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "X.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.ones(2))
    with pytest.raises(DataError, match="object"):
        memmap.open_memmap_dataset(tmp_path)


def test_nan_is_reported_with_count_and_first_index_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(memmap, "_SCAN_BYTES", 256)  # the NaNs sit in a later block than the first
    X = np.ones((500, 3))
    X[321, 2] = X[400, 0] = np.nan
    X[450, 1] = np.inf
    y = np.ones(500)
    y[77] = np.nan
    write(tmp_path, X, y)
    with pytest.raises(DataError, match=r"'X' has 3 non-finite values .*index \(321, 2\)"):
        memmap.open_memmap_dataset(tmp_path)
    np.save(tmp_path / "X.npy", np.ones((500, 3)))
    with pytest.raises(DataError, match=r"'y' has 1 non-finite value .*index 77$"):
        memmap.open_memmap_dataset(tmp_path)


@pytest.mark.parametrize("content,match", [(b"not numpy at all", "not an .npy file"), (b"PK\x03\x04zip", "an .npz archive")])
def test_files_that_are_not_npy_arrays(content, match, tmp_path):
    (tmp_path / "X.npy").write_bytes(content)
    np.save(tmp_path / "y.npy", np.ones(2))
    with pytest.raises(DataError, match=match):
        memmap.open_memmap_dataset(tmp_path)


def test_a_truncated_npy_file(tmp_path):
    np.save(tmp_path / "X.npy", np.ones((100, 3)))
    np.save(tmp_path / "y.npy", np.ones(100))
    data = (tmp_path / "X.npy").read_bytes()
    (tmp_path / "X.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable .npy array"):
        memmap.open_memmap_dataset(tmp_path)


def test_dataset_memmap_from_the_command_line_config_equals_dataset_file(tmp_path):
    """The wired config path: dataset=memmap trains exactly like dataset=file on the same arrays."""
    from conftest import compose_cfg
    from runner.loggers import MemoryLogger
    from runner.train import build_run, fit

    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(90, 4)).astype(np.float32), np.arange(90) % 3
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "X.npy", X)
    np.save(tmp_path / "mm" / "y.npy", y)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    losses = []
    for overrides in (["dataset=memmap", f"dataset.path={tmp_path / 'mm'}", "dataset.block_size=16"],
                      ["dataset=file", f"dataset.path={tmp_path / 'd.npz'}", "dataset.standardize=false"]):
        run = build_run(compose_cfg([*overrides, "batch_size=5", "epochs=2"], tmp_path / "out"))
        logger = MemoryLogger()
        fit(run, logger)
        losses.append(logger.scalars["loss/train_iter"])
    assert losses[0] == losses[1] and len(losses[0]) == 2 * 15  # 72 training samples: ceil(72 / 5) per epoch
