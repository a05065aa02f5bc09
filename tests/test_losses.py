"""runner.losses against the Keras 3 formulas, worked out independently in plain Python.

The reference values come from three independent sources: the numbers in the Keras
docstrings, per-row reimplementations of each formula over Python floats (``math``
only), and torch's own losses where one computes the same quantity.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import torch.nn.functional as F
from torch.testing import assert_close

from conftest import CONF_DIR
from runner import losses as L
from runner.errors import ConfigError

EPS = 1e-7
F64 = torch.float64


def t64(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# ------------------------------------------------------------ plain-Python formulas
def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def r_mse(o, t):
    return _mean([(a - b) ** 2 for a, b in zip(o, t)])


def r_mae(o, t):
    return _mean([abs(a - b) for a, b in zip(o, t)])


def r_mape(o, t):
    return 100 * _mean([abs((b - a) / max(abs(b), EPS)) for a, b in zip(o, t)])


def r_msle(o, t):
    return _mean([(math.log(max(a, EPS) + 1) - math.log(max(b, EPS) + 1)) ** 2 for a, b in zip(o, t)])


def r_cosine(o, t):
    no = math.sqrt(max(sum(a * a for a in o), 1e-12))
    nt = math.sqrt(max(sum(b * b for b in t), 1e-12))
    return -sum((a / no) * (b / nt) for a, b in zip(o, t))


def r_poisson(o, t, log_input=True):
    p = [math.exp(a) if log_input else a for a in o]
    return _mean([pa - b * math.log(pa + EPS) for pa, b in zip(p, t)])


def r_huber(o, t, delta=1.0):
    return _mean([0.5 * (a - b) ** 2 if abs(a - b) <= delta else delta * abs(a - b) - 0.5 * delta**2 for a, b in zip(o, t)])


def r_log_cosh(o, t):
    return _mean([math.log(math.cosh(a - b)) for a, b in zip(o, t)])


def r_hinge(o, t):
    return _mean([max(1 - b * a, 0.0) for a, b in zip(o, t)])


def r_squared_hinge(o, t):
    return _mean([max(1 - b * a, 0.0) ** 2 for a, b in zip(o, t)])


def r_categorical_hinge(o, t):
    pos = sum(a * b for a, b in zip(o, t))
    neg = max((1 - b) * a for a, b in zip(o, t))
    return max(neg - pos + 1, 0.0)


def _softmax(o):
    m = max(o)
    e = [math.exp(a - m) for a in o]
    return [x / sum(e) for x in e]


def r_cce(o, t, from_logits=True, label_smoothing=0.0):
    t = [b * (1 - label_smoothing) + label_smoothing / len(t) for b in t]
    if from_logits:
        p = _softmax(o)
    else:
        p = [min(max(a / sum(o), EPS), 1 - EPS) for a in o]
    return -sum(b * math.log(q) for q, b in zip(p, t))


def r_bce(o, t, from_logits=True, label_smoothing=0.0):
    t = [b * (1 - label_smoothing) + 0.5 * label_smoothing for b in t]
    if from_logits:
        p = [1 / (1 + math.exp(-a)) for a in o]
    else:
        p = [min(max(a, EPS), 1 - EPS) for a in o]
    return _mean([-(b * math.log(q) + (1 - b) * math.log(1 - q)) for q, b in zip(p, t)])


def r_kld(o, t, from_logits=True):
    p = _softmax(o) if from_logits else o
    p = [min(max(q, EPS), 1.0) for q in p]
    t = [min(max(b, EPS), 1.0) for b in t]
    return sum(b * math.log(b / q) for q, b in zip(p, t))


def one_hot(labels, n):
    return [[1.0 if j == y else 0.0 for j in range(n)] for y in labels]


# ------------------------------------------------------------------------ the data
# Classification: three classes, and two classes (both for single-output and
# one-output-per-class losses). Some outputs are negative so that max(., eps) clips.
Y3 = [0, 2, 1]
O3 = [[2.0, -1.0, 0.5], [0.1, 0.2, -0.3], [-0.4, 1.2, 0.9]]
P3 = [[0.7, 0.2, 0.1], [0.5, 0.5, 1.0], [0.05, 0.9, 0.05]]  # positive; row 2 sums to 2
Y2 = [1, 0, 0, 1]
O2 = [[0.8, 0.1], [-0.3, 0.4], [1.5, -0.5], [0.2, 0.9]]
P2 = [[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]]
O1 = [[0.8], [-0.3], [1.5], [-2.0]]
P1 = [[0.9], [0.2], [0.6], [0.3]]
# Regression: three samples, two target columns.
YR = [[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]]
OR = [[1.5, 1.0], [0.0, -2.0], [0.2, 2.5]]
PR = [[1.5, 1.0], [0.1, 2.0], [0.2, 2.5]]  # positive outputs, for y_pred used as a rate


# Each case: id, constructor, per-row reference, target kind, whether outputs must be
# positive (probabilities / rates used as they are).
CASES = [
    ("mse", L.MeanSquaredError, r_mse, "onehot", False),
    ("mae", L.MeanAbsoluteError, r_mae, "onehot", False),
    ("mape", L.MeanAbsolutePercentageError, r_mape, "onehot", False),
    ("msle", L.MeanSquaredLogarithmicError, r_msle, "onehot", False),
    ("cosine", L.CosineSimilarity, r_cosine, "onehot", False),
    ("poisson", L.Poisson, r_poisson, "onehot", False),
    ("poisson_linear", lambda: L.Poisson(log_input=False), lambda o, t: r_poisson(o, t, False), "onehot", True),
    ("huber", L.Huber, r_huber, "onehot", False),
    # delta 0.5: some errors of the data below fall on each side of it.
    ("huber_delta", lambda: L.Huber(delta=0.5), lambda o, t: r_huber(o, t, 0.5), "onehot", False),
    ("log_cosh", L.LogCosh, r_log_cosh, "onehot", False),
    ("hinge", L.Hinge, r_hinge, "signed", False),
    ("squared_hinge", L.SquaredHinge, r_squared_hinge, "signed", False),
    ("categorical_hinge", L.CategoricalHinge, r_categorical_hinge, "onehot", False),
    ("cce", L.CategoricalCrossentropy, r_cce, "onehot", False),
    ("cce_probs", lambda: L.CategoricalCrossentropy(from_logits=False), lambda o, t: r_cce(o, t, False), "onehot", True),
    (
        "cce_smooth",
        lambda: L.CategoricalCrossentropy(label_smoothing=0.2),
        lambda o, t: r_cce(o, t, True, 0.2),
        "onehot",
        False,
    ),
    ("sparse", L.SparseCategoricalCrossentropy, lambda o, y: r_cce(o, one_hot([y], len(o))[0]), "sparse", False),
    (
        "sparse_probs",
        lambda: L.SparseCategoricalCrossentropy(from_logits=False),
        lambda o, y: r_cce(o, one_hot([y], len(o))[0], False),
        "sparse",
        True,
    ),
    ("bce", L.BinaryCrossentropy, r_bce, "binary", False),
    ("bce_probs", lambda: L.BinaryCrossentropy(from_logits=False), lambda o, t: r_bce(o, t, False), "binary", True),
    (
        "bce_smooth",
        lambda: L.BinaryCrossentropy(label_smoothing=0.3),
        lambda o, t: r_bce(o, t, True, 0.3),
        "binary",
        False,
    ),
    ("kld", L.KLDivergence, r_kld, "onehot", False),
    ("kld_probs", lambda: L.KLDivergence(from_logits=False), lambda o, t: r_kld(o, t, False), "onehot", True),
]
CASE_IDS = [c[0] for c in CASES]


def _hand_targets(kind: str, labels: list[int], n: int) -> list:
    """The encoded targets, built without the code under test."""
    if kind == "sparse":
        return labels
    if kind == "signed":
        if n == 2:
            return [[2.0 * y - 1.0] for y in labels]
        return [[2 * v - 1 for v in row] for row in one_hot(labels, n)]
    if kind == "binary" and n == 2:
        return [[float(y)] for y in labels]
    return one_hot(labels, n)


def _outputs(n_out: int, positive: bool) -> list:
    """Outputs with one column per model output; positive ones where y_pred is used as is."""
    return {(3, False): O3, (3, True): P3, (2, False): O2, (2, True): P2, (1, False): O1, (1, True): P1}[(n_out, positive)]


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize(("name", "make", "ref", "kind", "positive"), CASES, ids=CASE_IDS)
def test_classification_values(name, make, ref, kind, positive, n_classes):
    loss = make()
    labels = Y2 if n_classes == 2 else Y3
    n_out = loss.output_dim(n_classes, 1)
    outputs = _outputs(n_out, positive)
    targets = _hand_targets(kind, labels, n_classes)

    encoded = loss.encode_targets(torch.tensor(labels), n_classes)
    expected_encoded = torch.tensor(targets) if kind == "sparse" else torch.tensor(targets, dtype=torch.float32)
    assert_close(encoded, expected_encoded, rtol=0, atol=0)

    expected = [ref(o, t) for o, t in zip(outputs, targets)]
    enc64 = encoded if kind == "sparse" else encoded.to(F64)
    assert_close(loss.per_sample(t64(outputs), enc64), t64(expected))
    assert_close(loss(t64(outputs), enc64), torch.tensor(_mean(expected), dtype=F64))


REGRESSION_CASES = [c for c in CASES if c[3] == "onehot" and not c[1]().needs_classes]


@pytest.mark.parametrize(
    ("name", "make", "ref", "kind", "positive"), REGRESSION_CASES, ids=[c[0] for c in REGRESSION_CASES]
)
def test_regression_values(name, make, ref, kind, positive):
    loss = make()
    y = t64(YR)
    assert loss.output_dim(None, 2) == 2
    assert loss.encode_targets(y, None) is y
    outputs = PR if positive else OR
    expected = [ref(o, t) for o, t in zip(outputs, YR)]
    assert_close(loss.per_sample(t64(outputs), y), t64(expected))
    assert_close(loss(t64(outputs), y), torch.tensor(_mean(expected), dtype=F64))


def test_regression_cases_cover_every_loss_without_classes():
    names = {type(c[1]()).__name__ for c in REGRESSION_CASES}
    assert names == {n for n, cls in L.LOSSES.items() if not cls.needs_classes}
    assert names == {
        "MeanSquaredError",
        "MeanAbsoluteError",
        "MeanAbsolutePercentageError",
        "MeanSquaredLogarithmicError",
        "CosineSimilarity",
        "Poisson",
        "Huber",
        "LogCosh",
    }


# ------------------------------------------------------------ Keras docstring values
# Each example from the Keras docs, fed straight to per_sample (so the 0/1 hinge
# labels are given as the -1/+1 that Keras converts them to).
KERAS_EXAMPLES = [
    (L.MeanSquaredError(), [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], 0.5),
    (L.MeanAbsoluteError(), [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], 0.5),
    (L.MeanAbsolutePercentageError(), [[2.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 0.0]], 50.0),
    (L.MeanSquaredLogarithmicError(), [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], 0.24022643),
    (L.Hinge(), [[-1.0, 1.0], [-1.0, -1.0]], [[0.6, 0.4], [0.4, 0.6]], 1.3),
    (L.SquaredHinge(), [[-1.0, 1.0], [-1.0, -1.0]], [[0.6, 0.4], [0.4, 0.6]], 1.86),
    (L.CategoricalHinge(), [[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]], 1.4),
    (
        L.CategoricalCrossentropy(from_logits=False),
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]],
        1.1769392,
    ),
    (L.BinaryCrossentropy(), [[0.0, 1.0], [0.0, 0.0]], [[-18.6, 0.51], [2.94, -12.8]], 0.865458),
    (L.KLDivergence(from_logits=False), [[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]], 0.4581453),
    (L.Poisson(log_input=False), [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]], 0.49999997),
    (L.CosineSimilarity(), [[0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], -0.5),
    (L.Huber(), [[0.0, 1.0], [0.0, 0.0]], [[0.6, 0.4], [0.4, 0.6]], 0.155),
    # Keras' docstring rounds this to 0.108: (log(cosh(1)) + 0) / 2 per row, then the batch mean.
    (L.LogCosh(), [[0.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]], math.log(math.cosh(1.0)) / 4),
]


@pytest.mark.parametrize(
    ("loss", "y_true", "y_pred", "expected"), KERAS_EXAMPLES, ids=[type(e[0]).__name__ for e in KERAS_EXAMPLES]
)
def test_keras_docstring_examples(loss, y_true, y_pred, expected):
    got = loss(torch.tensor(y_pred), torch.tensor(y_true))
    assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_sparse_keras_docstring_example():
    loss = L.SparseCategoricalCrossentropy(from_logits=False)
    got = loss(torch.tensor([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]), torch.tensor([1, 2]))
    assert_close(got, torch.tensor(1.1769392), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------- single values by hand
def test_cce_probabilities_are_renormalised_and_clipped():
    loss = L.CategoricalCrossentropy(from_logits=False)
    # [1, 3] is rescaled to [0.25, 0.75]; a zero probability is clipped to eps.
    got = loss.per_sample(t64([[1.0, 3.0], [0.0, 1.0], [0.0, 1.0]]), t64([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    assert_close(got, t64([-math.log(0.75), -math.log(1e-7), -math.log(1 - 1e-7)]))


def test_cce_label_smoothing_by_hand():
    loss = L.CategoricalCrossentropy(label_smoothing=0.3)
    logits = [1.0, 2.0, 3.0]
    z = math.exp(1) + math.exp(2) + math.exp(3)
    log_p = [1 - math.log(z), 2 - math.log(z), 3 - math.log(z)]
    # class 0 smoothed over three classes: [0.8, 0.1, 0.1]
    expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
    assert_close(loss.per_sample(t64([logits]), t64([[1.0, 0.0, 0.0]])), t64([expected]))


def test_bce_label_smoothing_and_clipping_by_hand():
    loss = L.BinaryCrossentropy(from_logits=False, label_smoothing=0.2)
    # targets 1 -> 0.9 and 0 -> 0.1; probability 1.0 is clipped to 1 - eps.
    got = loss.per_sample(t64([[0.7], [0.7], [1.0]]), t64([[1.0], [0.0], [0.0]]))
    expected = [
        -(0.9 * math.log(0.7) + 0.1 * math.log(0.3)),
        -(0.1 * math.log(0.7) + 0.9 * math.log(0.3)),
        -(0.1 * math.log(1 - 1e-7) + 0.9 * math.log(1e-7)),
    ]
    assert_close(got, t64(expected))


def test_kld_from_logits_by_hand():
    loss = L.KLDivergence()
    # softmax([0, log 3]) = [0.25, 0.75]; target class 1: clipped one-hot [eps, 1].
    got = loss.per_sample(t64([[0.0, math.log(3.0)]]), t64([[0.0, 1.0]]))
    expected = 1e-7 * math.log(1e-7 / 0.25) + math.log(1 / 0.75)
    assert_close(got, t64([expected]))


def test_kld_from_logits_clips_tiny_probabilities_like_keras():
    # softmax gives the first class exp(-200): Keras clips it to eps before the log.
    got = L.KLDivergence().per_sample(t64([[-200.0, 0.0]]), t64([[1.0, 0.0]]))
    expected = math.log(1 / 1e-7) + 1e-7 * math.log(1e-7 / 1.0)
    assert_close(got, t64([expected]))


def test_poisson_log_input_uses_exp_of_outputs():
    got = L.Poisson().per_sample(t64([[0.0, math.log(2.0)]]), t64([[1.0, 3.0]]))
    expected = ((1.0 - 1.0 * math.log(1.0 + 1e-7)) + (2.0 - 3.0 * math.log(2.0 + 1e-7))) / 2
    assert_close(got, t64([expected]))
    # Far below log(eps) the log term is log(eps), not -inf.
    far = L.Poisson().per_sample(t64([[-1000.0]]), t64([[2.0]]))
    assert_close(far, t64([-2.0 * math.log(1e-7)]))


def test_cosine_similarity_of_zero_and_small_vectors():
    # A zero vector gives 0, not NaN; a small one (sum of squares 1e-8 > 1e-12) is still
    # normalised exactly.
    got = L.CosineSimilarity().per_sample(
        t64([[0.0, 0.0], [3.0, 4.0], [1e-4, 0.0]]), t64([[1.0, 0.0], [-3.0, -4.0], [2.0, 0.0]])
    )
    assert_close(got, t64([0.0, 1.0, -1.0]))


def test_mape_divides_by_eps_on_zero_targets():
    got = L.MeanAbsolutePercentageError().per_sample(t64([[0.5, 0.2]]), t64([[1.0, 0.0]]))
    assert_close(got, t64([100 * (0.5 + 0.2 / 1e-7) / 2]))


# ------------------------------------------------------- against torch's own losses
@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_cce_and_sparse_match_torch_cross_entropy(gen, label_smoothing):
    logits = torch.randn(64, 5, generator=gen, dtype=F64) * 3
    labels = torch.randint(0, 5, (64,), generator=gen)
    cce = L.CategoricalCrossentropy(label_smoothing=label_smoothing)
    expected = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    assert_close(cce(logits, cce.encode_targets(labels, 5).to(F64)), expected)
    if label_smoothing == 0.0:
        sparse = L.SparseCategoricalCrossentropy()
        assert_close(sparse(logits, sparse.encode_targets(labels, 5)), expected)
        assert_close(sparse.per_sample(logits, labels), F.cross_entropy(logits, labels, reduction="none"))


def test_regression_losses_match_torch(gen):
    out = torch.randn(32, 4, generator=gen, dtype=F64)
    y = torch.randn(32, 4, generator=gen, dtype=F64)
    assert_close(L.MeanSquaredError()(out, y), F.mse_loss(out, y))
    assert_close(L.MeanAbsoluteError()(out, y), F.l1_loss(out, y))
    assert_close(L.CosineSimilarity().per_sample(out, y), -F.cosine_similarity(out, y, dim=-1))
    counts = torch.poisson(torch.full((32, 4), 2.0, dtype=F64), generator=gen)
    log_rates = out.clamp(-2, 2)  # exp(o) >> eps, where Keras' +eps is negligible
    assert_close(
        L.Poisson()(log_rates, counts), F.poisson_nll_loss(log_rates, counts, log_input=True), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("n_classes", [2, 4])
def test_bce_matches_torch(gen, n_classes):
    loss = L.BinaryCrossentropy()
    n_out = loss.output_dim(n_classes, 1)
    logits = torch.randn(50, n_out, generator=gen, dtype=F64) * 4
    labels = torch.randint(0, n_classes, (50,), generator=gen)
    targets = loss.encode_targets(labels, n_classes).to(F64)
    assert_close(loss(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))
    probs = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    probs_loss = L.BinaryCrossentropy(from_logits=False)
    assert_close(probs_loss(probs, targets), F.binary_cross_entropy(probs, targets))


def test_kld_matches_torch_kl_div(gen):
    logits = torch.randn(40, 3, generator=gen, dtype=F64)
    # Soft targets well above eps, so Keras' clipping changes nothing.
    target = torch.softmax(torch.randn(40, 3, generator=gen, dtype=F64), -1)
    expected = F.kl_div(F.log_softmax(logits, -1), target, reduction="batchmean")
    assert_close(L.KLDivergence()(logits, target), expected)
    assert_close(L.KLDivergence(from_logits=False)(torch.softmax(logits, -1), target), expected)


# ---------------------------------------------------------------- encoding & shapes
OUTPUT_DIMS = [
    # (loss, n_classes=2, n_classes=3, regression with 4 columns or None when not allowed)
    (L.MeanSquaredError(), 2, 3, 4),
    (L.MeanAbsoluteError(), 2, 3, 4),
    (L.MeanAbsolutePercentageError(), 2, 3, 4),
    (L.MeanSquaredLogarithmicError(), 2, 3, 4),
    (L.CosineSimilarity(), 2, 3, 4),
    (L.Poisson(), 2, 3, 4),
    (L.Huber(), 2, 3, 4),
    (L.LogCosh(), 2, 3, 4),
    (L.Hinge(), 1, 3, None),
    (L.SquaredHinge(), 1, 3, None),
    (L.CategoricalHinge(), 2, 3, None),
    (L.CategoricalCrossentropy(), 2, 3, None),
    (L.SparseCategoricalCrossentropy(), 2, 3, None),
    (L.BinaryCrossentropy(), 1, 3, None),
    (L.KLDivergence(), 2, 3, None),
]


@pytest.mark.parametrize(
    ("loss", "two", "three", "regression"), OUTPUT_DIMS, ids=[type(e[0]).__name__ for e in OUTPUT_DIMS]
)
def test_output_dim_and_needs_classes(loss, two, three, regression):
    assert loss.output_dim(2, 1) == two
    assert loss.output_dim(3, 1) == three
    assert loss.needs_classes is (regression is None)
    if regression is None:
        with pytest.raises(ConfigError):
            loss.output_dim(None, 4)
        with pytest.raises(ConfigError):
            loss.encode_targets(torch.zeros(5, 4), None)
    else:
        assert loss.output_dim(None, 4) == regression


def assert_exact(got: torch.Tensor, rows: list) -> None:
    """Same values, shape and (default float) dtype, with no tolerance."""
    assert_close(got, torch.tensor(rows), rtol=0, atol=0)


def test_encode_targets_exact():
    y = torch.tensor([2, 0, 1, 1])
    assert_exact(L.MeanSquaredError().encode_targets(y, 3), [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert_exact(L.Hinge().encode_targets(y, 3), [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, 1.0, -1.0]])
    yb = torch.tensor([1, 0, 0, 1])
    assert_exact(L.SquaredHinge().encode_targets(yb, 2), [[1.0], [-1.0], [-1.0], [1.0]])
    assert_exact(L.BinaryCrossentropy().encode_targets(yb, 2), [[1.0], [0.0], [0.0], [1.0]])
    assert_exact(L.CategoricalHinge().encode_targets(yb, 2), [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    sparse = L.SparseCategoricalCrossentropy().encode_targets(y, 3)
    assert sparse.dtype == torch.int64
    assert_close(sparse, y, rtol=0, atol=0)


def test_encode_targets_dtype_follows_default_and_float_labels():
    y = torch.tensor([0, 1])
    assert L.KLDivergence().encode_targets(y, 2).dtype == torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert L.KLDivergence().encode_targets(y, 2).dtype == torch.float64
        assert L.Hinge().encode_targets(y, 2).dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)
    # Float labels keep their own precision.
    assert L.MeanSquaredError().encode_targets(y.to(torch.float16), 3).dtype == torch.float16
    assert L.BinaryCrossentropy().encode_targets(y.to(F64), 2).dtype == F64


def test_encode_targets_rejects_non_vector_labels():
    with pytest.raises(ValueError, match="shape"):
        L.CategoricalCrossentropy().encode_targets(torch.zeros(4, 1, dtype=torch.int64), 3)


def test_predict_classes():
    multi = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [-2.0, -3.0, -1.0]])
    for loss in (L.MeanSquaredError(), L.Hinge(), L.CategoricalCrossentropy(), L.BinaryCrossentropy(), L.KLDivergence()):
        got = loss.predict_classes(multi)
        assert got.dtype == torch.int64
        assert got.tolist() == [1, 0, 2]
    single = torch.tensor([[0.3], [-0.1], [0.0], [0.7]])
    assert L.Hinge().predict_classes(single).tolist() == [1, 0, 0, 1]
    assert L.SquaredHinge().predict_classes(single).tolist() == [1, 0, 0, 1]
    assert L.BinaryCrossentropy().predict_classes(single).tolist() == [1, 0, 0, 1]
    assert L.BinaryCrossentropy(from_logits=False).predict_classes(single).tolist() == [0, 0, 0, 1]
    assert L.BinaryCrossentropy().predict_classes(single).dtype == torch.int64


# ------------------------------------------------------------------- gradients
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize(("name", "make", "ref", "kind", "positive"), CASES, ids=CASE_IDS)
def test_gradients_flow_and_are_finite(name, make, ref, kind, positive, n_classes):
    loss = make()
    labels = Y2 if n_classes == 2 else Y3
    rows = _outputs(loss.output_dim(n_classes, 1), positive)
    outputs = torch.tensor(rows, requires_grad=True)
    loss(outputs, loss.encode_targets(torch.tensor(labels), n_classes)).backward()
    assert outputs.grad is not None
    assert torch.isfinite(outputs.grad).all()
    assert outputs.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "loss",
    [L.CategoricalCrossentropy(), L.SparseCategoricalCrossentropy(), L.BinaryCrossentropy(), L.KLDivergence()],
    ids=lambda x: type(x).__name__,
)
def test_extreme_logits_stay_finite(loss):
    n_out = loss.output_dim(3, 1)
    logits = torch.tensor([[500.0, -500.0, 0.0], [-500.0, 500.0, 0.0]])[:, :n_out].clone().requires_grad_()
    value = loss(logits, loss.encode_targets(torch.tensor([1, 0]), 3))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------- no host sync
@pytest.mark.parametrize(("name", "make", "ref", "kind", "positive"), CASES, ids=CASE_IDS)
def test_runs_on_meta_tensors(name, make, ref, kind, positive):
    """Meta tensors carry no data, so any .item() or branch on a value would raise."""
    loss = make()
    for n_classes in (2, 3):
        labels = torch.empty(8, dtype=torch.int64, device="meta")
        targets = loss.encode_targets(labels, n_classes)
        outputs = torch.empty(8, loss.output_dim(n_classes, 1), device="meta")
        assert loss.per_sample(outputs, targets).shape == (8,)
        assert loss(outputs, targets).shape == ()
        assert loss.predict_classes(outputs).shape == (8,)


# ----------------------------------------------------------- construction & registry
@pytest.mark.parametrize("cls", [L.CategoricalCrossentropy, L.BinaryCrossentropy])
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.1"])
def test_label_smoothing_is_validated(cls, bad):
    with pytest.raises(ConfigError) as info:
        cls(label_smoothing=bad)
    assert info.value.key == "loss.label_smoothing"


def test_boolean_flags_are_validated():
    for cls in (L.CategoricalCrossentropy, L.SparseCategoricalCrossentropy, L.BinaryCrossentropy, L.KLDivergence):
        with pytest.raises(ConfigError) as info:
            cls(from_logits="yes")
        assert info.value.key == "loss.from_logits"
    with pytest.raises(ConfigError) as info:
        L.Poisson(log_input=1)
    assert info.value.key == "loss.log_input"


def test_losses_registry_names_every_class():
    assert set(L.LOSSES) == {
        "MeanSquaredError",
        "MeanAbsoluteError",
        "MeanAbsolutePercentageError",
        "MeanSquaredLogarithmicError",
        "CosineSimilarity",
        "Poisson",
        "Huber",
        "LogCosh",
        "Hinge",
        "SquaredHinge",
        "CategoricalHinge",
        "CategoricalCrossentropy",
        "SparseCategoricalCrossentropy",
        "BinaryCrossentropy",
        "KLDivergence",
    }
    for name, cls in L.LOSSES.items():
        assert cls.__name__ == name
        assert getattr(L, name) is cls
        assert isinstance(cls(), L.Loss)


def test_config_targets_are_registered_losses():
    targets = [
        line.split(":", 1)[1].strip()
        for path in sorted((CONF_DIR / "loss").glob("*.yaml"))
        for line in path.read_text().splitlines()
        if line.startswith("_target_:")
    ]
    assert targets, "no loss configs found"
    for target in targets:
        module, _, name = target.rpartition(".")
        assert module == "runner.losses"
        assert name in L.LOSSES


def test_each_loss_option_is_named_after_its_config_file():
    """``Loss.option`` is what error messages tell the user to type: ``loss=<option>``."""
    conf = CONF_DIR / "loss"
    by_file = {}
    for path in sorted(conf.glob("*.yaml")):
        target = [line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith("_target_:")]
        by_file[path.stem] = target[0].rpartition(".")[2] if target else None
    # Files without a _target_ line take it from their schema (poisson, huber).
    by_file = {stem: name for stem, name in by_file.items() if name is not None}
    for stem, name in by_file.items():
        assert L.LOSSES[name].option == stem
    assert {cls.option for cls in L.LOSSES.values()} == {p.stem for p in conf.glob("*.yaml")}
    assert L.Poisson.option == "poisson" and L.Huber.option == "huber"


def test_target_domains():
    domains = {name: cls.target_domain for name, cls in L.LOSSES.items() if not cls.needs_classes}
    assert domains == {
        "MeanSquaredError": "any",
        "MeanAbsoluteError": "any",
        "MeanAbsolutePercentageError": "one-sign",
        "MeanSquaredLogarithmicError": "non-negative",
        "CosineSimilarity": "any",
        "Poisson": "non-negative",
        "Huber": "any",
        "LogCosh": "any",
    }


# ------------------------------------------------------------------ huber, log_cosh
def test_huber_by_hand_on_both_sides_of_delta():
    # errors 0.5, -2, 1 (exactly delta: quadratic), 3 with delta 1
    got = L.Huber().per_sample(t64([[1.5, 0.0], [2.0, 4.0]]), t64([[1.0, 2.0], [1.0, 1.0]]))
    assert_close(got, t64([(0.125 + (2.0 - 0.5)) / 2, (0.5 + (3.0 - 0.5)) / 2]))
    # delta 2: error 3 is linear, 2 * 3 - 0.5 * 4 = 4; error 1 is 0.5
    got = L.Huber(delta=2.0).per_sample(t64([[4.0, 2.0]]), t64([[1.0, 1.0]]))
    assert_close(got, t64([(4.0 + 0.5) / 2]))


def test_huber_matches_torch_and_its_fused_path(gen):
    out = torch.randn(32, 3, generator=gen, dtype=F64) * 3
    y = torch.randn(32, 3, generator=gen, dtype=F64)
    for delta in (0.3, 1.0, 2.5):
        loss = L.Huber(delta=delta)
        expected = F.huber_loss(out, y, delta=delta, reduction="none").mean(dim=-1)
        assert_close(loss.per_sample(out, y), expected)
        assert_close(loss(out, y), loss.per_sample(out, y).mean(), rtol=1e-12, atol=1e-12)


def test_huber_gradient_is_clipped_at_delta():
    outputs = torch.tensor([[0.2, 5.0, -7.0]], dtype=F64, requires_grad=True)
    L.Huber(delta=1.5).per_sample(outputs, t64([[0.0, 0.0, 0.0]])).sum().backward()
    # d/de: e inside delta, delta * sign(e) outside; then / 3 for the mean over columns
    assert_close(outputs.grad, t64([[0.2 / 3, 1.5 / 3, -1.5 / 3]]))


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1"])
def test_huber_delta_is_validated(bad):
    with pytest.raises(ConfigError) as info:
        L.Huber(delta=bad)
    assert info.value.key == "loss.delta"


def test_log_cosh_by_hand_and_at_extremes():
    got = L.LogCosh().per_sample(t64([[1.0, -2.0], [0.0, 0.0]]), t64([[0.0, 0.0], [0.0, 0.0]]))
    assert_close(got, t64([(math.log(math.cosh(1.0)) + math.log(math.cosh(2.0))) / 2, 0.0]))
    # cosh(1000) overflows a float64; log(cosh(x)) = |x| - log 2 + log(1 + exp(-2|x|)).
    outputs = torch.tensor([[1000.0, -1000.0, 1e-4]], requires_grad=True)
    value = L.LogCosh().per_sample(outputs, torch.zeros(1, 3))
    assert_close(value, torch.tensor([(2 * (1000 - math.log(2)) + 0.5e-8) / 3]))
    value.sum().backward()
    # d/dx log(cosh(x)) = tanh(x)
    assert_close(outputs.grad, torch.tensor([[1.0, -1.0, math.tanh(1e-4)]]) / 3)


# ---------------------------------------------------------------- fused training paths
def _loss_variants() -> list[tuple[str, dict]]:
    variants = []
    for name, cls in sorted(L.LOSSES.items()):
        accepted = inspect.signature(cls).parameters
        variants.append((name, {}))
        variants += [(name, kw) for kw in ({"from_logits": False}, {"label_smoothing": 0.2}) if set(kw) <= set(accepted)]
    return variants


@pytest.mark.parametrize("name,kwargs", _loss_variants())
@pytest.mark.parametrize("n_classes", [2, 4])
def test_forward_equals_the_mean_of_the_keras_per_sample_loss(name, kwargs, n_classes):
    """Some losses train through a fused torch kernel; it must be the same number."""
    loss = L.LOSSES[name](**kwargs)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, n_classes, (9,), generator=gen)
    targets = loss.encode_targets(labels, n_classes)
    outputs = torch.randn(9, loss.output_dim(n_classes, 1), generator=gen, dtype=torch.float64)
    if kwargs.get("from_logits") is False:
        outputs = outputs.sigmoid() if outputs.shape[-1] == 1 or name == "BinaryCrossentropy" else outputs.softmax(-1)
    if targets.is_floating_point():
        targets = targets.double()
    torch.testing.assert_close(loss(outputs, targets), loss.per_sample(outputs, targets).mean(), rtol=1e-12, atol=1e-12)
