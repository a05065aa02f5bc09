"""Every option of every config group composes, builds, and takes a real training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.errors import ConfigError
from runner.loggers import MemoryLogger
from runner.train import build_run, fit

from conftest import CONF_DIR, write_cifar_like, write_mnist_like

REGRESSION_DATASETS = {"diabetes", "linreg"}
REGRESSION_LOSSES = {"mse", "mae", "mape", "msle", "poisson", "cosine_similarity", "huber", "log_cosh"}
# Losses for positive targets train on diabetes' raw target (25..346; linreg's crosses 0),
# at an lr small enough for a Poisson rate of that size.
POSITIVE_TARGET_LOSSES = {"mape", "msle", "poisson"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert options("dataset") == sorted(
        ["digits", "iris", "wine", "breast_cancer", "diabetes", "linreg", "moons", "blobs", "spirals",
         "file", "memmap", "mnist", "fashion_mnist", "kmnist", "cifar10", "python"]
    )
    assert options("model") == ["cnn", "custom", "linear", "logistic", "mlp"]
    assert options("optimizer") == sorted(["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw", "lars"])
    assert options("scheduler") == sorted(["none", "step", "exponential", "cosine", "warmup_cosine", "plateau"])
    assert options("regime") == ["bgd", "minibatch", "sgd"]
    assert len(options("loss")) == 15


@pytest.fixture
def data_files(tmp_path):
    """Overrides pointing the file-based datasets at tiny files in their real formats."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "data.npz"
    np.savez(npz, X=rng.normal(size=(60, 3)).astype(np.float32), y=np.arange(60) % 3)
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "X.npy", rng.normal(size=(60, 3)).astype(np.float32))
    np.save(tmp_path / "mm" / "y.npy", np.arange(60) % 3)
    write_mnist_like(tmp_path / "idx")
    write_cifar_like(tmp_path / "cifar")
    return {
        "file": [f"dataset.path={npz}"],
        "memmap": [f"dataset.path={tmp_path / 'mm'}", "dataset.block_size=7"],
        "mnist": [f"dataset.root={tmp_path / 'idx'}"],
        "fashion_mnist": [f"dataset.root={tmp_path / 'idx'}"],
        "kmnist": [f"dataset.root={tmp_path / 'idx'}"],
        "cifar10": [f"dataset.root={tmp_path / 'cifar'}"],
        "python": ["dataset.fn=test_configs.user_data"],
    }


def user_data() -> tuple[np.ndarray, np.ndarray]:
    """dataset=python's function, as a user writes one (this module is importable as test_configs)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 3)), np.arange(60) % 3


class UserModel(torch.nn.Module):
    """model=custom's class, as a user writes one: not a chain of layers."""

    def __init__(self, in_shape, out_features, width=8):
        super().__init__()
        self.hidden = torch.nn.Linear(int(np.prod(in_shape)), width)
        self.out = torch.nn.Linear(width, out_features)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.flatten(1))))


MODEL_KEYS = {"custom": ["model._target_=test_configs.UserModel"]}


def train_briefly(cfg):
    """Build the run and train it for its (one) epoch; return the run and what it logged."""
    run = build_run(cfg)
    before = [p.detach().clone() for p in run.model.parameters()]
    logger = MemoryLogger()
    summary = fit(run, logger)
    moved = any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    return run, summary, logger, moved


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_option_builds_and_trains(option, make_cfg, data_files):
    loss = ["loss=mse"] if option in REGRESSION_DATASETS else []
    run, summary, _, moved = train_briefly(make_cfg(f"dataset={option}", *loss, *data_files.get(option, [])))
    assert summary["status"] == "done" and moved
    assert summary["n_train"] + summary["n_val"] > 0
    assert summary["dataset"]["task"] == ("regression" if option in REGRESSION_DATASETS else "classification")


@pytest.mark.parametrize("option", options("model"))
def test_every_model_option_builds_and_trains(option, make_cfg):
    run, summary, _, moved = train_briefly(make_cfg(f"model={option}", *MODEL_KEYS.get(option, [])))
    assert summary["status"] == "done" and moved
    out = run.model(run.train.X[:5])
    assert out.shape == (5, 10)  # digits: ten classes


@pytest.mark.parametrize("option", options("loss"))
def test_every_loss_option_builds_and_trains(option, make_cfg):
    if option != "mape":  # MAPE divides by the target: refused on one-hot targets (test_errors)
        run, summary, logger, moved = train_briefly(make_cfg(f"loss={option}", "dataset=iris"))
        assert summary["status"] == "done" and moved
        assert np.isfinite(summary["train_loss"]) and summary["train_acc"] is not None
    if option in POSITIVE_TARGET_LOSSES:
        data = ["dataset=diabetes", "dataset.standardize_target=false", "optimizer.lr=1e-4"]
        run, summary, _, moved = train_briefly(make_cfg(f"loss={option}", *data))
        assert summary["status"] == "done" and moved and summary["train_acc"] is None
    elif option in REGRESSION_LOSSES:
        run, summary, _, moved = train_briefly(make_cfg(f"loss={option}", "dataset=linreg", "dataset.n=60"))
        assert summary["status"] == "done" and moved and summary["train_acc"] is None


@pytest.mark.parametrize("delta", [0.25, 3])
def test_huber_delta_composes_and_reaches_the_loss(delta, make_cfg):
    run, summary, _, _ = train_briefly(make_cfg("loss=huber", f"loss.delta={delta}", "dataset=linreg", "dataset.n=60"))
    assert run.loss_fn.delta == delta and summary["status"] == "done"


def test_huber_delta_must_be_positive(make_cfg):
    with pytest.raises(ConfigError, match=r"^loss\.delta=0\.0 is not allowed: a finite number > 0$"):
        build_run(make_cfg("loss=huber", "loss.delta=0", "dataset=linreg", "dataset.n=60"))


@pytest.mark.parametrize("option", options("optimizer"))
def test_every_optimizer_option_builds_and_trains(option, make_cfg):
    run, summary, _, moved = train_briefly(make_cfg(f"optimizer={option}", "dataset=iris"))
    assert summary["status"] == "done" and moved
    assert type(run.optimizer).__name__ == run.cfg.optimizer._target_.rsplit(".", 1)[-1]


@pytest.mark.parametrize("option", options("scheduler"))
@pytest.mark.parametrize("interval", ["epoch", "iteration"])
def test_every_scheduler_option_builds_and_trains(option, interval, make_cfg):
    if option == "plateau" and interval == "iteration":
        pytest.skip("plateau is epoch-only (tested as an error in test_errors)")
    run, summary, logger, _ = train_briefly(
        make_cfg(f"scheduler={option}", f"scheduler.interval={interval}", "dataset=iris", "epochs=3")
    )
    assert summary["status"] == "done"
    assert len(logger.scalars["lr"]) == summary["iterations"]


@pytest.mark.parametrize("option,batch_size", [("bgd", 120), ("sgd", 1), ("minibatch", 32)])
def test_every_regime_sets_its_batch_size(option, batch_size, make_cfg):
    run = build_run(make_cfg(f"regime={option}", "dataset=iris"))
    assert run.batch_size == batch_size and run.regime == option
