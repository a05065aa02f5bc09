"""The Keras 3 losses (``keras/src/losses/losses.py``) as torch modules.

Every loss follows the Keras formula exactly, including the ``1e-7`` clipping epsilon
and the reduction over the last axis; :meth:`Loss.forward` then averages over the batch
(Keras' default ``sum_over_batch_size`` reduction).

Models emit raw outputs with no final activation, so each loss also says how the data
set's targets must be encoded for it (:meth:`Loss.encode_targets`), how many outputs the
model needs (:meth:`Loss.output_dim`) and how outputs turn into class predictions for
accuracy (:meth:`Loss.predict_classes`).

Targets arrive either as int64 class indices of shape ``(N,)`` with ``n_classes`` known
(classification) or as a float tensor of shape ``(N, d)`` with ``n_classes`` None
(regression).

Everything here is vectorised and free of host synchronisation: no ``.item()`` and no
Python branching on tensor values, only on shapes and constructor arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from runner.errors import ConfigError

__all__ = [
    "EPSILON",
    "LOSSES",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "CategoricalHinge",
    "CosineSimilarity",
    "Hinge",
    "Huber",
    "KLDivergence",
    "LogCosh",
    "Loss",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredError",
    "MeanSquaredLogarithmicError",
    "Poisson",
    "SparseCategoricalCrossentropy",
    "SquaredHinge",
]

#: Keras' ``backend.epsilon()``: the clipping constant of every formula below.
EPSILON = 1e-7
_LOG_EPSILON = math.log(EPSILON)


def _target_dtype(y: Tensor) -> torch.dtype:
    """Float targets keep their precision; integer labels get the default float dtype."""
    return y.dtype if y.is_floating_point() else torch.get_default_dtype()


def _check_labels(y: Tensor) -> None:
    if y.dim() != 1:
        raise ValueError(f"class labels must have shape (N,), got {tuple(y.shape)}")


def _one_hot(y: Tensor, n_classes: int) -> Tensor:
    """Float one-hot encoding of 1-D class indices.

    ``scatter_`` rather than ``F.one_hot``: the latter validates the label range on the
    host, which would synchronise with an accelerator.
    """
    _check_labels(y)
    out = torch.zeros(y.shape[0], n_classes, dtype=_target_dtype(y), device=y.device)
    return out.scatter_(1, y.long().unsqueeze(1), 1.0)


def _check_label_smoothing(value: object) -> float:
    # bool is an int subclass, but `label_smoothing: true` is surely a mistake.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0
    if not ok:
        raise ConfigError("loss.label_smoothing", value, "a number in [0, 1)")
    return float(value)


def _check_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


class Loss(torch.nn.Module, ABC):
    """Base class: a per-sample Keras loss, averaged over the batch by :meth:`forward`.

    The default encoding suits losses that compare outputs with targets elementwise:
    on classification data the targets become one-hot rows and the model emits one
    output per class (predictions by argmax); on regression data the targets are used
    unchanged and the model emits one output per target column.

    Attributes:
        option: its name on the command line (``loss=<option>``, ``conf/loss/<option>.yaml``),
            which is also its Keras string identifier.
        needs_classes: True when the loss is only defined on classification data.
        target_domain: the regression targets the formula is meant for: ``"any"`` real
            value, ``"non-negative"`` ones (counts, rates, quantities compared on a log
            scale), or ``"one-sign"`` ones, all positive or all negative (the loss divides
            by the target, so values near 0 dominate it).
    """

    option: ClassVar[str]
    needs_classes: ClassVar[bool] = False
    target_domain: ClassVar[str] = "any"

    def _require_classes(self, n_classes: int | None) -> int:
        if n_classes is None:
            raise ConfigError(
                "loss", type(self).__name__, "a regression loss (this one needs a classification data set)"
            )
        return n_classes

    def output_dim(self, n_classes: int | None, target_dim: int) -> int:
        """The number of outputs (``out_features``) the model must have.

        Args:
            n_classes: the number of classes, or None for regression data.
            target_dim: the number of target columns (used for regression data).
        """
        if n_classes is None:
            if self.needs_classes:
                self._require_classes(n_classes)
            return target_dim
        return n_classes

    def encode_targets(self, y: Tensor, n_classes: int | None) -> Tensor:
        """Converts the whole target tensor, once, into what :meth:`per_sample` expects.

        Args:
            y: int64 class indices of shape ``(N,)``, or float regression targets ``(N, d)``.
            n_classes: the number of classes, or None for regression data.
        """
        if n_classes is None:
            if self.needs_classes:
                self._require_classes(n_classes)
            return y
        return _one_hot(y, n_classes)

    @abstractmethod
    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The loss of each sample, shape ``(batch,)``.

        Args:
            outputs: raw model outputs, ``(batch, output_dim)``.
            targets: a batch of :meth:`encode_targets`' result.
        """

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The batch mean of :meth:`per_sample`."""
        return self.per_sample(outputs, targets).mean()

    def predict_classes(self, outputs: Tensor) -> Tensor:
        """The predicted class of each sample (int64, ``(batch,)``), for accuracy."""
        return outputs.argmax(dim=-1)


# ------------------------------------------------------------------ regression-style
class MeanSquaredError(Loss):
    """``mean((y_pred - y_true)^2, axis=-1)``."""

    option: ClassVar[str] = "mse"

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).square().mean(dim=-1)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        # Equal widths per sample: the mean of per-sample means is the overall mean, and the
        # fused kernel saves several small ops per update (it matters at batch size 1).
        return F.mse_loss(outputs, targets)


class MeanAbsoluteError(Loss):
    """``mean(|y_pred - y_true|, axis=-1)``."""

    option: ClassVar[str] = "mae"

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).abs().mean(dim=-1)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.l1_loss(outputs, targets)


class MeanAbsolutePercentageError(Loss):
    """``100 * mean(|(y_true - y_pred) / max(|y_true|, eps)|, axis=-1)``.

    On one-hot targets the zero entries are divided by ``eps``, as in Keras, so the loss
    is dominated by the wrong-class outputs.
    """

    option: ClassVar[str] = "mape"
    target_domain: ClassVar[str] = "one-sign"

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        diff = ((targets - outputs) / targets.abs().clamp(min=EPSILON)).abs()
        return 100.0 * diff.mean(dim=-1)


class MeanSquaredLogarithmicError(Loss):
    """``mean((log(max(y_pred, eps) + 1) - log(max(y_true, eps) + 1))^2, axis=-1)``.

    Every negative target is clipped to ``eps``: they would all count as 0.
    """

    option: ClassVar[str] = "msle"
    target_domain: ClassVar[str] = "non-negative"

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        # log1p is log(x + 1) without the rounding of the addition for small x.
        first = torch.log1p(outputs.clamp(min=EPSILON))
        second = torch.log1p(targets.clamp(min=EPSILON))
        return (first - second).square().mean(dim=-1)


class CosineSimilarity(Loss):
    """``-sum(l2_normalize(y_true) * l2_normalize(y_pred), axis=-1)``.

    ``l2_normalize(x) = x / sqrt(max(sum(x^2, axis=-1), 1e-12))``, so a zero vector
    gives a loss of 0 rather than NaN.
    """

    option: ClassVar[str] = "cosine_similarity"

    @staticmethod
    def _l2_normalize(x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().sum(dim=-1, keepdim=True).clamp(min=1e-12))

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return -(self._l2_normalize(targets) * self._l2_normalize(outputs)).sum(dim=-1)


class Poisson(Loss):
    """``mean(y_pred - y_true * log(y_pred + eps), axis=-1)``.

    Args:
        log_input: the model emits log-rates and ``y_pred = exp(outputs)``, which keeps the
            rate positive without a final activation. When false, ``y_pred = outputs``.

    The targets are counts or rates (non-negative). Like Keras, the formula leaves out the
    ``log(y_true!)`` term of the Poisson negative log-likelihood, which does not depend on
    the model: at a perfect fit the loss is ``mean(y - y * log(y))``, negative for targets
    above ``e``. A negative *target* is another matter: the loss then falls without bound
    as the rate goes to 0 (to the clipping at ``eps``), so such targets are refused.
    """

    option: ClassVar[str] = "poisson"
    target_domain: ClassVar[str] = "non-negative"

    def __init__(self, log_input: bool = True):
        super().__init__()
        self.log_input = _check_bool("loss.log_input", log_input)

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.log_input:
            # log(exp(o) + eps) == log(eps) + softplus(o - log(eps)), which stays finite
            # where exp(o) would underflow or overflow; the high threshold keeps softplus
            # exact (its linear cut-over errs by exp(-threshold)).
            log_rate = _LOG_EPSILON + F.softplus(outputs - _LOG_EPSILON, threshold=50.0)
            return (outputs.exp() - targets * log_rate).mean(dim=-1)
        return (outputs - targets * torch.log(outputs + EPSILON)).mean(dim=-1)


class Huber(Loss):
    """``mean(0.5 * e^2 if |e| <= delta else delta * |e| - 0.5 * delta^2, axis=-1)``, ``e = y_pred - y_true``.

    Quadratic for small errors, linear for large ones: less swayed by outliers than MSE.

    Args:
        delta: the error size where the loss turns from quadratic to linear (> 0).
    """

    option: ClassVar[str] = "huber"

    def __init__(self, delta: float = 1.0):
        super().__init__()
        ok = isinstance(delta, (int, float)) and not isinstance(delta, bool) and math.isfinite(delta) and delta > 0
        if not ok:
            raise ConfigError("loss.delta", delta, "a finite number > 0")
        self.delta = float(delta)

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        error = outputs - targets
        abs_error = error.abs()
        quadratic = 0.5 * error.square()
        linear = self.delta * abs_error - 0.5 * self.delta**2
        return torch.where(abs_error <= self.delta, quadratic, linear).mean(dim=-1)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        # The same formula in one fused kernel (equal widths per sample, as for MSE); torch
        # switches at |e| < delta rather than <=, where both branches equal 0.5 * delta^2.
        return F.huber_loss(outputs, targets, delta=self.delta)


class LogCosh(Loss):
    """``mean(log(cosh(y_pred - y_true)), axis=-1)``: about ``e^2 / 2`` for small errors, ``|e| - log 2`` for large ones.

    Keras computes ``log(cosh(x))`` as ``x + softplus(-2x) - log(2)``; written with ``|x|``
    (the same function, as ``log(cosh(x))`` is even), the softplus argument is never
    positive, so it neither overflows nor reaches softplus' linear cut-over.
    """

    option: ClassVar[str] = "log_cosh"

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        x = (outputs - targets).abs()
        return (x + F.softplus(-2.0 * x) - math.log(2.0)).mean(dim=-1)


# ---------------------------------------------------------------------------- hinges
class _SignedTargets(Loss):
    """Hinge-style encoding: one output and a {-1, +1} target for two classes, else
    one-vs-all {-1, +1} rows (Keras maps 0/1 labels to -1/1 before the formula)."""

    needs_classes: ClassVar[bool] = True

    def output_dim(self, n_classes: int | None, target_dim: int) -> int:
        return 1 if self._require_classes(n_classes) == 2 else n_classes

    def encode_targets(self, y: Tensor, n_classes: int | None) -> Tensor:
        n_classes = self._require_classes(n_classes)
        if n_classes == 2:
            _check_labels(y)
            return (2.0 * y.to(_target_dtype(y)) - 1.0).unsqueeze(1)
        return 2.0 * _one_hot(y, n_classes) - 1.0

    def predict_classes(self, outputs: Tensor) -> Tensor:
        # The output count is a static shape, so this branch never syncs.
        if outputs.shape[-1] == 1:
            return (outputs[..., 0] > 0).long()
        return outputs.argmax(dim=-1)


class Hinge(_SignedTargets):
    """``mean(max(1 - y_true * y_pred, 0), axis=-1)`` with ``y_true`` in {-1, +1}."""

    option: ClassVar[str] = "hinge"

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.relu(1.0 - targets * outputs).mean(dim=-1)


class SquaredHinge(_SignedTargets):
    """``mean(max(1 - y_true * y_pred, 0)^2, axis=-1)`` with ``y_true`` in {-1, +1}."""

    option: ClassVar[str] = "squared_hinge"

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.relu(1.0 - targets * outputs).square().mean(dim=-1)


class CategoricalHinge(Loss):
    """``max(neg - pos + 1, 0)`` with ``pos = sum(y_true * y_pred)`` and
    ``neg = max((1 - y_true) * y_pred)`` over the last axis; one-hot targets."""

    option: ClassVar[str] = "categorical_hinge"

    needs_classes: ClassVar[bool] = True

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        pos = (targets * outputs).sum(dim=-1)
        neg = ((1.0 - targets) * outputs).amax(dim=-1)
        return torch.relu(neg - pos + 1.0)


# --------------------------------------------------------------------- cross-entropies
def _log_probs(outputs: Tensor, from_logits: bool) -> Tensor:
    """Keras' categorical log-probabilities: log_softmax of logits, or the log of the
    outputs rescaled to sum to 1 and clipped to ``[eps, 1 - eps]``."""
    if from_logits:
        return F.log_softmax(outputs, dim=-1)
    probs = outputs / outputs.sum(dim=-1, keepdim=True)
    return probs.clamp(EPSILON, 1.0 - EPSILON).log()


class CategoricalCrossentropy(Loss):
    """``-sum(y_true * log(y_pred), axis=-1)`` on one-hot targets.

    Args:
        from_logits: the model emits logits (log_softmax is applied, numerically stable).
            When false the outputs are taken as probabilities: Keras rescales them to sum
            to 1 and clips them to ``[eps, 1 - eps]``.
        label_smoothing: in ``[0, 1)``; the targets become
            ``y_true * (1 - label_smoothing) + label_smoothing / n_classes``.
    """

    option: ClassVar[str] = "categorical_crossentropy"

    needs_classes: ClassVar[bool] = True

    def __init__(self, from_logits: bool = True, label_smoothing: float = 0.0):
        super().__init__()
        self.from_logits = _check_bool("loss.from_logits", from_logits)
        self.label_smoothing = _check_label_smoothing(label_smoothing)

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.label_smoothing:
            n = targets.shape[-1]
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / n
        return -(targets * _log_probs(outputs, self.from_logits)).sum(dim=-1)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if not self.from_logits:
            return self.per_sample(outputs, targets).mean()
        # The same quantity in one fused kernel (torch smooths soft targets the same way).
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)


class SparseCategoricalCrossentropy(Loss):
    """Categorical cross-entropy with integer labels: ``-log(y_pred[label])``.

    The targets stay int64 class indices ``(N,)``; Keras has no label smoothing here.

    Args:
        from_logits: as in :class:`CategoricalCrossentropy`.
    """

    option: ClassVar[str] = "sparse_categorical_crossentropy"

    needs_classes: ClassVar[bool] = True

    def __init__(self, from_logits: bool = True):
        super().__init__()
        self.from_logits = _check_bool("loss.from_logits", from_logits)

    def encode_targets(self, y: Tensor, n_classes: int | None) -> Tensor:
        self._require_classes(n_classes)
        _check_labels(y)
        return y.long()

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        log_probs = _log_probs(outputs, self.from_logits)
        return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if not self.from_logits:
            return self.per_sample(outputs, targets).mean()
        # log_softmax + gather + mean as one fused kernel: a quarter of a batch-1 update.
        return F.cross_entropy(outputs, targets)


class BinaryCrossentropy(Loss):
    """``mean(-(y log p + (1 - y) log(1 - p)), axis=-1)``.

    Two classes: one output and a 0/1 target column. More classes: one output per class
    against one-hot rows, each class an independent binary problem (multi-label style),
    predicted by argmax.

    Args:
        from_logits: the model emits logits (``binary_cross_entropy_with_logits``, stable).
            When false the outputs are probabilities, clipped to ``[eps, 1 - eps]``.
        label_smoothing: in ``[0, 1)``; the targets become
            ``y_true * (1 - label_smoothing) + 0.5 * label_smoothing``.
    """

    option: ClassVar[str] = "binary_crossentropy"

    needs_classes: ClassVar[bool] = True

    def __init__(self, from_logits: bool = True, label_smoothing: float = 0.0):
        super().__init__()
        self.from_logits = _check_bool("loss.from_logits", from_logits)
        self.label_smoothing = _check_label_smoothing(label_smoothing)

    def output_dim(self, n_classes: int | None, target_dim: int) -> int:
        return 1 if self._require_classes(n_classes) == 2 else n_classes

    def encode_targets(self, y: Tensor, n_classes: int | None) -> Tensor:
        n_classes = self._require_classes(n_classes)
        if n_classes == 2:
            _check_labels(y)
            return y.to(_target_dtype(y)).unsqueeze(1)
        return _one_hot(y, n_classes)

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        if self.from_logits:
            bce = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
        else:
            p = outputs.clamp(EPSILON, 1.0 - EPSILON)
            bce = -(targets * p.log() + (1.0 - targets) * torch.log1p(-p))
        return bce.mean(dim=-1)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if not self.from_logits:
            return self.per_sample(outputs, targets).mean()
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(outputs, targets)

    def predict_classes(self, outputs: Tensor) -> Tensor:
        if outputs.shape[-1] == 1:
            threshold = 0.0 if self.from_logits else 0.5
            return (outputs[..., 0] > threshold).long()
        return outputs.argmax(dim=-1)


class KLDivergence(Loss):
    """``sum(y_true * log(y_true / y_pred), axis=-1)`` with both clipped to ``[eps, 1]``.

    Args:
        from_logits: ``y_pred = softmax(outputs)`` (Keras' KLDivergence has no such option,
            but the models here emit raw outputs). When false the outputs are taken as
            probabilities as they are.
    """

    option: ClassVar[str] = "kl_divergence"

    needs_classes: ClassVar[bool] = True

    def __init__(self, from_logits: bool = True):
        super().__init__()
        self.from_logits = _check_bool("loss.from_logits", from_logits)

    def per_sample(self, outputs: Tensor, targets: Tensor) -> Tensor:
        y_true = targets.clamp(EPSILON, 1.0)
        if self.from_logits:
            # log(clip(softmax(o), eps, 1)) == max(log_softmax(o), log(eps)), without the
            # underflow of forming tiny probabilities first.
            log_pred = F.log_softmax(outputs, dim=-1).clamp(min=_LOG_EPSILON)
        else:
            log_pred = outputs.clamp(EPSILON, 1.0).log()
        return (y_true * (y_true.log() - log_pred)).sum(dim=-1)


LOSSES: dict[str, type[Loss]] = {
    cls.__name__: cls
    for cls in (
        MeanSquaredError,
        MeanAbsoluteError,
        MeanAbsolutePercentageError,
        MeanSquaredLogarithmicError,
        CosineSimilarity,
        Poisson,
        Huber,
        LogCosh,
        Hinge,
        SquaredHinge,
        CategoricalHinge,
        CategoricalCrossentropy,
        SparseCategoricalCrossentropy,
        BinaryCrossentropy,
        KLDivergence,
    )
}
