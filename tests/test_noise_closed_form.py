"""The noise instrument's closed form for dense layers (``runner.instruments.dense_norms``)
against its torch.func per-sample path, and which models take which path."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from runner.batches import InMemorySplit
from runner.instruments.dense_norms import dense_chain, dense_full_gradient
from runner.instruments.noise import CLOSED_FORM, TORCH_FUNC, FullGradient, full_gradient, gradient_method
from runner.losses import LOSSES
from runner.models import ACTIVATIONS, CNN, MLP, Linear, Logistic
from runner.train import build_run

from conftest import write_mnist_like

REL = 1e-6  # the agreement the closed form promises with the torch.func path


def assert_same_measurement(closed: FullGradient, func: FullGradient, scale: float, rel: float = REL) -> None:
    """tr(Σ), G and B_simple within ``rel`` relative. ``scale`` = mean |g_i|²: where tr(Σ) or
    |G|² is a tiny fraction of it (near-identical samples, a minimum), neither path resolves
    them relatively better than float64 rounding of ``scale``, so 1e-13·scale is allowed too."""
    floor = 1e-13 * scale
    trace_error = abs(float(closed.trace - func.trace))
    assert trace_error <= rel * float(func.trace) + floor, (float(closed.trace), float(func.trace))
    gradient_error = float(torch.linalg.vector_norm(closed.gradient - func.gradient))
    norm = float(torch.linalg.vector_norm(func.gradient))
    assert gradient_error <= rel * norm + math.sqrt(floor), (gradient_error, norm)
    if float(func.trace) > 1e-6 * scale and norm**2 > 1e-6 * scale:
        torch.testing.assert_close(closed.b_simple, func.b_simple, rtol=rel, atol=0)


def mean_square_norm(func: FullGradient) -> float:
    """mean |g_i|² = tr(Σ) + |G|²."""
    return float(func.trace + func.gradient.square().sum())


def targets_for(loss_fn, n: int, classes: int, draw_values) -> tuple[torch.Tensor, int | None, int]:
    """Loss-ready targets, n_classes and the model's output width; classification labels when
    the loss needs them, else positive regression targets (every regression loss's domain)."""
    if loss_fn.needs_classes:
        labels = torch.tensor(draw_values(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
        return loss_fn.encode_targets(labels, classes), classes, loss_fn.output_dim(classes, 1)
    values = draw_values(st.lists(st.floats(0.25, 3.0), min_size=2 * n, max_size=2 * n))
    return torch.tensor(values, dtype=torch.float64).reshape(n, 2), None, 2


# --------------------------------------------------------------------------- float64, any shape
@pytest.mark.parametrize("option", sorted(LOSSES))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_closed_form_equals_torch_func_on_every_loss_and_dense_model(option, data):
    """Hypothesis draws the model (linear, logistic or an MLP of 0-2 hidden layers of 1-7 units
    with any of the runner's activations, flat or image-shaped input), the samples (1-30 of
    them, values in [-2, 2]), the targets and the chunk size; the two paths agree to 1e-6
    relative (float64, where each path is exact to rounding)."""
    loss_fn = LOSSES[option]()
    n = data.draw(st.integers(1, 30), label="n")
    in_shape = data.draw(st.sampled_from([(1,), (3,), (5,), (1, 2, 3)]), label="in_shape")
    classes = data.draw(st.integers(2, 4), label="classes")
    Y, n_classes, out = targets_for(loss_fn, n, classes, data.draw)
    kind = data.draw(st.sampled_from(["linear", "logistic", "mlp"]), label="model")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="init seed"))
    if kind == "mlp":
        hidden = data.draw(st.lists(st.integers(1, 7), min_size=0, max_size=2), label="hidden")
        activation = data.draw(st.sampled_from(sorted(ACTIVATIONS)), label="activation")
        model = MLP(in_shape, out, hidden=hidden, activation=activation)
    else:
        model = (Linear if kind == "linear" else Logistic)(in_shape, out)
    model = model.double()
    values = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=n * math.prod(in_shape), max_size=n * math.prod(in_shape)), label="X")
    X = torch.tensor(values, dtype=torch.float64).reshape(n, *in_shape)
    split = InMemorySplit(X=X, Y=Y, labels=None)
    chunk = data.draw(st.integers(1, 32), label="chunk")

    assert gradient_method(model, loss_fn, split) == CLOSED_FORM
    func = full_gradient(model, loss_fn, split, chunk, TORCH_FUNC)
    closed = full_gradient(model, loss_fn, split, chunk, CLOSED_FORM)
    layers = dense_chain(model, loss_fn, in_shape)
    chunked = FullGradient(*dense_full_gradient(layers, loss_fn, split.chunks(chunk), n), n=n)  # this chunk size exactly
    for measured in (closed, chunked):
        assert measured.gradient.dtype == measured.trace.dtype == torch.float64
        assert_same_measurement(measured, func, mean_square_norm(func))


