"""``dataset=python dataset.fn=pkg.module.function``: a user's function's data, checked as file data is."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.cli import run_cli
from runner.data import python as pydata
from runner.data.files import load_npz
from runner.errors import ConfigError, DataError
from runner.train import build_run, train

from test_fuzz import _write_data, data_files


@pytest.fixture
def user_module(monkeypatch):
    """A module ``userdata`` whose ``data()`` returns ``userdata.value`` (what the test puts there)."""
    module = types.ModuleType("userdata")
    module.value = None
    module.data = lambda: module.value
    module.not_callable = 3
    module.Sample = tuple  # a class: callable, but not the function dataset.fn takes
    monkeypatch.setitem(sys.modules, "userdata", module)
    return module


def _npz_arrays(tmp_path, spec) -> tuple[np.ndarray, np.ndarray]:
    with np.load(_write_data(tmp_path, spec), allow_pickle=True) as archive:
        return archive["X"], archive["y"]


# The fuzz strategy's object X (any shape, empty included; it never makes an object y), as each path words it.
OBJECT_IN_FILE = "array 'X' has object dtype (pickled Python objects), which is not loaded for security; store numeric arrays"
OBJECT_RETURNED = "array 'X' has object (arbitrary Python objects) dtype object; expected integers, floats or bools"


@settings(max_examples=60, deadline=None)
@given(data_files().filter(lambda spec: spec["kind"] == "npz"), st.sampled_from(["tuple", "list", "torch"]))
def test_the_function_s_arrays_pass_or_fail_as_the_same_npz_file_does(tmp_path_factory, spec, container):
    """The fuzz strategy's npz files: their arrays returned by a function get the file's verdict."""
    tmp = tmp_path_factory.mktemp("npz")
    path = _write_data(tmp, spec)
    with np.load(path, allow_pickle=True) as archive:
        X, y = archive["X"], archive["y"]
    module = types.ModuleType("userdata_fuzz")
    # Lists of numbers (an empty list has no shape to keep, so empty arrays stay arrays).
    returned = (X.tolist(), y.tolist()) if container == "list" and X.dtype.kind in "biuf" and X.size else (X, y)
    if container == "torch" and X.dtype.kind in "biuf" and X.dtype != np.float64:
        returned = (torch.as_tensor(X), torch.as_tensor(y))
    module.data = lambda: returned
    sys.modules["userdata_fuzz"] = module
    try:
        try:
            want = load_npz(path)
        except DataError as err:
            with pytest.raises(DataError) as got:
                pydata.load("userdata_fuzz.data")
            if "object" in err.problem:
                # The file is refused unread for holding pickled objects (loading it could run code);
                # the function's object array is already in memory, so it is refused for its dtype.
                assert err.problem == OBJECT_IN_FILE
                assert got.value.problem == OBJECT_RETURNED
            else:
                assert err.problem == got.value.problem  # the same words, naming the function instead of the file
            assert str(got.value).startswith("userdata_fuzz.data(): ")
            return
        (gX, gy), val = pydata.load("userdata_fuzz.data")
        assert val is None
        np.testing.assert_array_equal(gX, want[0])
        np.testing.assert_array_equal(gy, want[1])
        assert gX.dtype == np.float32
    finally:
        del sys.modules["userdata_fuzz"]


@pytest.mark.parametrize(
    "value, says",
    [
        ((np.zeros((4, 2)), np.zeros(5)), "X has 4 samples but y has 5; they must match"),
        ((np.array([[1.0, np.nan]]), np.zeros(1)), "array 'X' has 1 non-finite value (NaN or inf); the first is at index (0, 1)"),
        ((np.zeros(4), np.zeros(4)), "array 'X' has shape (4,); expected (N, features...)"),
        ((np.zeros((0, 2)), np.zeros(0)), "X and y are empty (0 samples)"),
        ((np.array([["a"]]), np.zeros(1)), "array 'X' has string dtype"),
        ((np.zeros((2, 2)),), "returned a tuple of 1; expected (X, y), (X_train, y_train, X_val, y_val)"),
        ({"X": 1}, "returned a dict; expected"),
        ((np.zeros((4, 2)), np.zeros(4), np.zeros((2, 3)), np.zeros(2)), "the validation part's shapes (2, 3), (2,) do not match"),
        ((np.zeros((4, 2)), np.zeros(4), np.zeros((2, 2)), np.full(2, np.inf)), "array 'y' has 2 non-finite values"),
    ],
)
def test_bad_returns_are_refused_like_file_data(value, says, user_module):
    user_module.value = value
    with pytest.raises(DataError, match="^userdata.data\\(\\)") as err:
        pydata.load("userdata.data")
    assert says in str(err.value)


@pytest.mark.parametrize("shape", [(3, 2), (0, 2), (3, 1, 2, 2)])
def test_an_object_array_is_refused_for_its_dtype_and_never_converted(shape, user_module, tmp_path):
    """Objects that would convert to numbers (floats here) are still refused, for the dtype, as the
    same arrays in an npz file are (there, unread): no guessing what a column of objects means."""
    X = np.ones(shape).astype(object)
    user_module.value = (X, np.zeros(shape[0]))
    with pytest.raises(DataError) as got:
        pydata.load("userdata.data")
    assert str(got.value) == f"userdata.data(): {OBJECT_RETURNED}"
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(shape[0]))
    with pytest.raises(DataError) as err:
        load_npz(tmp_path / "d.npz")
    assert err.value.problem == OBJECT_IN_FILE


@pytest.mark.parametrize(
    "target, says",
    [
        ("userdata.not_callable", " (userdata.not_callable is an int, not a function)"),
        ("userdata.Sample", " (userdata.Sample is a type, not a function)"),
        ("userdata.nothing", " (userdata has no attribute nothing)"),
        ("no_such_module_here.data", " (importing no_such_module_here failed: ModuleNotFoundError: No module named 'no_such_module_here')"),
        ("data", ""),
    ],
)
def test_a_target_that_is_not_a_function_is_refused(target, says, user_module):
    with pytest.raises(ConfigError) as err:
        pydata.load(target)
    assert str(err.value) == f"dataset.fn={target!r} is not allowed: {pydata.ALLOWED}{says}"


def test_through_the_cli_a_refusal_is_one_line_and_writes_nothing(user_module, tmp_path, capsys):
    user_module.value = (np.zeros((4, 2)), np.zeros(5))
    out = tmp_path / "run"
    assert run_cli(["dataset=python", "dataset.fn=userdata.data", "progress=false", f"hydra.run.dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err == "Error: userdata.data(): X has 4 samples but y has 5; they must match\n"
    assert not out.exists()


def test_a_function_that_raises_is_one_line(user_module, tmp_path, capsys):
    def broken():
        raise OSError("no such file: /data/x.bin\nsecond line")

    user_module.data = broken
    out = tmp_path / "run"
    assert run_cli(["dataset=python", "dataset.fn=userdata.data", "progress=false", f"hydra.run.dir={out}"]) == 2
    assert capsys.readouterr().err == "Error: userdata.data(): raised OSError: no such file: /data/x.bin\n"
    assert not out.exists()


def test_x_y_trains_with_val_fraction_and_classes_from_labels(user_module, make_cfg):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    user_module.value = (X, (X[:, 0] > 0).astype(int) * 7)  # labels 0 and 7: two classes
    run = build_run(make_cfg("dataset=python", "dataset.fn=userdata.data", "val_fraction=0.2"))
    assert (len(run.train), len(run.val)) == (40, 10)
    assert run.model[-1].out_features == 2


def test_four_arrays_keep_their_own_validation_part(user_module, make_cfg):
    rng = np.random.default_rng(1)
    Xt, Xv = rng.normal(size=(30, 2)), rng.normal(size=(7, 2))
    user_module.value = (Xt, rng.normal(size=30), Xv, rng.normal(size=7))  # regression
    cfg = make_cfg("dataset=python", "dataset.fn=userdata.data", "loss=mse", "dataset.standardize=false", "batch_size=full")
    run = build_run(cfg)
    assert (len(run.train), len(run.val)) == (30, 7)  # val_fraction (0.2) does not split it again
    torch.testing.assert_close(run.val.X.cpu(), torch.as_tensor(Xv, dtype=torch.float32))
    assert train(cfg)["status"] == "done"


def test_a_map_style_torch_dataset_is_stacked(user_module, make_cfg):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 1, 4, 4, generator=g), torch.arange(20) % 3
    user_module.value = torch.utils.data.TensorDataset(X, y)
    run = build_run(make_cfg("dataset=python", "dataset.fn=userdata.data", "model=cnn", "model.channels=[2]", "val_fraction=0", "dataset.standardize=false", "batch_size=4"))
    assert run.train.X.shape == (20, 1, 4, 4)
    torch.testing.assert_close(run.train.X.cpu(), X)
