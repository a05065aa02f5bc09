"""The gradient noise instrument (``noise.every``) against closed forms, and proof that it
changes nothing in the run it measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from runner.batches import InMemorySplit
from runner.instruments.noise import TAGS, full_gradient, per_sample_gradient_fn, trainable
from runner.loggers import MemoryLogger
from runner.losses import LOSSES, MeanSquaredError
from runner.loop import epoch_order
from runner.train import build_run, fit, train
from runner.errors import ConfigError

from conftest import read_scalars


# --------------------------------------------------------------------------- closed forms
def linreg_closed_form(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Per-sample MSE gradients of (x·w + b − y)² in float64: g_i = 2 r_i [x_i, 1]. Returns
    (G, tr Σ with 1/n, the per-sample gradients)."""
    r = X @ w + b - y
    g = 2 * r[:, None] * np.hstack([X, np.ones((len(X), 1))])
    G = g.mean(axis=0)
    return G, float(((g - G) ** 2).sum(axis=1).mean()), g


def float64_linreg(n: int = 23, d: int = 3, seed: int = 0) -> tuple[nn.Linear, InMemorySplit, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(n, d)), rng.normal(size=n)
    model = nn.Linear(d, 1).double()
    split = InMemorySplit(X=torch.from_numpy(X), Y=torch.from_numpy(y).unsqueeze(1), labels=None)
    return model, split, X, y


def set_weights(model: nn.Linear, w: np.ndarray, b: float) -> None:
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w).reshape(1, -1))
        model.bias.fill_(b)


@pytest.mark.parametrize("chunk", [5, 23, 100])
def test_full_gradient_and_trace_match_the_closed_form_at_several_weights(chunk):
    """Weights from a few plain gradient-descent steps (so "several iterations"), in float64;
    chunk sizes that do and do not divide n give the same numbers."""
    model, split, X, y = float64_linreg()
    w, b = np.array([0.5, -1.0, 2.0]), 0.3
    for _ in range(4):
        set_weights(model, w, b)
        G, trace, _ = linreg_closed_form(w, b, X, y)
        measured = full_gradient(model, MeanSquaredError(), split, chunk)
        torch.testing.assert_close(measured.gradient, torch.from_numpy(G), rtol=1e-12, atol=0)
        torch.testing.assert_close(measured.trace, torch.tensor(trace, dtype=torch.float64), rtol=1e-12, atol=0)
        torch.testing.assert_close(measured.b_simple, torch.tensor(trace / (G @ G), dtype=torch.float64), rtol=1e-12, atol=0)
        w, b = w - 0.1 * G[:-1], b - 0.1 * G[-1]


def test_identical_samples_have_zero_noise_exactly():
    model, split, X, y = float64_linreg(n=9)
    split = InMemorySplit(X=split.X[:1].repeat(9, 1), Y=split.Y[:1].repeat(9, 1), labels=None)
    measured = full_gradient(model, MeanSquaredError(), split, 4)
    assert measured.trace.item() == 0.0 and measured.b_simple.item() == 0.0
    assert torch.linalg.vector_norm(measured.gradient) > 0


@pytest.mark.parametrize("option", sorted(LOSSES))
def test_per_sample_gradients_equal_autograd_one_sample_at_a_time(option):
    """vmap(grad(...)) over every loss the runner has: each row is that sample's own gradient."""
    loss_fn = LOSSES[option]()
    torch.manual_seed(0)
    n, classes = 6, 3
    if loss_fn.needs_classes:
        y_raw, n_classes, target_dim = torch.tensor([0, 1, 2, 1, 0, 2]), classes, 1
    else:
        y_raw, n_classes, target_dim = torch.rand(n, 2) + 0.5, None, 2  # positive: every regression loss's domain
    Y = loss_fn.encode_targets(y_raw, n_classes)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, loss_fn.output_dim(n_classes, target_dim)))
    X = torch.randn(n, 4)
    grads = per_sample_gradient_fn(model, loss_fn)(trainable(model), X, Y)
    for i in range(n):
        expected = torch.autograd.grad(loss_fn.per_sample(model(X[i : i + 1]), Y[i : i + 1]).sum(), list(model.parameters()))
        for (name, got), want in zip(grads.items(), expected):
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-7, msg=f"{option} {name} sample {i}")


# --------------------------------------------------------------------------- through a run
LINREG = ("dataset=linreg", "dataset.d=2", "dataset.n=40", "model=linear", "loss=mse", "val_fraction=0", "batch_size=8", "optimizer.lr=0.05")


def weights_after(make_cfg, tmp_path, updates: int) -> tuple[np.ndarray, float]:
    """The weights after ``updates`` updates of the same run (same seed: same order, same updates)."""
    budget = ("budget=updates", f"budget_amount={updates}") if updates else ()
    run = build_run(make_cfg(*LINREG, *budget, output_dir=tmp_path / f"after{updates}"))
    if updates:
        fit(run, MemoryLogger())
    linear = run.model[1]
    return linear.weight.detach().double().numpy().ravel(), float(linear.bias.detach().double())


