"""The training loop's contract: exact counts, logged values, reproducibility, outputs."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from runner.loggers import MemoryLogger
from runner.loop import batch_slices, epoch_order, iterations_per_epoch
from runner.train import build_run, fit, train

from conftest import read_scalars

# linreg with n=103 and no validation: 103 training samples, a prime, so every
# batch size below leaves a partial last batch.
LINREG_103 = ("dataset=linreg", "dataset.n=103", "model=linear", "loss=mse", "val_fraction=0")


@pytest.mark.parametrize(
    "batch_size,drop_last,expected",
    [
        ("full", False, 1),  # BGD: exactly one update per epoch
        ("full", True, 1),
        (1, False, 103),  # SGD: exactly N updates per epoch
        (1, True, 103),
        (10, False, 11),  # mini-batch: ceil(103 / 10)
        (10, True, 10),  # floor(103 / 10)
        (32, False, 4),
        (32, True, 3),
        (103, False, 1),
    ],
)
def test_iterations_per_epoch_are_exact(batch_size, drop_last, expected, make_cfg):
    run = build_run(make_cfg(*LINREG_103, f"batch_size={batch_size}", f"drop_last={drop_last}", "epochs=2"))
    assert run.iterations_per_epoch == expected
    logger = MemoryLogger()
    summary = fit(run, logger)
    assert summary["iterations"] == 2 * expected
    steps = [step for step, _ in logger.scalars["loss/train_iter"]]
    assert steps == list(range(2 * expected))
    b = 103 if batch_size == "full" else batch_size
    assert summary["samples_seen"] == 2 * (expected * b if drop_last else 103)


def test_batch_slices_cover_each_sample_once():
    slices = batch_slices(10, 4, drop_last=False)
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.start, s.stop) for s in batch_slices(10, 4, drop_last=True)] == [(0, 4), (4, 8)]
    assert iterations_per_epoch(100, 16, False) == 7 and iterations_per_epoch(100, 16, True) == 6


def test_epoch_order_is_a_seeded_fresh_permutation_each_epoch():
    gen = torch.Generator().manual_seed(3)
    first, second = epoch_order(gen, 50, True, torch.device("cpu")), epoch_order(gen, 50, True, torch.device("cpu"))
    assert sorted(first.tolist()) == list(range(50)) and not torch.equal(first, second)
    again = torch.Generator().manual_seed(3)
    assert torch.equal(epoch_order(again, 50, True, torch.device("cpu")), first)
    assert epoch_order(gen, 5, False, torch.device("cpu")).tolist() == [0, 1, 2, 3, 4]


def test_sgd_first_update_uses_the_first_sample_of_the_permutation(make_cfg):
    """The logged loss of iteration 0 is the initial model's loss on sample order[0]."""
    cfg = make_cfg(*LINREG_103, "batch_size=1")
    run = build_run(cfg)
    order = epoch_order(torch.Generator().manual_seed(cfg.seed), 103, True, torch.device("cpu"))
    with torch.no_grad():
        x, y = run.train.X[order[:1]], run.train.Y[order[:1]]
        expected = float(((run.model(x) - y) ** 2).mean())
    logger = MemoryLogger()
    fit(run, logger)
    assert logger.scalars["loss/train_iter"][0] == (0, pytest.approx(expected, rel=1e-6))


def test_shuffle_false_trains_in_file_order(make_cfg):
    cfg = make_cfg(*LINREG_103, "batch_size=1", "shuffle=false")
    run = build_run(cfg)
    with torch.no_grad():
        expected = float(((run.model(run.train.X[:1]) - run.train.Y[:1]) ** 2).mean())
    logger = MemoryLogger()
    fit(run, logger)
    assert logger.scalars["loss/train_iter"][0][1] == pytest.approx(expected, rel=1e-6)


def test_bgd_epoch_loss_lags_one_update_and_train_full_does_not(make_cfg):
    """Under BGD, loss/train_epoch of epoch e is the loss *before* that epoch's update,
    i.e. loss/train_full of epoch e-1; loss/train_full is measured after the update."""
    run = build_run(make_cfg(*LINREG_103, "regime=bgd", "epochs=5", "optimizer.lr=0.1"))
    logger = MemoryLogger()
    fit(run, logger)
    epoch_loss = [v for _, v in logger.scalars["loss/train_epoch"]]
    full_loss = [v for _, v in logger.scalars["loss/train_full"]]
    iter_loss = [v for _, v in logger.scalars["loss/train_iter"]]
    assert_close(epoch_loss, iter_loss)  # one batch per epoch
    # full_loss[0] is epoch 0, the initial weights: the loss the first update starts from.
    assert_close(epoch_loss, full_loss[:-1], rtol=1e-5, atol=1e-7)
    assert all(b < a for a, b in zip(full_loss, full_loss[1:]))  # gradient descent on a convex loss


