"""Command line: ``python -m runner [overrides]`` or ``hpr [overrides]``. Only calls :func:`train`."""

from __future__ import annotations

import logging
import os
import sys

from pathlib import Path

import hydra
from omegaconf import DictConfig

import runner.schema  # noqa: F401  (registers the schemas the YAML files extend)
from runner.errors import RunnerError
from runner.train import train

log = logging.getLogger(__name__)

# An absolute path: with `python -m runner` Hydra would read a relative one as a module path.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one configuration; return its final validation loss (or training loss) for sweepers."""
    try:
        summary = train(cfg)
    except RunnerError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # A mistake in the user's config or data: one clear line, no traceback.
        print(f"Error: {err}", file=sys.stderr)
        log.debug("configuration error", exc_info=True)
        raise SystemExit(2) from None
    return summary["val_loss"] if summary["val_loss"] is not None else summary["train_loss"]
