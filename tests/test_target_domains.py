"""Losses meant for non-negative or one-signed targets (poisson, msle, mape) never train on
targets outside that domain: a standardised target, or raw targets that are negative
(or, for mape, cross 0), are refused with one line naming the keys; otherwise they train
to a loss no lower than the formula allows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.errors import ConfigError
from runner.loggers import MemoryLogger
from runner.losses import LOSSES
from runner.train import build_run, fit

from conftest import compose_cfg

REGRESSION_LOSSES = sorted(cls.option for cls in LOSSES.values() if not cls.needs_classes)
DOMAIN_LOSSES = {"poisson", "msle", "mape"}
RESULT_FILES = ("summary.json", "model.pt", "checkpoints")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A user's regression data: a CSV whose target goes negative, an all-positive .npz,
    and a memory-mapped set whose target goes negative."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.25  # crosses 0
    (root / "neg.csv").write_text(
        "a,b,c,y\n" + "\n".join(f"{a:.6f},{b:.6f},{c:.6f},{t:.6f}" for (a, b, c), t in zip(X, y)) + "\n"
    )
    np.savez(root / "pos.npz", X=X.astype(np.float32), y=(np.abs(y) + 1.5).astype(np.float32))
    (root / "mm").mkdir()
    np.save(root / "mm" / "X.npy", X.astype(np.float32))
    np.save(root / "mm" / "y.npy", y.astype(np.float32))
    return {"root": root, "neg_min": float(np.min(np.round(y, 6)))}


# Each data set, its overrides, and which of the domain losses it must refuse (and why:
# "standardised" or "range"). Written out, not derived from the code under test.
DATASETS = {
    "diabetes": (["dataset=diabetes"], {"poisson": "standardised", "msle": "standardised", "mape": "standardised"}),
    "diabetes_raw": (["dataset=diabetes", "dataset.standardize_target=false"], {}),
    "linreg": (["dataset=linreg", "dataset.n=60"], {"poisson": "range", "msle": "range", "mape": "range"}),
    "csv_negative": (
        ["dataset=file", "dataset.path={root}/neg.csv", "dataset.target=y"],
        {"poisson": "range", "msle": "range", "mape": "range"},
    ),
    "npz_positive": (["dataset=file", "dataset.path={root}/pos.npz"], {}),
    "memmap_negative": (
        ["dataset=memmap", "dataset.path={root}/mm", "dataset.block_size=16"],
        {"poisson": "range", "msle": "range", "mape": "range"},
    ),
}


def _poisson_floor(Y: torch.Tensor) -> float:
    """The lowest value Keras' Poisson formula can take on targets Y: at rate = y, y - y*log(y)."""
    Y = Y.double()
    return float((Y - torch.special.xlogy(Y, Y)).mean())


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("loss", REGRESSION_LOSSES)
def test_every_regression_loss_on_every_regression_dataset(loss, dataset, files, tmp_path):
    overrides, refused = DATASETS[dataset]
    overrides = [o.format(root=files["root"]) for o in overrides]
    cfg = compose_cfg([f"loss={loss}", *overrides, "optimizer.lr=1e-4", "epochs=2"], tmp_path / "run")
    if loss in refused:
        with pytest.raises(ConfigError) as info:
            build_run(cfg)
        message = str(info.value)
        assert message.startswith(f"loss='{loss}' is not allowed"), message
        if refused[loss] == "standardised":
            assert "dataset.standardize_target=true" in message and "dataset.standardize_target=false" in message
        else:
            name = overrides[0].split("=", 1)[1]
            assert f"dataset '{name}'" in message
            if dataset == "csv_negative":
                assert "neg.csv" in message and f"from {files['neg_min']:g} to " in message
        return
    run = build_run(cfg)
    summary = fit(run, MemoryLogger())
    assert summary["status"] == "done", summary
    if loss == "poisson":
        # Keras' Poisson loss leaves out log(y!): it is negative for targets above e even at
        # a perfect fit, but never below that fit's value.
        assert summary["train_loss"] >= _poisson_floor(run.train.Y) - 1e-9
        assert summary["val_loss"] >= _poisson_floor(run.val.Y) - 1e-9
    elif loss in DOMAIN_LOSSES:
        assert summary["train_loss"] >= 0 and summary["val_loss"] >= 0
    else:
        assert np.isfinite(summary["train_loss"])


def test_class_labels_are_never_standardised_so_poisson_trains_on_them(tmp_path):
    run = build_run(compose_cfg(["dataset=iris", "loss=poisson", "dataset.standardize_target=true"], tmp_path / "run"))
    assert fit(run, MemoryLogger())["status"] == "done"


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner", *overrides, "device=cpu", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )


@pytest.mark.slow  # a real sweep in processes: CI runs it under -m slow
def test_poisson_on_diabetes_is_refused_on_the_command_line(tmp_path):
    done = _cli(tmp_path, "loss=poisson", "dataset=diabetes")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: loss='poisson' is not allowed"), done.stderr
    assert "dataset.standardize_target=true" in lines[0] and "Traceback" not in done.stderr
    assert not any((tmp_path / "run" / name).exists() for name in RESULT_FILES)
    # The fix the message gives works, as typed.
    assert "To keep loss=poisson, set dataset.standardize_target=false" in lines[0]
    done = _cli(tmp_path, "loss=poisson", "dataset=diabetes", "dataset.standardize_target=false", "optimizer.lr=1e-4", "epochs=2")
    assert done.returncode == 0, done.stderr


def test_negative_targets_of_a_users_file_are_refused_on_the_command_line(files, tmp_path):
    path = files["root"] / "neg.csv"
    done = _cli(tmp_path, "loss=msle", "dataset=file", f"dataset.path={path}", "dataset.target=y")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: loss='msle' is not allowed"), done.stderr
    assert f"dataset 'file' ({path})" in lines[0] and f"range from {files['neg_min']:g} to" in lines[0]
    assert not any((tmp_path / "run" / name).exists() for name in RESULT_FILES)
