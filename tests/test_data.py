"""Datasets as the runner sees them: shapes, tasks, splits, standardisation, file datasets."""

from __future__ import annotations

import numpy as np
import pytest

from runner.data import Dataset, load_dataset, split, standardize
from runner.train import build_run

from conftest import compose_cfg, write_mnist_like


@pytest.mark.parametrize(
    "name,n,feature_shape,task,n_classes",
    [
        ("digits", 1797, (1, 8, 8), "classification", 10),
        ("iris", 150, (4,), "classification", 3),
        ("wine", 178, (13,), "classification", 3),
        ("breast_cancer", 569, (30,), "classification", 2),
        ("diabetes", 442, (10,), "regression", None),
        ("linreg", 1000, (5,), "regression", None),
        ("moons", 1000, (2,), "classification", 2),
        ("blobs", 1000, (2,), "classification", 3),
        ("spirals", 1000, (2,), "classification", 2),
    ],
)
def test_builtin_datasets(name, n, feature_shape, task, n_classes):
    ds = load_dataset(compose_cfg([f"dataset={name}"]).dataset)
    assert (len(ds), ds.feature_shape, ds.task, ds.n_classes) == (n, feature_shape, task, n_classes)
    assert ds.X.dtype == np.float32 and np.isfinite(ds.X).all()
    assert ds.y.dtype == (np.int64 if task == "classification" else np.float32)


def test_linreg_records_true_weights_and_is_seeded():
    a = load_dataset(compose_cfg(["dataset=linreg", "dataset.d=3", "dataset.noise=0"]).dataset)
    w, b = np.array(a.info["true_weights"]), a.info["true_bias"]
    np.testing.assert_allclose(a.y[:, 0], a.X @ w + b, rtol=1e-4, atol=1e-4)
    again = load_dataset(compose_cfg(["dataset=linreg", "dataset.d=3", "dataset.noise=0"]).dataset)
    other = load_dataset(compose_cfg(["dataset=linreg", "dataset.d=3", "dataset.seed=1"]).dataset)
    assert np.array_equal(a.X, again.X) and not np.array_equal(a.X, other.X)


def test_split_is_seeded_disjoint_and_keeps_file_order():
    ds = Dataset(np.arange(20, dtype=np.float32)[:, None], np.arange(20) % 2, "classification", 2)
    train, val = split(ds, 0.25, seed=0)
    assert len(train) == 15 and len(val) == 5
    assert set(train.X[:, 0]) | set(val.X[:, 0]) == set(range(20)) and not set(train.X[:, 0]) & set(val.X[:, 0])
    assert list(train.X[:, 0]) == sorted(train.X[:, 0])  # file order within the training part
    same_train, _ = split(ds, 0.25, seed=0)
    other_train, _ = split(ds, 0.25, seed=1)
    assert np.array_equal(train.X, same_train.X) and not np.array_equal(train.X, other_train.X)


def test_standardisation_uses_training_statistics_only():
    train = Dataset(np.array([[0.0, 5.0], [2.0, 5.0]], np.float32), np.zeros((2, 1), np.float32), "regression")
    val = Dataset(np.array([[4.0, 7.0]], np.float32), np.ones((1, 1), np.float32), "regression")
    t, v = standardize(train, val, features=True, target=False)
    np.testing.assert_allclose(t.X, [[-1, 0], [1, 0]])  # constant column centred, not divided by 0
    np.testing.assert_allclose(v.X, [[3, 2]])  # (4 - 1) / 1 and (7 - 5) / 1
    t, v = standardize(train, val, features=False, target=True)
    np.testing.assert_allclose(t.X, train.X) and np.testing.assert_allclose(v.y, [[1]])
    assert t.info["target_mean"] == [0.0] and t.info["target_std"] == [1.0]


def test_idx_dataset_in_torchvision_layout_trains_a_cnn(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_mnist_like(raw, n=40, size=8)
    cfg = compose_cfg(["dataset=fashion_mnist", f"dataset.root={tmp_path}", "model=cnn", "batch_size=8"], tmp_path / "r")
    run = build_run(cfg)
    assert run.train.X.shape[1:] == (1, 8, 8) and float(run.train.X.max()) <= 1.0
    assert run.iterations_per_epoch == 4  # 32 training images / 8


def test_csv_file_dataset_regression_and_classification(tmp_path):
    path = tmp_path / "houses.csv"
    path.write_text("rooms,area,price\n" + "\n".join(f"{i % 5},{i * 1.5},{i * 2.25}" for i in range(30)) + "\n")
    cfg = compose_cfg(["dataset=file", f"dataset.path={path}", "dataset.target=price", "loss=mse"])
    ds = load_dataset(cfg.dataset)
    assert ds.task == "regression" and ds.feature_shape == (2,) and ds.y[3, 0] == pytest.approx(6.75)
    cfg = compose_cfg(["dataset=file", f"dataset.path={path}", "dataset.target=rooms"])
    ds = load_dataset(cfg.dataset)
    assert ds.task == "classification" and ds.n_classes == 5
    forced = compose_cfg(["dataset=file", f"dataset.path={path}", "dataset.target=rooms", "dataset.task=regression"])
    assert load_dataset(forced.dataset).task == "regression"


def test_npz_class_labels_are_remapped_to_indices(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros((6, 2), np.float32), y=np.array([3, 7, 3, 9, 7, 9]))
    ds = load_dataset(compose_cfg(["dataset=file", f"dataset.path={path}"]).dataset)
    assert ds.y.tolist() == [0, 1, 0, 2, 1, 2] and ds.info["classes"] == [3, 7, 9]
