"""What a run directory already holds and how a run continues from it: the summary read back,
a checkpoint checked against the config and restored, a finished or another config's run
refused, an earlier attempt set aside, a failure recorded; the atomic writes of its files."""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.aggregate import SUMMARY_FILE
from runner.events.read import event_files
from runner.build import Run
from runner.checkpoint import load_checkpoint, restore_rng_state, rng_state
from runner.checkpoint_check import check_checkpoint
from runner.epochs import TrainState
from runner.errors import ConfigError
from runner.rundir import NEW_DIRECTORY, RunDirRefused, event_file
from runner.safefs import open_inside

log = logging.getLogger(__name__)

WEIGHTS_FILE, CHECKPOINT_DIR = "model.pt", "checkpoints"
CHECKPOINT_FORMAT = 2  # 2: the event file by name; 1 stored its path
# Keys a rerun into the same directory may change: they continue or extend a run, never change what it computes.
RESUMABLE_KEYS = {"epochs", "budget_amount", "progress", "resume", "checkpoint_every", "checkpoint_interval_s", "device", "output_dir", "eval_batch_size", "single_run_plots"}


def write_atomic(path: Path, write: Any) -> None:
    """``write(tmp)``, then rename over ``path``: a reader sees the old file or the new one,
    and a failed write (a full disk) leaves no temporary file behind."""
    tmp = path.with_name(f".writing-{path.name}")
    try:
        with open_inside(path.parent, tmp, "wb") as handle:  # never through a link planted there
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda handle: handle.write((json.dumps(payload, indent=2) + "\n").encode()))


def record_failure(output_dir: str | Path, error: str, trace: str | None = None, status: str = "failed", resumable: bool = False) -> None:
    """Leave ``summary.json`` with the status (``failed``, ``oom``) and the error, so a sweep's
    report shows the job. No weights and no events: nothing that looks like a result.

    ``resumable``: the checkpoint is still good (a full disk), so a rerun continues from it
    instead of starting over. Best effort: on a full disk even this may not fit.
    """
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / SUMMARY_FILE, {"status": status, "error": error, "traceback": trace, "resumable": resumable})
    except OSError as err:
        log.error("Could not record the failure in %s: %s", out, err)


def comparable_config(cfg: DictConfig) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in resolved.items() if k not in RESUMABLE_KEYS}


