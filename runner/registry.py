"""Build config nodes into objects — only from an allow-list of targets.

A ``_target_`` is an import path, and Hydra will call whatever it names; from the command
line ``optimizer._target_=os.system`` would run a shell. Every build therefore goes
through :func:`build`, which refuses anything that is not listed here.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.errors import ConfigError, first_line

_TORCH_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam")

ALLOWED_TARGETS: dict[str, tuple[str, ...]] = {
    "model": ("runner.models.Linear", "runner.models.Logistic", "runner.models.MLP", "runner.models.CNN"),
    "loss": tuple(
        f"runner.losses.{name}"
        for name in (
            "MeanSquaredError",
            "MeanAbsoluteError",
            "MeanAbsolutePercentageError",
            "MeanSquaredLogarithmicError",
            "Hinge",
            "SquaredHinge",
            "CategoricalHinge",
            "CategoricalCrossentropy",
            "SparseCategoricalCrossentropy",
            "BinaryCrossentropy",
            "KLDivergence",
            "Poisson",
            "CosineSimilarity",
            "Huber",
            "LogCosh",
        )
    ),
    "optimizer": (*(f"torch.optim.{name}" for name in _TORCH_OPTIMIZERS), "runner.optim.LARS"),
    "scheduler": tuple(
        f"runner.schedulers.{name}" for name in ("constant", "step", "exponential", "cosine", "warmup_cosine", "plateau")
    ),
}


def user_object(key: str, target: Any, allowed: str, is_allowed: Callable[[Any], bool], wanted: str) -> Any:
    """The object a user's ``key=package.module.name`` names, once it is what the key takes.

    Resolved by importing the module and reading the attribute (what Hydra's ``get_object``
    does), then ``is_allowed(obj)`` is asked before anything calls it, so ``os.system`` or
    ``builtins.eval`` is refused where a model class is wanted. Importing runs the module's top
    level, as ``import package.module`` would: the user names their own code, from the working
    directory (``python -m runner``, ``PYTHONPATH``) or an installed package. Every refusal is a
    :class:`ConfigError` for ``key`` saying ``allowed`` and, in brackets, what was found instead
    of ``wanted``.
    """
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(key, target, allowed)
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure to import is the user's to fix
        raise ConfigError(key, target, f"{allowed} (importing {module_name} failed: {first_line(err)})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigError(key, target, f"{allowed} ({module_name} has no attribute {attr})")
    if not is_allowed(obj):
        kind = type(obj).__name__
        raise ConfigError(key, target, f"{allowed} ({target} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not {wanted})")
    return obj


def user_model_class(target: Any) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass a user's ``model._target_`` names (``pkg.module.Class``)."""
    allowed = f"a torch.nn.Module subclass as package.module.Class, or one of {', '.join(ALLOWED_TARGETS['model'])}"
    is_module_class = lambda obj: isinstance(obj, type) and issubclass(obj, nn.Module)  # noqa: E731
    return user_object("model._target_", target, allowed, is_module_class, "an nn.Module subclass")


def target_of(group: str, node: DictConfig) -> Any:
    """The class or function that ``node._target_`` names, after checking the allow-list.

    A model may also be any ``torch.nn.Module`` subclass (:func:`user_model_class`)."""
    target = node._target_
    if group == "model" and target not in ALLOWED_TARGETS[group]:
        return user_model_class(target)
    if target not in ALLOWED_TARGETS[group]:
        raise ConfigError(f"{group}._target_", target, f"one of {', '.join(ALLOWED_TARGETS[group])}")
    return get_object(target)


def build(group: str, node: DictConfig, *, exclude: tuple[str, ...] = (), **runtime: Any) -> Any:
    """Instantiate ``node`` (minus the ``exclude`` keys) with ``runtime`` arguments added.

    Constructor errors that reach us as ``ValueError``/``TypeError`` (torch's own argument
    checks, e.g. ``Invalid momentum value``) are re-raised as :class:`ConfigError` for ``group``.
    """
    target_of(group, node)
    kept = OmegaConf.masked_copy(node, [key for key in node if key not in exclude]) if exclude else node
    try:
        return instantiate(kept, _convert_="all", **runtime)
    except ConfigError:
        raise
    except Exception as err:  # Hydra wraps constructor errors in InstantiationException
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            values = {k: v for k, v in OmegaConf.to_container(kept).items() if not k.startswith("_")}
            raise ConfigError(group, values, f"valid arguments for {node._target_} ({cause})") from None
        raise
