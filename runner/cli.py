"""Command line: ``python -m runner [overrides]`` or ``hpr [overrides]``. Only calls :func:`train`."""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import runner.schema  # noqa: F401  (registers the schemas the YAML files extend)
from runner.errors import RunnerError
from runner.train import record_failure, train

log = logging.getLogger(__name__)

# An absolute path: with `python -m runner` Hydra would read a relative one as a module path.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return its final validation (else training) loss for sweepers.

    In a sweep, a job that fails records ``status: failed`` and the sweep goes on; a single
    run exits non-zero instead.
    """
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = train(cfg)
    except RunnerError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # A mistake in the user's config or data: one clear line, no traceback.
        print(f"Error: {err}", file=sys.stderr)
        if not in_sweep:
            raise SystemExit(2) from None
        record_failure(cfg.output_dir, str(err))
        return math.inf
    except Exception as err:
        if not in_sweep:
            raise
        log.exception("Job failed; the sweep goes on.")
        record_failure(cfg.output_dir, f"{type(err).__name__}: {err}", traceback.format_exc())
        return math.inf
    if summary["status"] == "interrupted":
        # Stopped by a signal after saving a checkpoint: exit like an interrupted program,
        # which also stops a sweep; re-running the same command resumes.
        raise SystemExit(130)
    # A sweeper minimising this must rank a diverged or failed run last, not crash on None.
    for key in ("val_loss", "train_loss"):
        if summary[key] is not None:
            return summary[key]
    return math.inf