def _config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def checkpoint_payload(run: Run, state: TrainState, log_position: tuple[str, int], config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds; ``config``: ``comparable_config(run.cfg)``, resolved once per
    run by the caller (resolving it costs more than the rest of the payload)."""
    event_path, size = log_position
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "state": state.to_dict(),
        "rng": rng_state(run.order_generator),
        "instruments": run.instruments.state_dict(),
        # The event file's name only, never a path: a copied or moved run continues its own file.
        "tensorboard": [Path(event_path).name, size],
    }


def _refuse_other_config(out: Path, saved: Any, cfg: DictConfig) -> None:
    """A directory holds the results of one config: a rerun may only change the keys that
    continue or extend a run (``RESUMABLE_KEYS``)."""
    if not isinstance(saved, dict):
        return  # nothing recorded to compare with (a run made before configs were recorded)
    diffs = _config_differences(saved, comparable_config(cfg))
    if diffs:
        raise RunDirRefused(
            out,
            f"holds a run made with a different config (differences: {'; '.join(diffs)}); only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change. Use resume=never in a new output directory to start over",
        )


def _restore(run: Run, payload: dict[str, Any]) -> TrainState:
    """Put a checkpoint back into ``run``. Raises on a payload of the wrong shape (wrong keys,
    tensor shapes, types): the caller then tries the previous checkpoint."""
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    restore_rng_state(payload["rng"], run.order_generator)
    run.instruments.load_state_dict(payload.get("instruments"))
    # A checkpoint saved on the way out of a stop says "interrupted"; resumed, it runs again.
    state = TrainState(**{**payload["state"], "status": "running"})
    if state.best_weights is not None:  # checkpoints are loaded onto the CPU
        state.best_weights = {k: v.to(run.device) for k, v in state.best_weights.items()}
    if not (isinstance(state.iteration, int) and isinstance(state.epoch, int) and state.iteration >= 0 and state.epoch >= 1):
        raise ValueError(f"impossible position: epoch {state.epoch!r}, iteration {state.iteration!r}")
    return state


def _resume_point(run: Run, out: Path, payload: Any, path: Path) -> tuple[TrainState, tuple[Path, int]]:
    """Check one loaded checkpoint against this run and restore it: the state and where the
    event file is cut back to. A different config is refused; anything malformed raises."""
    _refuse_other_config(out, payload["config"], run.cfg)
    check_checkpoint(run, payload)  # a state this runner could have written, or the previous checkpoint
    state = _restore(run, payload)
    stored, size = payload["tensorboard"]
    if payload.get("format") == 1 and isinstance(stored, str):
        stored = Path(stored).name  # format 1 stored the path it was written at
    path = event_file(out, stored)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise RunDirRefused(out / CHECKPOINT_DIR, f"the checkpoint says the event file ends at {size!r}, which is not a length this runner writes (a whole number of bytes > 0); it is not a checkpoint this runner wrote: {NEW_DIRECTORY}")
    if size > path.stat().st_size:
        raise RunDirRefused(path, f"is {path.stat().st_size} bytes, shorter than the {size} bytes the checkpoint says; restore it, or use resume=never in a new output directory")
    return state, (path, size)


def read_summary(out: Path) -> dict[str, Any] | None:
    path = out / SUMMARY_FILE
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        problem = f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    else:
        if isinstance(summary, dict) and isinstance(summary.get("status"), str):
            return summary
        problem = "is not a run summary (no status)"
    raise RunDirRefused(
        path, f"{problem}; it is damaged or not written by this runner. Move it away to resume from the checkpoint, or use resume=never in a new output directory"
    )


def _set_aside(out: Path, reason: str) -> None:
    """Move a previous attempt's files into ``out/.attempts/<n>-<reason>/``: nothing is deleted."""
    # The event files sit in the run directory itself: they go with the attempt they belong to.
    leftovers = [p for p in (*event_files(out), out / CHECKPOINT_DIR, out / SUMMARY_FILE, out / WEIGHTS_FILE) if p.exists()]
    if not leftovers:
        return
    attempts = out / ".attempts"
    target = attempts / f"{len(list(attempts.glob('*'))) + 1 if attempts.exists() else 1}-{reason}"
    target.mkdir(parents=True)
    for path in leftovers:
        os.replace(path, target / path.name)
    log.warning("Moved the previous attempt's files (%s) to %s", reason, target)


def prior_attempt(run: Run, out: Path) -> tuple[str, Any]:
    """What the output directory already holds: ``finished`` (with its summary), ``resumable``
    (with the restored state and event-file position), or ``fresh``. Applies ``resume``
    (auto|must|never)."""
    cfg = run.cfg
    summary = read_summary(out)
    status = summary["status"] if summary else None
    if status in ("done", "diverged"):
        if cfg.resume == "never":
            raise ConfigError("output_dir", str(out), "a directory without a finished run (or resume=auto to keep its result)")
        _refuse_other_config(out, summary.get("config"), cfg)
        return "finished", summary
    restartable = cfg.resume != "never" and (status not in ("failed", "oom") or summary.get("resumable") is True)
    resumed = load_checkpoint(out / CHECKPOINT_DIR, partial(_resume_point, run, out)) if restartable else None
    if resumed is not None:
        (state, position), path = resumed
        log.info("Resuming from %s (iteration %d).", path, state.iteration)
        return "resumable", (state, position)
    if cfg.resume == "must":
        raise ConfigError("resume", "must", f"a run to resume, and {out} has no loadable checkpoint (use resume=auto)")
    _set_aside(out, status or "incomplete")
    return "fresh", None