def test_logged_values_match_the_closed_form_at_each_measured_iteration(make_cfg, tmp_path):
    """``python -m runner`` as a function: linreg with MSE, measured at iterations 0, 3, 6, 9;
    each of the four values against a float64 hand computation at the weights of that iteration,
    and the running estimate against the mean of the B_simple values so far."""
    every = 3
    cfg = make_cfg(*LINREG, "epochs=2", f"noise.every={every}", output_dir=tmp_path / "measured")
    train(cfg)
    scalars = read_scalars(tmp_path / "measured")
    steps = [s for s, _ in scalars["noise/b_simple"]]
    assert steps == list(range(0, 10, every))  # 5 iterations per epoch, 2 epochs
    run = build_run(cfg)
    X = run.train.X.double().numpy()
    y = run.train.Y.double().numpy().ravel()
    order = epoch_order(torch.Generator().manual_seed(cfg.seed), len(X), True, torch.device("cpu")).numpy()
    b_simples = []
    for k, step in enumerate(steps):
        w, b = weights_after(make_cfg, tmp_path, step)
        G, trace, g = linreg_closed_form(w, b, X, y)
        # The update's own batch: positions step*8 .. step*8+7 of its epoch's order (epoch 1 here).
        if step < 5:
            batch = g[order[step * 8 : step * 8 + 8]].mean(axis=0)
            cos = batch @ G / (np.linalg.norm(batch) * np.linalg.norm(G))
            assert scalars["noise/cos_to_full"][k][1] == pytest.approx(cos, rel=1e-5)
        b_simples.append(trace / (G @ G))
        assert scalars["noise/b_simple"][k][1] == pytest.approx(b_simples[-1], rel=1e-5)
        assert scalars["noise/grad_var"][k][1] == pytest.approx(trace, rel=1e-5)
        assert scalars["noise/full_grad_norm"][k][1] == pytest.approx(np.linalg.norm(G), rel=1e-5)
        assert scalars["noise/b_crit"][k][1] == pytest.approx(np.mean(b_simples), rel=1e-5)


def test_a_data_set_of_identical_samples_logs_zero_noise(make_cfg, tmp_path):
    """Σ = 0 when every sample is the same: B_simple and tr(Σ) are exactly 0, and every
    mini-batch gradient points exactly along G."""
    path = tmp_path / "same.npz"
    np.savez(path, X=np.tile([[0.5, -1.0]], (16, 1)), y=np.full(16, 2.0))
    cfg = make_cfg("dataset=file", f"dataset.path={path}", "dataset.standardize=false", "model=linear", "loss=mse",
                   "val_fraction=0", "batch_size=4", "noise.every=2", output_dir=tmp_path / "run")
    train(cfg)
    scalars = read_scalars(tmp_path / "run")
    assert [s for s, _ in scalars["noise/b_simple"]] == [0, 2]
    assert [v for _, v in scalars["noise/b_simple"]] == [0.0, 0.0]
    assert [v for _, v in scalars["noise/grad_var"]] == [0.0, 0.0]
    assert all(v > 0 for _, v in scalars["noise/full_grad_norm"])
    assert [v for _, v in scalars["noise/cos_to_full"]] == pytest.approx([1.0, 1.0], rel=1e-6)


DIGITS = ("batch_size=64", "grad_clip=1.0", "model.hidden=[16]", "val_fraction=0.75")


def test_measuring_changes_nothing_in_the_run(make_cfg, tmp_path):
    """Same losses at every iteration, same final weights, same global random state, bit for bit
    on CPU, with the noise measured at every 2nd iteration (digits, an MLP, clipped gradients)."""
    results = {}
    for every in (0, 2):
        out = tmp_path / f"every{every}"
        train(make_cfg(*DIGITS, f"noise.every={every}", output_dir=out))
        scalars = read_scalars(out)
        results[every] = (scalars["loss/train_iter"], torch.load(out / "model.pt", weights_only=True), torch.get_rng_state())
        assert ("noise/b_simple" in scalars) == (every > 0)
    (losses_off, weights_off, rng_off), (losses_on, weights_on, rng_on) = results[0], results[2]
    assert losses_on == losses_off
    for name in weights_off:
        assert torch.equal(weights_on[name], weights_off[name]), name
    assert torch.equal(rng_on, rng_off)


def test_off_by_default_and_the_step_is_not_wrapped(make_cfg):
    run = build_run(make_cfg(*DIGITS))
    assert run.instruments.members == []
    assert run.step.func.__name__ == "train_step"  # the bare partial: nothing runs per iteration


def test_resumed_run_continues_the_running_estimate(make_cfg, tmp_path):
    """Two epochs in one go, or one epoch then a resume to two: the same noise values, and the
    running mean continues from the checkpoint instead of restarting."""
    whole = tmp_path / "whole"
    train(make_cfg(*LINREG, "epochs=2", "noise.every=2", output_dir=whole))
    split = tmp_path / "split"
    train(make_cfg(*LINREG, "epochs=1", "noise.every=2", output_dir=split))
    # A finished run is kept as it is; removing its summary leaves the epoch-end checkpoint to resume.
    (split / "summary.json").unlink()
    train(make_cfg(*LINREG, "epochs=2", "noise.every=2", output_dir=split))
    a, b = read_scalars(whole), read_scalars(split)
    for tag in TAGS:
        assert a[tag] == b[tag], tag


@pytest.mark.parametrize(
    "override,key",
    [("noise.every=-1", "noise.every"), ("noise.micro_batch_size=0", "noise.micro_batch_size")],
)
def test_bad_noise_settings_are_refused_naming_the_key(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_run(make_cfg(override))