def test_epoch_loss_is_the_sample_weighted_mean_of_batch_losses(make_cfg):
    run = build_run(make_cfg(*LINREG_103, "batch_size=10"))
    logger = MemoryLogger()
    fit(run, logger)
    batch_losses = np.array([v for _, v in logger.scalars["loss/train_iter"]])
    sizes = np.array([10] * 10 + [3])
    assert logger.scalars["loss/train_epoch"][0][1] == pytest.approx(float((batch_losses * sizes).sum() / 103))


def test_lr_is_logged_per_iteration_as_the_schedule_sets_it(make_cfg):
    run = build_run(
        make_cfg(*LINREG_103, "batch_size=50", "epochs=3", "scheduler=exponential", "scheduler.gamma=0.5",
                 "scheduler.interval=iteration", "optimizer.lr=0.2")
    )
    logger = MemoryLogger()
    fit(run, logger)
    assert_close([v for _, v in logger.scalars["lr"]], [0.2 * 0.5**k for k in range(9)])
    per_epoch = build_run(make_cfg(*LINREG_103, "batch_size=50", "epochs=3", "scheduler=step",
                                   "scheduler.step_size=1", "scheduler.gamma=0.1", "optimizer.lr=1.0"))
    logger = MemoryLogger()
    fit(per_epoch, logger)
    assert_close([v for _, v in logger.scalars["lr"]], [1.0] * 3 + [0.1] * 3 + [0.01] * 3)


def test_grad_norm_is_the_norm_of_the_gradient_each_update_used(make_cfg):
    cfg = make_cfg(*LINREG_103, "regime=bgd", "shuffle=false")
    run = build_run(cfg)
    reference = copy.deepcopy(run.model)  # its own .grad tensors: the run's buffer stays untouched
    reference.zero_grad()
    run.loss_fn(reference(run.train.X), run.train.Y).backward()
    expected = math.sqrt(sum(float((p.grad**2).sum()) for p in reference.parameters()))
    logger = MemoryLogger()
    fit(run, logger)
    assert logger.scalars["update/grad_norm"][0][1] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop", "adagrad", "lars"])
def test_gradients_stay_in_the_flat_buffer_through_training(optimizer, make_cfg):
    run = build_run(make_cfg("dataset=iris", "batch_size=16", f"optimizer={optimizer}"))
    grads = run.step.args[3]
    fit(run, MemoryLogger())
    assert grads.attached() and float(grads.norm()) > 0
    assert torch.equal(grads.flat, torch.cat([p.grad.reshape(-1) for p in run.model.parameters()]))


def test_linreg_recovers_the_true_weights(make_cfg):
    cfg = make_cfg("dataset=linreg", "dataset.noise=0.01", "model=linear", "loss=mse", "regime=bgd",
                   "epochs=300", "optimizer.lr=0.1", "val_fraction=0")
    run = build_run(cfg)
    fit(run, MemoryLogger())
    linear = run.model[1]
    assert_close(linear.weight.detach().double().squeeze(0), torch.tensor(run.dataset.info["true_weights"], dtype=torch.float64), atol=5e-3, rtol=0)
    assert linear.bias.item() == pytest.approx(run.dataset.info["true_bias"], abs=5e-3)


def test_reruns_are_bit_identical(make_cfg, tmp_path):
    overrides = ("dataset=iris", "epochs=3", "batch_size=8")
    first = train(make_cfg(*overrides, output_dir=tmp_path / "a"))
    second = train(make_cfg(*overrides, output_dir=tmp_path / "b"))
    losses_a, losses_b = read_scalars(tmp_path / "a"), read_scalars(tmp_path / "b")
    assert [v for _, v in losses_a["loss/train_iter"]] == [v for _, v in losses_b["loss/train_iter"]]
    weights_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    weights_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert first["train_loss"] == second["train_loss"]
    third = train(make_cfg(*overrides, "seed=1", output_dir=tmp_path / "c"))
    assert third["train_loss"] != first["train_loss"]