def test_a_partly_frozen_model_measures_its_trainable_parameters_only():
    """G's layout is the trainable parameters in ``model.parameters()`` order, frozen ones left out."""
    torch.manual_seed(1)
    model = MLP((4,), 3, hidden=[5, 6]).double()
    model[1].weight.requires_grad_(False)
    model[5].bias.requires_grad_(False)
    loss_fn = LOSSES["SparseCategoricalCrossentropy"]()
    split = InMemorySplit(X=torch.randn(17, 4, dtype=torch.float64), Y=torch.randint(0, 3, (17,)), labels=None)
    assert gradient_method(model, loss_fn, split) == CLOSED_FORM
    closed = full_gradient(model, loss_fn, split, 5, CLOSED_FORM)
    func = full_gradient(model, loss_fn, split, 5, TORCH_FUNC)
    assert closed.gradient.numel() == sum(p.numel() for p in model.parameters() if p.requires_grad) == 5 + 30 + 6 + 18
    assert_same_measurement(closed, func, mean_square_norm(func), rel=1e-12)


def test_identical_samples_through_a_hidden_layer_have_zero_noise_to_float64_rounding():
    """Chunks of 4, 4 and 3 samples. The shift by sample 0 leaves only the rounding of the
    layer outputs: MKL's kernels (Intel CPUs) round a row of a 3-row product differently
    from the same row of a 4-row one, so tr(Σ) is then ~1e-17 where OpenBLAS-like kernels
    give exactly 0; either way far below the unshifted formula's cancellation."""
    torch.manual_seed(2)
    model = MLP((3,), 2, hidden=[4]).double()
    x = torch.randn(1, 3, dtype=torch.float64)
    split = InMemorySplit(X=x.repeat(11, 1), Y=torch.ones(11, 2, dtype=torch.float64), labels=None)
    measured = full_gradient(model, LOSSES["MeanSquaredError"](), split, 4, CLOSED_FORM)
    square_norm = measured.gradient.square().sum().item()
    assert square_norm > 0.1
    assert 0.0 <= measured.trace.item() <= 1e-15 * square_norm
    assert 0.0 <= measured.b_simple.item() <= 1e-15


# --------------------------------------------------------------------------- float32, the runner's models and data
@pytest.fixture(scope="module")
def digits():
    """Digits' standardised training features and labels, as a run builds them (first 200 samples)."""
    from conftest import compose_cfg

    run = build_run(compose_cfg(["dataset=digits"], "unused"))
    return run.train.X[:200], run.train.labels[:200]


def sgd_steps(model: nn.Module, loss_fn, X: torch.Tensor, Y: torch.Tensor, steps: int) -> None:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        rows = torch.randint(0, len(X), (16,), generator=generator)
        optimizer.zero_grad()
        loss_fn(model(X[rows]), Y[rows]).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # keeps every loss finite (mape's gradients are ~1e7)
        optimizer.step()


# The default suite runs the two losses the runner's experiments use; CI's slow run, every loss.
DEFAULT_LOSSES = ("SparseCategoricalCrossentropy", "MeanSquaredError")


@pytest.mark.parametrize(
    "option", [o if o in DEFAULT_LOSSES else pytest.param(o, marks=pytest.mark.slow) for o in sorted(LOSSES)]
)
@pytest.mark.parametrize("kind", [pytest.param("logistic", marks=pytest.mark.slow), "mlp"])
def test_float32_runs_agree_to_1e_6_on_digits(digits, option, kind):
    """The runner's float32 models on real data, at the initial weights and after 40 SGD
    updates: the closed form within 1e-6 relative of torch.func (it rounds less: float64 from
    the float32 layer values, where torch.func rounds every per-sample gradient to float32)."""
    X, labels = digits
    loss_fn = LOSSES[option]()
    Y = loss_fn.encode_targets(labels, 10)
    torch.manual_seed(0)
    out = loss_fn.output_dim(10, 1)
    model = Logistic((64,), out) if kind == "logistic" else MLP((64,), out, hidden=[32])
    split = InMemorySplit(X=X, Y=Y, labels=labels)
    assert gradient_method(model, loss_fn, split) == CLOSED_FORM
    for steps in (0, 40):
        sgd_steps(model, loss_fn, X, Y, steps)
        func = full_gradient(model, loss_fn, split, 256, TORCH_FUNC)
        assert torch.isfinite(func.trace), "the data must keep the loss finite"
        assert_same_measurement(full_gradient(model, loss_fn, split, 256, CLOSED_FORM), func, mean_square_norm(func))


@pytest.mark.parametrize(
    "option",
    [o if o in DEFAULT_LOSSES else pytest.param(o, marks=pytest.mark.slow) for o in sorted(n for n, c in LOSSES.items() if not c.needs_classes)],
)
def test_float32_linear_regression_agrees_to_1e_6(option):
    """``model=linear`` on regression targets (positive: every regression loss's domain)."""
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(200, 5, generator=generator)
    Y = (X @ torch.randn(5, 2, generator=generator) * 0.3 + 1.5).abs() + 0.1
    loss_fn = LOSSES[option]()
    torch.manual_seed(0)
    model = Linear((5,), 2)
    split = InMemorySplit(X=X, Y=Y, labels=None)
    for steps in (0, 40):
        sgd_steps(model, loss_fn, X, Y, steps)
        func = full_gradient(model, loss_fn, split, 64, TORCH_FUNC)
        assert_same_measurement(full_gradient(model, loss_fn, split, 64, CLOSED_FORM), func, mean_square_norm(func))


