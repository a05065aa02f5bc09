"""Fair comparisons: the same budget in epochs, samples, updates or seconds, and lr scaling."""

from __future__ import annotations

import math

import pytest

from runner.budget import Plan, make_plan
from runner.errors import ConfigError
from runner.loggers import MemoryLogger
from runner.build import build_run, scaled_lr
from runner.train import fit

LINREG_100 = ("dataset=linreg", "dataset.n=100", "model=linear", "loss=mse", "val_fraction=0")


def test_plans():
    sizes = [32, 32, 32, 4]  # N = 100, B = 32
    assert make_plan("epochs", None, 3, sizes) == Plan((4, 4, 4))
    assert make_plan("updates", 10, 99, sizes) == Plan((4, 4, 2))
    assert make_plan("samples", 200, 99, sizes) == Plan((4, 4))
    over = make_plan("samples", 233, 99, sizes)  # 200 + 32 < 233 <= 200 + 64
    assert over.iterations == (4, 4, 2)
    assert over.deviation == (
        "budget=samples budget_amount=233: the run processes 264 samples (31 more), because an update uses a "
        "whole batch (batch size 32); it stops at the first update that reaches the amount"
    )
    assert make_plan("seconds", 1.5, 99, sizes) == Plan(None, 1.5)


@pytest.mark.parametrize(
    "budget,amount,error_key",
    [("epochs", 5, "budget_amount"), ("samples", None, "budget_amount"), ("updates", 2.5, "budget_amount"),
     ("seconds", -1, "budget_amount"), ("flops", 1, "budget")],
)
def test_bad_budgets(budget, amount, error_key):
    with pytest.raises(ConfigError) as info:
        make_plan(budget, amount, 1, [1])
    assert info.value.key == error_key


@pytest.mark.parametrize("batch_size", [1, 10, "full"])
def test_sample_budget_gives_every_batch_size_the_same_samples(batch_size, make_cfg):
    run = build_run(make_cfg(*LINREG_100, f"batch_size={batch_size}", "budget=samples", "budget_amount=300"))
    summary = fit(run, MemoryLogger())
    assert summary["samples_seen"] == 300 and summary["spent"]["epochs"] == 3.0
    b = 100 if batch_size == "full" else batch_size
    assert summary["iterations"] == math.ceil(100 / b) * 3


@pytest.mark.parametrize("batch_size,epochs_run", [(1, 1), (10, 3), ("full", 25)])
def test_update_budget_gives_every_batch_size_the_same_updates(batch_size, epochs_run, make_cfg):
    run = build_run(make_cfg(*LINREG_100, f"batch_size={batch_size}", "budget=updates", "budget_amount=25"))
    logger = MemoryLogger()
    summary = fit(run, logger)
    assert summary["iterations"] == 25 and summary["epochs"] == epochs_run
    assert [s for s, _ in logger.scalars["loss/train_iter"]] == list(range(25))
    # the partial last epoch still gets its epoch-level point, at its exact sample count
    assert logger.scalars["vs_samples/loss/train_full"][-1][0] == summary["samples_seen"]


def test_time_budget_stops_training_and_records_all_four_units(make_cfg):
    run = build_run(make_cfg(*LINREG_100, "batch_size=1", "budget=seconds", "budget_amount=0.3"))
    summary = fit(run, MemoryLogger())
    spent = summary["spent"]
    assert 0.3 <= spent["seconds"] < 2.0
    assert spent["updates"] == summary["iterations"] > 0 and spent["samples"] == summary["samples_seen"]
    assert spent["epochs"] == pytest.approx(summary["samples_seen"] / 100)


def test_cosine_needs_a_known_run_length(make_cfg):
    with pytest.raises(ConfigError, match="scheduler"):
        build_run(make_cfg(*LINREG_100, "scheduler=cosine", "budget=seconds", "budget_amount=1"))
    run = build_run(make_cfg(*LINREG_100, "scheduler=cosine", "scheduler.interval=iteration", "batch_size=10",
                             "budget=updates", "budget_amount=15", "optimizer.lr=0.1"))
    logger = MemoryLogger()
    fit(run, logger)
    lrs = [v for _, v in logger.scalars["lr"]]
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 14 / 15)))


@pytest.mark.parametrize("rule,expected", [("none", 0.1), ("linear", 0.4), ("sqrt", 0.2)])
def test_lr_scaling(rule, expected, make_cfg):
    assert scaled_lr(0.1, rule, 128, 32) == pytest.approx(expected)
    run = build_run(make_cfg(*LINREG_100, "batch_size=64", f"lr_scaling={rule}", "lr_scaling_base_batch=16",
                             "optimizer.lr=0.1"))
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(expected) == run.lr


def test_bad_lr_scaling(make_cfg):
    with pytest.raises(ConfigError, match="lr_scaling"):
        build_run(make_cfg(*LINREG_100, "lr_scaling=cubic"))


def test_a_sample_budget_not_met_exactly_says_so_in_the_log_and_summary(make_cfg, caplog):
    """BGD on 100 samples with budget_amount=250 processes 300: stated, never silent."""
    run = build_run(make_cfg(*LINREG_100, "batch_size=full", "budget=samples", "budget_amount=250"))
    summary = fit(run, MemoryLogger())
    assert summary["samples_seen"] == 300
    note = "budget=samples budget_amount=250: the run processes 300 samples (50 more), because an update uses a whole batch (batch size 100)"
    assert any(w.startswith(note) for w in summary["warnings"])
    assert any(note in record.getMessage() for record in caplog.records)
