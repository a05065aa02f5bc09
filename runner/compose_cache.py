"""Compose the command line's config once, though the CLI's checks and Hydra both ask for it;
list the config groups for ``--help`` from one copy of Hydra's config repository.

The command line composes its config before Hydra runs (:func:`runner.cli._preflight`:
Hydra's own mode detection, then the composition it checks and builds), and Hydra composes
the same two again when it runs: four compositions of about 0.3 s each, in every run, before
the first update. While :func:`recording`, each composition is kept (a copy, untouched by
what the caller does with its own); while :func:`replaying`, a composition asked for with the
same arguments, from the same config search path and working directory, is answered with a
fresh copy of the kept one, and anything else (a sweep's jobs) is composed as usual. (A
sweep's per-job compositions are kept by :mod:`runner.sweepcache`.) Hydra's mode detection
is kept the same way, and where the CLI knows its answer without composing
(:func:`known_mode`: nothing in ``conf/`` sets ``hydra.mode``), no composition is made for
it at all: one composition per run instead of four.

``--help`` lists every group and its options: Hydra deep-copies its whole config repository
(every YAML source and every schema in the ConfigStore) for each of about 97 listings, most
of ``--help``'s 8 s. While :func:`listing`, one loader lists them all from one copy.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Iterator

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra.core.object_type import ObjectType

_compose = ConfigLoaderImpl.load_configuration
_list = ConfigLoaderImpl.get_group_options
_get_mode = Hydra.get_mode
_kept: dict[tuple, Any] = {}
_modes: dict[tuple, Any] = {}
_repositories: dict[tuple, Any] = {}
_mode: str | None = None  # "record", "replay", "list" or None (pass through)


def _key(loader: ConfigLoaderImpl, args: tuple, kwargs: dict) -> tuple:
    bound = dict(zip(("config_name", "overrides", "run_mode", "from_shell", "validate_sweep_overrides"), args))
    bound.update(kwargs)
    path = tuple((p.provider, p.path) for p in loader.config_search_path.get_path())
    return (
        path,
        os.getcwd(),
        bound.get("config_name"),
        tuple(bound.get("overrides") or ()),
        bound.get("run_mode"),
        bound.get("from_shell", True),
        bound.get("validate_sweep_overrides", True),
    )


def _load_configuration(self: ConfigLoaderImpl, *args: Any, **kwargs: Any) -> Any:
    if _mode is None:
        return _compose(self, *args, **kwargs)
    key = _key(self, args, kwargs)
    if _mode == "replay" and key in _kept:
        return copy.deepcopy(_kept[key])
    cfg = _compose(self, *args, **kwargs)
    if _mode == "record":
        _kept[key] = copy.deepcopy(cfg)
    return cfg


def _mode_key(app: Hydra, config_name: str | None, overrides: list[str]) -> tuple:
    path = tuple((p.provider, p.path) for p in app.config_loader.config_search_path.get_path())
    return path, os.getcwd(), config_name, tuple(overrides)


def _get_mode_kept(self: Hydra, config_name: str | None, overrides: list[str]) -> Any:
    if _mode is None:
        return _get_mode(self, config_name, overrides)
    key = _mode_key(self, config_name, overrides)
    if _mode == "replay" and key in _modes:
        return _modes[key]
    mode = _get_mode(self, config_name, overrides)
    if _mode == "record":
        _modes[key] = mode
    return mode


def known_mode(app: Hydra, config_name: str | None, overrides: list[str], mode: Any) -> None:
    """Keep ``mode`` as the answer to Hydra's mode detection (a whole composition in multirun
    mode) for this command line, where the caller knows it without composing."""
    _modes[_mode_key(app, config_name, overrides)] = mode


def _get_group_options(self: ConfigLoaderImpl, group_name: str, results_filter: Any = ObjectType.CONFIG,
                       config_name: str | None = None, overrides: list[str] | None = None) -> list[str]:
    if _mode != "list":
        return _list(self, group_name, results_filter, config_name, overrides)
    key = (id(self), config_name, tuple(overrides or ()))
    if key not in _repositories:
        _repositories[key] = self._parse_overrides_and_create_caching_repo(config_name, list(overrides or ()))[1]
    return _repositories[key].get_group_options(group_name, results_filter)


ConfigLoaderImpl.load_configuration = _load_configuration  # type: ignore[method-assign]
ConfigLoaderImpl.get_group_options = _get_group_options  # type: ignore[method-assign]
Hydra.get_mode = _get_mode_kept  # type: ignore[method-assign]


@contextlib.contextmanager
def _in_mode(mode: str) -> Iterator[None]:
    global _mode
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous


def recording() -> contextlib.AbstractContextManager[None]:
    """Keep every composition made inside (the CLI's checks)."""
    return _in_mode("record")


def replaying() -> contextlib.AbstractContextManager[None]:
    """Answer a composition kept by :func:`recording` with a copy (:func:`forget` drops them)."""
    return _in_mode("replay")


@contextlib.contextmanager
def listing() -> Iterator[None]:
    """List config groups (``--help``) from one copy of the repository per loader."""
    with _in_mode("list"):
        try:
            yield
        finally:
            _repositories.clear()


def forget() -> None:
    _kept.clear()
    _modes.clear()
