"""End of a sweep (or a run): aggregates, TensorBoard layout and HParams experiment, report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from collections import Counter

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from runner.epochs import LOSS_GREW_FACTOR
from runner.errors import RunnerError
from runner.loggers import hparams_pb
from runner.memory import OutOfMemory
from runner.tbwriter import EventWriter

log = logging.getLogger(__name__)

HPARAMS_DIR = "_hparams"
# The final values the HParams tab lists for each run (the last point of each series).
METRIC_TAGS = ("loss/train_full", "loss/val", "acc/train", "acc/val", "loss/train_epoch")


def write_hparams_experiment(root: Path) -> Path | None:
    """One HParams experiment for the whole sweep, at ``root/_hparams``.

    TensorBoard uses the first experiment summary it finds, so there is exactly one, listing
    every hyperparameter with the values the runs took (discrete domains make the table
    filterable) and the metric tags above. Rewritten from the runs' summary.json each time.
    """
    from runner.aggregate import find_runs

    values: dict[str, set[Any]] = {}
    for run in find_runs(root):
        summary = json.loads((run / "summary.json").read_text())
        for name, value in (summary.get("hparams") or {}).items():
            values.setdefault(name, set()).add(value)
    if not values:
        return None
    experiment = api_pb2.Experiment()
    for name in sorted(values):
        info = experiment.hparam_infos.add(name=name)
        seen = values[name]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_discrete.extend(sorted(float(v) for v in seen))
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(sorted(str(v) for v in seen))
    for tag in METRIC_TAGS:
        experiment.metric_infos.add(name=api_pb2.MetricName(tag=tag))
    data = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)

    folder = root / HPARAMS_DIR
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    with EventWriter(folder) as writer:
        writer.add_summary(hparams_pb(metadata.EXPERIMENT_TAG, data), step=0)
    return folder


def finish(root: Path) -> Path:
    """Seed aggregates, TensorBoard layout, HParams experiment and report for ``root``."""
    from runner.aggregate import write_layout, write_seed_aggregates
    from runner.report import write_report

    write_seed_aggregates(root)
    write_layout(root)
    write_hparams_experiment(root)
    return write_report(root)


class SweepConfigError(RunnerError):
    """One or more points of a sweep cannot run; nothing was started."""


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of every job the basic sweeper will launch, in its order."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def validate_sweep(config: DictConfig) -> int:
    """Compose and build every sweep point (data, model, optimizer, memory estimate) before the
    first job starts; raise one error listing every point that cannot run. Returns the count."""
    from runner.cli import GROUPS, check_choices
    from runner.train import build_run

    jobs = sweep_jobs(config)
    problems = []
    for number, overrides in enumerate(jobs):
        try:
            job_cfg = compose(config_name=config.hydra.job.config_name, overrides=[*overrides, "output_dir=unused"])
            check_choices({k: v for k, v in (o.split("=", 1) for o in overrides if "=" in o) if k in GROUPS})
            build_run(job_cfg)
        except OutOfMemory as err:
            # Free memory is the device's state when the job runs, not a property of the
            # config: the job itself will record status "oom" if it still does not fit.
            log.warning("Sweep point #%d (%s) may not fit: %s", number, " ".join(overrides), err)
        except (RunnerError, HydraException, OmegaConfBaseException) as err:
            problems.append(f"  #{number} {' '.join(overrides)}: {str(err).splitlines()[0]}")
    if problems:
        raise SweepConfigError(f"{len(problems)} of {len(jobs)} sweep points cannot run; nothing was started:\n" + "\n".join(problems))
    return len(jobs)


# Statuses that are results: a diverged run answers the question "does this lr work?".
RESULT_STATUSES = ("done", "diverged")
# The sweep's exit code when any job failed or ran out of memory (its results are incomplete).
EXIT_JOBS_FAILED = 1


def sweep_outcome(root: Path) -> tuple[str, int]:
    """The sweep's final line and exit code, from the runs' summary.json under ``root``.

    ``15 jobs: 14 done, 1 diverged`` and 0 when every job is a result (done or diverged);
    ``... 1 failed — exit 1`` when any job failed or ran out of memory. Done runs whose loss
    grew by orders of magnitude are counted in the line, not in the exit code.
    """
    from runner.aggregate import find_runs

    summaries = [json.loads((run / "summary.json").read_text()) for run in find_runs(root)]
    counts = Counter(summary.get("status", "unknown") for summary in summaries)
    grew = sum(1 for summary in summaries if summary.get("loss_grew"))
    jobs = f"{len(summaries)} job" + ("" if len(summaries) == 1 else "s")
    order = [*RESULT_STATUSES, "failed", "oom", "interrupted"]
    statuses = sorted(counts, key=lambda status: (order.index(status) if status in order else len(order), status))
    line = f"{jobs}: " + ", ".join(f"{counts[status]} {status}" for status in statuses)
    if grew:
        line += f" ({grew} of them with a loss that grew by >= {LOSS_GREW_FACTOR:g}x; see report.md)"
    code = 0 if set(counts) <= set(RESULT_STATUSES) else EXIT_JOBS_FAILED
    return (line if code == 0 else f"{line} — exit {code}"), code


class SweepCallback(Callback):
    """Hydra callback. Before a sweep: validate every point. After every run and sweep: the
    report, aggregates and TensorBoard extras next to the results.

    A failure while reporting is logged, never raised: it must not turn finished results
    into an error.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper._target_ != BASIC_SWEEPER:
            return  # other sweepers (Optuna) choose their points as they go
        try:
            log.info("Validated all %d sweep points.", validate_sweep(config))
        except SweepConfigError as err:
            # Hydra turns a callback's exception into a warning and carries on; a sweep with
            # an impossible point must not start at all, so leave the process instead.
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        self._finish(root)
        if not root.is_dir():
            return
        line, code = sweep_outcome(root)
        if code == 0:
            log.info("Sweep finished: %s", line)
            return
        log.error("Sweep finished: %s", line)
        # Not an exception: Hydra would turn it into a warning and exit 0.
        raise SystemExit(code)

    @staticmethod
    def _finish(root: Path) -> None:
        if not root.is_dir() or not any(root.rglob("summary.json")):
            return
        try:
            report = finish(root)
        except Exception:
            log.exception("Could not write the report for %s (the results themselves are complete).", root)
            return
        log.info("Report: %s", report)
        log.info("TensorBoard: tensorboard --logdir %s --host 127.0.0.1 --samples_per_plugin scalars=0", root)