def test_the_closed_form_touches_no_grad_and_draws_no_random_numbers():
    torch.manual_seed(4)
    model = MLP((6,), 3, hidden=[8])
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    split = InMemorySplit(X=torch.randn(20, 6), Y=torch.randint(0, 3, (20,)), labels=None)
    rng = torch.get_rng_state()
    full_gradient(model, LOSSES["SparseCategoricalCrossentropy"](), split, 8, CLOSED_FORM)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


# --------------------------------------------------------------------------- which path
class OwnForward(nn.Module):
    """Dense layers only, but its own forward (a residual): only torch.func knows what it computes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(x + torch.tanh(self.a(x)))


class Tied(nn.Sequential):
    def __init__(self):
        first = nn.Linear(4, 4)
        super().__init__(first, nn.ReLU(), first)


class ExtraParameter(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(4, 3))
        self.scale = nn.Parameter(torch.ones(()))


SPLIT4 = InMemorySplit(X=torch.randn(6, 4), Y=torch.randint(0, 3, (6,)), labels=None)
SCCE = LOSSES["SparseCategoricalCrossentropy"]()


@pytest.mark.parametrize(
    "model, method",
    [
        (Linear((4,), 3), CLOSED_FORM),
        (Logistic((4,), 3), CLOSED_FORM),
        (MLP((4,), 3, hidden=[5, 5], activation="leaky_relu"), CLOSED_FORM),
        (nn.Linear(4, 3), CLOSED_FORM),
        (nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.Tanh()), nn.Identity(), nn.Linear(5, 3)), CLOSED_FORM),
        (OwnForward(), TORCH_FUNC),
        (Tied(), TORCH_FUNC),
        (ExtraParameter(), TORCH_FUNC),
        (nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)), TORCH_FUNC),
        (nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)), TORCH_FUNC),
        (nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3)), TORCH_FUNC),  # not an activation the runner has
        (nn.Sequential(nn.Flatten(0), nn.Linear(24, 3)), TORCH_FUNC),  # flattens the batch: mixes samples
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_the_closed_form_takes_chains_of_dense_layers_only(model, method):
    assert gradient_method(model, SCCE, SPLIT4) == method


def test_a_hooked_layer_or_a_linear_fed_a_sequence_goes_to_torch_func():
    model = MLP((4,), 3, hidden=[5])
    handle = model[1].register_forward_hook(lambda module, args, out: out * 2)
    assert gradient_method(model, SCCE, SPLIT4) == TORCH_FUNC
    handle.remove()
    assert gradient_method(model, SCCE, SPLIT4) == CLOSED_FORM
    sequences = InMemorySplit(X=torch.randn(6, 2, 4), Y=torch.randint(0, 3, (6,)), labels=None)
    assert gradient_method(nn.Sequential(nn.Linear(4, 3)), SCCE, sequences) == TORCH_FUNC


def test_dropout_is_refused_in_training_mode_as_before():
    """A model that would draw random numbers goes to torch.func, whose vmap refuses it."""
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).train()
    with pytest.raises(RuntimeError, match="randomness"):
        full_gradient(model, SCCE, SPLIT4, 4)


def test_a_run_of_the_runners_mlp_measures_by_the_closed_form(make_cfg):
    mlp = build_run(make_cfg("dataset=iris", "noise.every=3"))
    assert mlp.instruments.members[0].method == CLOSED_FORM


@pytest.mark.slow  # builds an image data set and a CNN
def test_a_run_of_the_runners_cnn_measures_by_torch_func(make_cfg, tmp_path):
    write_mnist_like(tmp_path / "idx")
    cnn = build_run(make_cfg("dataset=mnist", f"dataset.root={tmp_path / 'idx'}", "model=cnn", "model.channels=[2]", "noise.every=3"))
    assert isinstance(cnn.model, CNN) and cnn.instruments.members[0].method == TORCH_FUNC


def test_a_custom_module_is_measured_by_torch_func(make_cfg, monkeypatch):
    import sys
    import types

    module = types.ModuleType("closed_form_user_nets")
    module.OwnForwardNet = type("OwnForwardNet", (OwnForward,), {"__init__": lambda self, in_shape, out_features: OwnForward.__init__(self)})
    monkeypatch.setitem(sys.modules, "closed_form_user_nets", module)
    run = build_run(make_cfg("dataset=iris", "model=custom", "model._target_=closed_form_user_nets.OwnForwardNet", "noise.every=3"))
    assert run.instruments.members[0].method == TORCH_FUNC
