"""Build config nodes into objects — only from an allow-list of targets.

A ``_target_`` is an import path, and Hydra will call whatever it names; from the command
line ``optimizer._target_=os.system`` would run a shell. Every build therefore goes
through :func:`build`, which refuses anything that is not listed here.
"""

from __future__ import annotations

import importlib
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.errors import ConfigError

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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def user_model_class(target: Any) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass a user's ``model._target_`` names (``pkg.module.Class``).

    Resolved by importing the module and reading the attribute (what Hydra's ``get_object``
    does), and checked to be a class deriving from ``nn.Module`` before anything calls it:
    ``os.system`` or ``builtins.eval`` is a function, not a module class, and is refused here.
    Importing runs the module's top level, as ``import pkg.module`` would: the user names
    their own code, from the working directory (``python -m runner``) or an installed package.
    """
    key = "model._target_"
    allowed = f"a torch.nn.Module subclass as package.module.Class, or one of {', '.join(ALLOWED_TARGETS['model'])}"
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(key, target, allowed)
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure to import is the user's to fix
        raise ConfigError(key, target, f"{allowed} (importing {module_name} failed: {_first_line(err)})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ConfigError(key, target, f"{allowed} ({module_name} has no attribute {attr})")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(key, target, f"{allowed} ({target} is a {type(obj).__name__}, not an nn.Module subclass)")
    return obj


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
