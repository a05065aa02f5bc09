"""Optional extras: a launcher or sweeper whose plugin is not installed is named with the pip install that adds it.

Without the plugin, its config (``hydra/launcher/submitit_slurm``, ``hydra/sweeper/optuna``...)
does not exist and Hydra's composition fails with a search-path listing that names neither the
plugin nor the extra; :func:`missing_extra` turns that into one line.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

from runner.errors import ConfigError

# (group, option) -> (the plugin module that provides it, the extra that installs the plugin).
PLUGINS: dict[tuple[str, str], tuple[str, str]] = {
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    ("hydra/launcher", "slurm_local"): ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    ("hydra/launcher", "ray_cluster"): ("hydra_plugins.hydra_ray_launcher", "cluster"),
    ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "cluster"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "search"),
}
# What a preset needs (experiment=lr_search overrides the sweeper with optuna in its defaults).
PRESETS: dict[tuple[str, str], tuple[str, str]] = {("experiment", "lr_search"): PLUGINS[("hydra/sweeper", "optuna")]}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def missing_extra(overrides: Sequence[str], message: str = "") -> ConfigError | None:
    """The chosen option whose plugin is missing (from ``overrides``, or the config Hydra could
    not find, named in its error ``message``), as a :class:`ConfigError`; None if there is none."""
    chosen = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        chosen[key] = value
    for (group, option), (module, extra) in {**PLUGINS, **PRESETS}.items():
        named = chosen.get(group) == option or f"'{group}/{option}'" in message
        if named and not installed(module):
            return ConfigError(group, option, f"an installed plugin ({module.split('.')[-1]} is missing): pip install 'hparam-runner[{extra}]' adds it")
    return None
