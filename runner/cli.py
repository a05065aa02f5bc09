"""Command line: ``python -m runner [overrides]`` or ``hpr [overrides]``. Only calls :func:`train`."""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import runner.schema  # noqa: F401  (registers the schemas the YAML files extend)
from runner.errors import ConfigError, RunnerError
from runner.memory import OutOfMemory, release_device_memory
from runner.rundir import DiskFull, RunDirRefused
from runner.train import record_failure, train

log = logging.getLogger(__name__)

# An absolute path: with `python -m runner` Hydra would read a relative one as a module path.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler", "regime", "experiment")
# Fault injection for the sweep tests: the job with this number raises, as a crash would.
FAULT_ENV = "RUNNER_FAULT_FAIL_JOB"


def check_choices(choices: dict[str, str | None]) -> None:
    """A group option is a name in its folder: ``dataset=../config`` would make Hydra read a
    file outside the group (and its name could end up in a path)."""
    for group in GROUPS:
        choice = choices.get(group)
        if choice is not None and ("/" in choice or "\\" in choice or ".." in choice):
            raise ConfigError(group, choice, f"the name of a file in conf/{group}/ (no '/' or '..')")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its final validation (else training) loss for sweepers.

    In a sweep, a job that fails records its status (``failed``, ``oom``) and the sweep goes
    on; a single run exits non-zero instead.
    """
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        check_choices(dict(hydra_cfg.runtime.choices))
        if in_sweep and os.environ.get(FAULT_ENV) == str(hydra_cfg.job.num):
            raise RuntimeError(f"failure injected by {FAULT_ENV} for job {hydra_cfg.job.num}")
        summary = train(cfg)
    except RunnerError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # A mistake in the user's config or data, or a run too big for the device:
        # one clear line, no traceback.
        print(f"Error: {err}", file=sys.stderr)
        if not in_sweep:
            raise SystemExit(2) from None
        if not isinstance(err, RunDirRefused):  # a refused job's directory holds another run's results
            record_failure(cfg.output_dir, str(err), status="oom" if isinstance(err, OutOfMemory) else "failed", resumable=isinstance(err, DiskFull))
        return math.inf
    except torch.OutOfMemoryError as err:
        if not in_sweep:
            raise
        log.error("Out of memory: %s. Set micro_batch_size to compute the same update in chunks.", err)
        record_failure(cfg.output_dir, f"out of memory: {err}. Set micro_batch_size.", status="oom")
        return math.inf
    except Exception as err:
        if not in_sweep:
            raise
        log.exception("Job failed; the sweep goes on.")
        record_failure(cfg.output_dir, f"{type(err).__name__}: {err}", traceback.format_exc())
        return math.inf
    finally:
        release_device_memory()
    if summary["status"] == "interrupted":
        # Stopped by a signal after saving a checkpoint: exit like an interrupted program,
        # which also stops a sweep; re-running the same command resumes.
        raise SystemExit(130)
    # A sweeper minimising this must rank a diverged or failed run last, not crash on None.
    for key in ("val_loss", "train_loss"):
        if summary[key] is not None:
            return summary[key]
    return math.inf
