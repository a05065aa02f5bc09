"""``train(cfg) -> summary``: validate, build, fit, write. Usable without Hydra's CLI.

Its parts live apart so that other drivers (the fused launcher, torchrun, the Python API)
reuse them: :func:`runner.build.build_run` turns a config into ready-to-train objects and
writes nothing (every error surfaces there, before any output exists); :func:`fit` runs the
epochs against any :class:`MetricLogger`; :mod:`runner.attempts` says what the run directory
already holds and restores a checkpoint; :func:`train` adds the run directory's files.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.attempts import (
    CHECKPOINT_DIR,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    checkpoint_payload,
    comparable_config,
    prior_attempt,
    write_atomic,
    write_json_atomic,
)
from runner.board import board_command, dashboard_dir
from runner.build import Run, build_run
from runner.checkpoint import CheckpointWriter
from runner.describe import describe_run, hparams_of, hydra_job, standardization_line, standardization_of
from runner.epochs import TrainState, run_epochs, summary_of
from runner.errors import RunnerError
from runner.loggers import MetricLogger, TensorBoardLogger
from runner.rundir import DiskFull, RunDirRefused, check_usable, exclusive, is_disk_full, keep_record, restore_record

log = logging.getLogger(__name__)


def fit(run: Run, logger: MetricLogger, state: TrainState | None = None, save_checkpoint: Any = None) -> dict[str, Any]:
    """Train ``run`` (from ``state`` when resuming) and return its summary."""
    if run.distributed is not None:
        state = run.distributed.start(run, state)  # every rank starts from rank 0's state
    return summary_of(run, run_epochs(run, logger, state, save_checkpoint))


def train(cfg: DictConfig, run: Run | None = None) -> dict[str, Any]:
    """Run one experiment and write its TensorBoard event file, ``summary.json`` and ``model.pt``
    to ``cfg.output_dir`` (the event file directly in it: the directory is TensorBoard's run).

    Re-running into the same directory (``resume=auto``) returns a finished run's summary
    untouched, resumes an interrupted or killed one from its checkpoint, and starts a failed
    one over (the failed attempt's files are kept under ``.attempts/``). A rerun with a
    different config, or while another process uses the directory, is refused and changes
    nothing (:mod:`runner.rundir`). ``run``: this config already built by :func:`build_run`
    (the command line's preflight does that).
    """
    run = build_run(cfg) if run is None else replace(run, cfg=cfg)
    out = Path(cfg.output_dir)
    check_usable(out)
    try:
        with exclusive(out):
            try:
                kind, prior = prior_attempt(run, out)
            except RunnerError:
                restore_record(out)
                raise
            if kind == "finished":
                restore_record(out)  # the record stays that of the results
                log.info("%s already holds a finished run (status %s); nothing to do.", out, prior["status"])
                return prior
            keep_record(out)
            return _train_into(run, out, *(prior if kind == "resumable" else (None, None)))
    except RunDirRefused:
        # Another process holds the directory: Hydra had already rewritten its .hydra/ for this job.
        restore_record(out)
        raise
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(out) from None
        raise


def _train_into(run: Run, out: Path, state: TrainState | None, log_position: tuple[Path, int] | None) -> dict[str, Any]:
    cfg = run.cfg
    log.info("Training %s", describe_run(run))
    log.info("%s", standardization_line(run))
    logger = TensorBoardLogger(out, resume_from=log_position)
    hparams = hparams_of(run, *hydra_job(out))

    checkpoints = CheckpointWriter(out / CHECKPOINT_DIR)
    config = comparable_config(cfg)

    def save_checkpoint(current: TrainState) -> None:
        checkpoints.submit(checkpoint_payload(run, current, logger.position(), config))

    status = "failed"
    try:
        with checkpoints:  # every checkpoint on disk before the results say the run ended
            if state is None:
                logger.log_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```")
                logger.log_hparams(hparams)
                save_checkpoint(TrainState())
                checkpoints.wait()  # on disk before the first update: a kill from here on resumes
            summary = fit(run, logger, state, save_checkpoint)
            status = summary["status"]
            run.instruments.finish(out, logger, summary)
    finally:
        try:
            if status != "interrupted":
                logger.log_status(status)
        finally:
            logger.close()
    return write_results(run, out, summary, hparams)


def write_results(run: Run, out: Path, summary: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """Complete the summary and write ``model.pt`` (finite weights of a run not interrupted)
    and ``summary.json``; the fused launcher writes its members' results through this too."""
    status = summary["status"]
    summary["hparams"] = hparams
    summary["processes"] = run.distributed.world if run.distributed is not None else 1  # torchrun's ranks
    summary["standardized"] = standardization_of(run)
    summary["config"] = comparable_config(run.cfg)  # what a rerun into this directory is compared with

    weights_finite = all(torch.isfinite(p).all() for p in run.model.parameters())
    if weights_finite and status != "interrupted":
        weights = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
        write_atomic(out / WEIGHTS_FILE, partial(torch.save, weights))
    summary["weights_saved"] = bool(weights_finite and status != "interrupted")
    write_json_atomic(out / SUMMARY_FILE, summary)
    log.info("Status: %s. Results in %s", summary["status"], out)
    log.info("Open in TensorBoard: %s", board_command(dashboard_dir(out)))
    return summary