def test_run_directory_contract(make_cfg, tmp_path):
    """tb/ events, summary.json and model.pt, with the documented tags and keys."""
    out = tmp_path / "run"
    summary = train(make_cfg("dataset=iris", "epochs=2", "batch_size=16", output_dir=out))
    ipe = math.ceil(120 / 16)
    scalars = read_scalars(out)
    assert [s for s, _ in scalars["loss/train_iter"]] == list(range(2 * ipe))
    assert [s for s, _ in scalars["lr"]] == list(range(2 * ipe))
    assert [s for s, _ in scalars["update/grad_norm"]] == list(range(2 * ipe))
    # Evaluations start at epoch 0 (the initial weights, at iteration, sample and time 0);
    # the mean of an epoch's batch losses exists from epoch 1.
    for tag in ("loss/train_epoch", "loss/train_full", "loss/val", "metric/acc/train", "metric/acc/val"):
        first = 1 if tag == "loss/train_epoch" else 0
        assert [s for s, _ in scalars[tag]] == [0, 1, 2][first:], tag
        assert [s for s, _ in scalars[f"vs_iteration/{tag}"]] == [0, ipe, 2 * ipe][first:]
        assert [s for s, _ in scalars[f"vs_samples/{tag}"]] == [0, 120, 240][first:]
        assert len(scalars[f"vs_time_ms/{tag}"]) == 3 - first
        assert first == 1 or scalars[f"vs_time_ms/{tag}"][0][0] == 0
    assert scalars["loss/train_full"][0][1] == pytest.approx(summary["initial_train_loss"], rel=1e-6)
    assert scalars["loss/train_full"][-1][1] == pytest.approx(summary["train_loss"], rel=1e-6)
    assert scalars["metric/acc/val"][-1][1] == pytest.approx(summary["val_acc"], rel=1e-6)

    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("status", "epochs", "iterations", "iterations_per_epoch", "samples_seen", "train_loss", "val_loss",
                "train_acc", "val_acc", "seconds_per_epoch", "device", "torch_version", "seed", "initial_train_loss", "loss_grew", "warnings"):
        assert key in on_disk, key
    assert on_disk["status"] == "done" and on_disk["epochs"] == 2 and on_disk["iterations"] == 2 * ipe
    assert on_disk["iterations_per_epoch"] == ipe and on_disk["samples_seen"] == 240
    assert on_disk["device"] == "cpu" and on_disk["torch_version"] == torch.__version__

    state = torch.load(out / "model.pt", weights_only=True)
    run = build_run(make_cfg("dataset=iris"))
    run.model.load_state_dict(state)  # a plain state_dict of the configured model


def test_regression_run_has_no_accuracy(make_cfg, tmp_path):
    summary = train(make_cfg(*LINREG_103, "val_fraction=0.2", output_dir=tmp_path / "r"))
    assert summary["train_acc"] is None and summary["val_acc"] is None
    scalars = read_scalars(tmp_path / "r")
    assert "metric/acc/train" not in scalars and "loss/val" in scalars


def test_val_fraction_zero_turns_validation_off(make_cfg, tmp_path):
    summary = train(make_cfg("dataset=iris", "val_fraction=0", output_dir=tmp_path / "r"))
    assert summary["n_val"] == 0 and summary["val_loss"] is None and summary["n_train"] == 150
    assert "loss/val" not in read_scalars(tmp_path / "r")


def test_log_every_thins_the_per_iteration_series(make_cfg):
    run = build_run(make_cfg(*LINREG_103, "batch_size=10", "epochs=2", "log_every=5"))
    logger = MemoryLogger()
    fit(run, logger)
    assert [s for s, _ in logger.scalars["loss/train_iter"]] == [0, 5, 10, 15, 20]


def test_divergence_stops_the_run_and_saves_no_weights(make_cfg, tmp_path):
    out = tmp_path / "d"
    summary = train(make_cfg(*LINREG_103, "batch_size=1", "epochs=3", "optimizer.lr=1e6", output_dir=out))
    assert summary["status"] == "diverged"
    assert summary["divergence"]["lr"] == 1e6 and summary["divergence"]["batch_size"] == 1
    assert summary["weights_saved"] is False and not (out / "model.pt").exists()
    on_disk = json.loads((out / "summary.json").read_text())  # valid JSON: no NaN literals
    assert on_disk["status"] == "diverged" and on_disk["train_loss"] is None


