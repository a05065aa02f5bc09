"""``dataset=python dataset.fn=pkg.module.function``: data a user's own function returns.

The function takes no arguments and returns ``(X, y)``, ``(X_train, y_train, X_val, y_val)``
(its own validation part, used instead of ``val_fraction``'s split), or a map-style
``torch.utils.data.Dataset`` whose items are ``(x, y)`` pairs. The arrays then go through the
checks a ``.npz`` file's arrays go through (:mod:`runner.data.files`): numeric dtypes, no NaN or
inf, one row per sample, matching lengths, at least one sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runner.data import files
from runner.errors import DataError, first_line
from runner.registry import user_object

KEY = "dataset.fn"
ALLOWED = "a function as package.module.function returning (X, y), (X_train, y_train, X_val, y_val) or a map-style torch Dataset"


def resolve(target: Any) -> Any:
    """The function ``dataset.fn`` names, imported and checked as ``model._target_`` is
    (:func:`runner.registry.user_object`): a class or a constant is refused before it is called."""
    is_function = lambda obj: callable(obj) and not isinstance(obj, type)  # noqa: E731
    return user_object(KEY, target, ALLOWED, is_function, "a function")


def _from_torch_dataset(source: str, data: Any) -> tuple[Any, Any]:
    """Every ``(x, y)`` item of a map-style Dataset, stacked (the runner trains from memory)."""
    try:
        n = len(data)
    except TypeError:
        raise DataError(source, "the Dataset has no len(): only map-style datasets can be loaded") from None
    if n == 0:
        raise DataError(source, "the Dataset is empty (0 samples)")
    xs, ys = [], []
    for i in range(n):
        item = data[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(source, f"item {i} is a {type(item).__name__}; expected an (x, y) pair")
        xs.append(np.asarray(item[0]))
        ys.append(np.asarray(item[1]))
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DataError(source, f"the items' x have different shapes ({', '.join(map(str, sorted(shapes)[:3]))}...)")
    return np.stack(xs), np.stack(ys)


def _checked(source: str, X: Any, y: Any, part: str) -> tuple[np.ndarray, np.ndarray]:
    """``X`` and ``y`` as :func:`runner.data.files.load_npz` returns a file's, with its checks."""
    try:
        X, y = np.asarray(X), np.asarray(y)
    except Exception as err:  # noqa: BLE001 - ragged lists and the like
        raise DataError(source, f"{part} cannot be made into arrays ({first_line(err)})") from None
    return files.check_arrays(f"{source}{part}", X, y)


def load(target: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Call the function ``target`` names; return ``(X, y)`` for training and ``(X_val, y_val)`` or None."""
    fn = resolve(target)
    source = f"{target}()"
    try:
        returned = fn()
    except Exception as err:  # noqa: BLE001 - the user's function failed: say so on one line
        raise DataError(source, f"raised {first_line(err)}") from None
    from torch.utils.data import Dataset

    if isinstance(returned, Dataset):
        return _checked(source, *_from_torch_dataset(source, returned), ""), None
    if isinstance(returned, tuple) and len(returned) == 2:
        return _checked(source, *returned, ""), None
    if isinstance(returned, tuple) and len(returned) == 4:
        train = _checked(source, returned[0], returned[1], " (training part)")
        val = _checked(source, returned[2], returned[3], " (validation part)")
        if train[0].shape[1:] != val[0].shape[1:] or train[1].shape[1:] != val[1].shape[1:]:
            raise DataError(source, f"the validation part's shapes {val[0].shape}, {val[1].shape} do not match the training part's {train[0].shape}, {train[1].shape} past the sample axis")
        return train, val
    what = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else f"a {type(returned).__name__}"
    raise DataError(source, f"returned {what}; expected (X, y), (X_train, y_train, X_val, y_val) or a map-style torch Dataset")
