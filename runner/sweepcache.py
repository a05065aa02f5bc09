"""Each sweep job composed once and built once: Hydra's per-job compositions memoised, and the
runs the sweep's validation built handed to the fused launcher.

Before a job of a sweep trains, one process asks Hydra's config loader for that job's config
four times with the same master config and overrides: the sweep's validation
(:func:`runner.sweep.validate_sweep`), the job-directory check (:func:`runner.sweep.check_job_dirs`),
the basic sweeper's ``validate_batch_is_legal`` and the launcher. Composing is most of a small
job's start-up, so :class:`ComposeMemo` keeps the first answer and gives every caller its own
copy. The fused launcher also built every job's run again after the validation had built it
(data, model, optimizer): :func:`keep_validated` and :func:`take_validated` hand it over.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from runner.preflight import config_key

# The launcher that takes the validated runs (it builds every job before training any).
FUSED_LAUNCHER = "hydra_plugins.hpr_fused_launcher.fused_launcher.FusedLauncher"


class ComposeMemo:
    """``ConfigLoader.load_sweep_config`` with each (master overrides, job overrides) composed once.

    Callers change what they get (job number, output directory), so each gets a deep copy;
    the master's resolver cache is copied into it, as Hydra's own method does, so ``${now:}``
    and the like resolve to the sweep's values. A composition that raises is not kept: the
    next caller gets the same error from Hydra itself.
    """

    def __init__(self, load: Callable[[DictConfig, list[str]], DictConfig]):
        self._load = load
        self._composed: dict[tuple[Any, ...], DictConfig] = {}

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = (
            str(master_config.hydra.job.config_name),
            tuple(OmegaConf.to_container(master_config.hydra.overrides.hydra)),
            tuple(sweep_overrides),
        )
        composed = self._composed.get(key)
        if composed is None:
            composed = self._composed[key] = self._load(master_config, list(sweep_overrides))
        job = copy.deepcopy(composed)
        OmegaConf.copy_cache(from_config=master_config, to_config=job)
        return job


def memoise_compositions(loader: Any) -> None:
    """From now on, ``loader`` (the sweep's one config loader, shared by sweeper, launcher and
    callbacks) composes each job once."""
    if not isinstance(loader.__dict__.get("load_sweep_config"), ComposeMemo):
        loader.load_sweep_config = ComposeMemo(loader.load_sweep_config)


def forget_compositions(loader: Any) -> None:
    """``loader`` composes afresh again (the sweep is over), and no validated run is kept."""
    loader.__dict__.pop("load_sweep_config", None)
    _validated.clear()


# Runs built by the sweep's validation, by the fingerprint of their task config, until the
# fused launcher takes them (a list: two jobs of a sweep may have the same config).
_validated: dict[str, list[Any]] = {}


def keeps_validated(config: DictConfig) -> bool:
    """Whether the sweep's launcher takes the validated runs: the fused launcher builds every
    job before training any, so keeping them costs no memory it would not use anyway; the
    others build one job at a time, and keeping every run would hold every job's data at once."""
    return str(OmegaConf.select(config, "hydra.launcher._target_")) == FUSED_LAUNCHER


def keep_validated(task_cfg: DictConfig, run: Any) -> None:
    _validated.setdefault(config_key(task_cfg), []).append(run)


def take_validated(task_cfg: DictConfig) -> Any | None:
    """The run the validation built for a config equal to ``task_cfg`` (``output_dir`` aside),
    now carrying ``task_cfg`` itself; None if there is none. Each run is handed out once: it is
    fresh (never trained), exactly what building ``task_cfg`` again would give."""
    runs = _validated.get(config_key(task_cfg))
    if not runs:
        return None
    return replace(runs.pop(0), cfg=task_cfg)


def drop_validated() -> None:
    _validated.clear()