@pytest.mark.parametrize("checkpoint_every", [0, 1000])
def test_divergence_stops_at_the_first_non_finite_loss(make_cfg, tmp_path, checkpoint_every):
    """Boundaries far apart (one segment per epoch): nothing after the first non-finite loss
    is counted or logged. The oracle is the same run checked after every update."""
    lr_1e6 = (*LINREG_103, "batch_size=1", "epochs=3", "optimizer.lr=1e6")
    oracle = train(make_cfg(*lr_1e6, "checkpoint_every=1", output_dir=tmp_path / "every"))
    first = oracle["divergence"]["iteration"]
    assert oracle["iterations"] == first + 1 and 0 < first < 100  # diverges inside the first epoch

    out = tmp_path / "far"
    summary = train(make_cfg(*lr_1e6, f"checkpoint_every={checkpoint_every}", output_dir=out))
    assert summary["status"] == "diverged" and summary["divergence"]["iteration"] == first
    assert summary["iterations"] == first + 1 and summary["samples_seen"] == first + 1
    scalars = read_scalars(out)
    for tag in ("loss/train_iter", "update/grad_norm", "lr"):
        assert [s for s, _ in scalars[tag]] == list(range(first + 1)), tag
    losses = [v for _, v in scalars["loss/train_iter"]]
    assert all(math.isfinite(v) for v in losses[:-1]) and not math.isfinite(losses[-1])


def test_grad_clip_caps_the_update_but_logs_the_raw_norm(make_cfg):
    run = build_run(make_cfg(*LINREG_103, "regime=bgd", "shuffle=false", "grad_clip=0.01", "optimizer.lr=1.0"))
    before = [p.detach().clone() for p in run.model.parameters()]
    logger = MemoryLogger()
    fit(run, logger)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(run.model.parameters(), before)))
    assert float(step) == pytest.approx(0.01, rel=1e-4)  # lr 1 x clipped norm 0.01
    assert logger.scalars["update/grad_norm"][0][1] > 0.01  # the logged norm is the unclipped one


def test_early_stopping_keeps_the_best_epoch(make_cfg, tmp_path):
    # A wide MLP on 40 noisy moons samples with a large lr overfits quickly.
    summary = train(make_cfg("dataset=moons", "dataset.n=50", "dataset.noise=0.5", "model.hidden=[256,256]",
                             "optimizer=adam", "optimizer.lr=0.01", "batch_size=8", "epochs=200",
                             "early_stopping_patience=5", output_dir=tmp_path / "r"))
    assert summary["stopped_early"] is True and summary["status"] == "done"
    assert summary["epochs"] == summary["best_epoch"] + 5
    val = dict(read_scalars(tmp_path / "r")["loss/val"])  # epoch -> loss, from epoch 0
    best = min(val, key=val.get)
    assert val[best] == pytest.approx(summary["best_loss"], rel=1e-6) and best == summary["best_epoch"]


@pytest.mark.parametrize("overrides", [
    ("dataset=digits",),  # classification: losses and accuracies
    ("dataset=diabetes", "loss=mse", "model=linear"),  # regression: losses only
    ("dataset=digits", "model=cnn"),  # images through convolutions
])
def test_the_joint_evaluation_equals_evaluating_each_split(make_cfg, overrides):
    from runner.epochs import _epoch_metrics
    from runner.loop import evaluate

    run = build_run(make_cfg(*overrides, "epochs=1"))
    assert run.joint_eval is not None and run.joint_eval.sizes == (len(run.train), len(run.val))
    fit(run, MemoryLogger())  # trained weights, not the initial ones
    joint = run.joint_eval(run.model, run.loss_fn)
    for (loss, acc), split in zip(joint, (run.train, run.val)):
        want_loss, want_acc = evaluate(run.model, run.loss_fn, split, run.cfg.eval_batch_size)
        # Bit for bit where the kernel's rows do not depend on how many there are (the MLP's
        # and CNN's matrix products here); within float32 rounding of the outputs otherwise
        # (the linear model's matrix-vector product on diabetes).
        assert_close(loss, want_loss, rtol=1e-6, atol=0)
        if overrides[0] == "dataset=digits":
            assert torch.equal(loss, want_loss)
        assert (acc is None) == (want_acc is None) and (acc is None or torch.equal(acc, want_acc))
    metrics = _epoch_metrics(run, 0.5)
    run.joint_eval = None
    apart = _epoch_metrics(run, 0.5)
    assert metrics.keys() == apart.keys()
    assert_close(metrics, apart, rtol=1e-6, atol=1e-9)
    assert run.model.training  # left in training mode, as evaluate leaves it


@pytest.mark.parametrize("overrides", [
    ("val_fraction=0",),  # one split: nothing to join
    ("micro_batch_size=8",),  # memory bounded: no copy of the data
    ("eval_batch_size=1000",),  # 1438 + 359 samples do not fit one evaluation chunk
])
def test_splits_are_evaluated_apart_where_joining_them_would_not_do(make_cfg, overrides):
    assert build_run(make_cfg("dataset=digits", *overrides, "epochs=1")).joint_eval is None
