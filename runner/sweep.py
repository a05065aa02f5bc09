"""Sweeps: validate every point first, name jobs by the swept keys; at the end, aggregates and report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from runner import outcomes
from runner.board import board_command
from runner.epochs import LOSS_GREW_FACTOR
from runner.errors import ConfigError, RunnerError, print_error
from runner.memory import OutOfMemory
from runner.text import plural

log = logging.getLogger(__name__)


def finish(root: Path, plots: bool = True) -> Path:
    """Seed aggregates and report for ``root`` (its figures only with ``plots``).

    Nothing else is written for TensorBoard: every run's own event file carries the
    custom-scalars layout, its HParams session and the sweep's HParams experiment
    (:mod:`runner.events.hparams`). A batch-size scaling study also gets ``scaling.json``, its
    figures and B_crit printed before the report, whose section reads them.
    """
    from runner.aggregate import write_seed_aggregates
    from runner.report import write_report
    from runner.scaling.report import finish_study

    write_seed_aggregates(root)
    finish_study(root)  # a batch-size scaling study: scaling.json, its figures, B_crit printed
    return write_report(root, plots=plots)


class SweepConfigError(RunnerError):
    """One or more points of a sweep cannot run; nothing was started."""


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override list of every job the basic sweeper will launch, in its order."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def _gives_several_values(override: Override) -> bool:
    if not override.is_sweep_override():
        return False
    if override.is_interval_sweep():
        return True  # a search space (Optuna): every trial takes its own value
    try:
        return len(set(override.sweep_string_iterator())) > 1
    except Exception:  # noqa: BLE001 - a sweep form we cannot enumerate here (glob) is a sweep
        return True


def split_sweep_keys(config: DictConfig) -> tuple[list[str], list[str]]:
    """(swept, constant) override keys of a sweep, from the preset's ``hydra.sweeper.params``
    and the command line: a key is swept when it is given several values (``batch_size=1,8``,
    ``range(3)``, an Optuna interval) and constant when given one. As the basic sweeper does,
    a later override of a key replaces an earlier one."""
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    final: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task)):
        final[override.key_or_group] = override
    swept = sorted(key for key, override in final.items() if _gives_several_values(override))
    return swept, sorted(set(final) - set(swept))


OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def check_search_space(config: DictConfig) -> None:
    """An Optuna sweep that can run at least one trial, over intervals it can sample: Optuna
    itself fails after the sweep has started (``n_trials=0`` ends in "No trials are completed
    yet", a reversed or non-positive log interval in a ``ValueError`` traceback)."""
    sweeper = config.hydra.sweeper
    if sweeper._target_ != OPTUNA_SWEEPER:
        return
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError(f"hydra.sweeper.{key}", value, "a whole number >= 1")
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    for override in OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task)):
        if not override.is_interval_sweep():
            continue
        space = override.value()
        low, high, log = space.start, space.end, "log" in space.tags
        shown = f"{'tag(log, ' if log else ''}interval({low}, {high}){')' if log else ''}"
        if not low < high:
            raise ConfigError(override.key_or_group, shown, f"an interval whose start is below its end, e.g. interval({high}, {low})")
        if log and low <= 0:
            raise ConfigError(override.key_or_group, shown, "a log interval of positive numbers (its logarithm is sampled), e.g. tag(log, interval(1e-4, 1.0))")


def name_jobs_by_swept_keys(config: DictConfig) -> list[str]:
    """Leave the overrides every job shares out of the job directories' names.

    Each job's config is composed again from ``hydra.overrides.hydra`` plus its own
    overrides, so adding an ``exclude_keys`` override there names every job (in this process
    or a launcher's worker) by the swept keys only: ``batch_size=8/seed=1``, not
    ``batch_size=8,epochs=5,experiment=gd_compare/seed=1``. A sweep with nothing swept keeps
    its overrides in the name. Returns the keys left out.
    """
    swept, constant = split_sweep_keys(config)
    if not swept or not constant:
        return []
    exclude = list(config.hydra.job.config.override_dirname.exclude_keys)
    exclude += [key for key in constant if key not in exclude]
    quoted = ",".join("'" + key.replace("\\", "\\\\").replace("'", "\\'") + "'" for key in exclude)
    with read_write(config.hydra):
        config.hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]")
    return constant


def validate_sweep(config: DictConfig) -> int:
    """Compose and build every sweep point (data, model, optimizer, memory estimate) before the
    first job starts; raise one error listing every point that cannot run. Returns the count."""
    from hydra.core.global_hydra import GlobalHydra

    from runner.data import loaded_once
    from runner.sweepcache import drop_validated, keeps_validated

    # Composed as the launcher will compose the job (memoised: runner.sweepcache), the task
    # part checked and built; its output directory is not known yet and nothing is written.
    loader = GlobalHydra.instance().config_loader()
    keep = keeps_validated(config)
    drop_validated()  # none left from an earlier sweep of this process
    jobs = sweep_jobs(config)
    problems = []
    with loaded_once():
        for number, overrides in enumerate(jobs):
            problem = _validate_point(loader, config, number, overrides, keep)
            if problem is not None:
                problems.append(problem)
    if problems:
        raise SweepConfigError(f"{len(problems)} of {plural(len(jobs), 'sweep point')} cannot run; nothing was started:\n" + "\n".join(problems))
    return len(jobs)


def _validate_point(loader: Any, config: DictConfig, number: int, overrides: list[str], keep: bool) -> str | None:
    """One point of :func:`validate_sweep`: None if it can run, else its line of the error."""
    from runner.cli import GROUPS, check_choices
    from runner.preflight import task_config
    from runner.sweepcache import keep_validated
    from runner.train import build_run

    try:
        job_cfg = task_config(loader.load_sweep_config(config, overrides))
        job_cfg.output_dir = "unused"
        check_choices({k: v for k, v in (o.split("=", 1) for o in overrides if "=" in o) if k in GROUPS})
        run = build_run(job_cfg)
        if keep:
            keep_validated(job_cfg, run)
    except OutOfMemory as err:
        # Free memory is the device's state when the job runs, not a property of the
        # config: the job itself will record status "oom" if it still does not fit.
        log.warning("Sweep point #%d (%s) may not fit: %s", number, " ".join(overrides), err)
    except (RunnerError, HydraException, OmegaConfBaseException) as err:
        return f"  #{number} {' '.join(overrides)}: {str(err).splitlines()[0]}"
    return None


# Statuses that are results: a diverged run answers the question "does this lr work?".
RESULT_STATUSES = outcomes.RESULTS
# The sweep's exit code when any job did not finish (failed, ran out of memory, was refused).
EXIT_JOBS_FAILED = 1


def sweep_outcome(root: Path) -> tuple[str, int]:
    """The sweep's final line and exit code, from the outcome each job of this sweep recorded
    (:mod:`runner.outcomes`), never from the summaries a directory happens to hold: a refused
    job's directory holds another run's ``done``.

    ``15 jobs: 14 done, 1 diverged`` and 0 when every job is a result (done or diverged);
    ``... 1 failed, 1 refused — exit 1`` when any job did not finish. Done runs whose loss
    grew by orders of magnitude are counted in the line, not in the exit code.
    """
    from runner.aggregate import read_summary

    tally = outcomes.counts(root)
    finished = [root / entry["dir"] for entry in outcomes.entries(root).values() if entry["outcome"] in RESULT_STATUSES]
    grew = sum(1 for run in finished if read_summary(run).get("loss_grew"))
    line = f"{plural(sum(tally.values()), 'job')}: " + ", ".join(f"{tally[status]} {status}" for status in outcomes.ordered(tally))
    if not tally:
        line += "no job recorded its outcome"
    if grew:
        line += f" ({grew} of them with a loss that grew by >= {LOSS_GREW_FACTOR:g}x; see report.md)"
    code = 0 if tally and set(tally) <= set(RESULT_STATUSES) else EXIT_JOBS_FAILED
    return (line if code == 0 else f"{line} — exit {code}"), code


def check_job_dirs(config: DictConfig) -> None:
    """Every job's directory is (or can become) a directory, checked before the first job
    starts: Hydra creates it before any of our code runs, and a file there would be a
    traceback that ends the sweep midway."""
    from hydra.core.global_hydra import GlobalHydra

    from runner.preflight import check_path_limits
    from runner.rundir import check_usable

    loader = GlobalHydra.instance().config_loader()
    problems = []
    for number, overrides in enumerate(sweep_jobs(config)):
        job = loader.load_sweep_config(config, overrides)
        with open_dict(job):
            job.hydra.job.num = job.hydra.job.id = number
        out = Path(str(OmegaConf.select(job, "hydra.sweep.dir")), str(OmegaConf.select(job, "hydra.sweep.subdir"))).absolute()
        try:
            # A name from many swept keys can pass NAME_MAX: refused here, not as an OSError mid-sweep.
            check_path_limits("hydra.sweep.subdir", out)
            check_usable(out)
        except RunnerError as err:
            problems.append(f"  #{number} {' '.join(overrides)}: {str(err).splitlines()[0]}")
    if problems:
        raise SweepConfigError(f"{len(problems)} of {plural(len(sweep_jobs(config)), 'job directory', 'job directories')} cannot be used; nothing was started:\n" + "\n".join(problems))


def expected_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep will launch, when the sweeper says so upfront."""
    if config.hydra.sweeper._target_ == BASIC_SWEEPER:
        return len(sweep_jobs(config))
    trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    return trials if isinstance(trials, int) else None


class SweepCallback(Callback):
    """Hydra callback. Before a sweep: validate every point and name jobs by the swept keys.
    After every run and sweep: the report and seed aggregates next to the results.

    A failure while reporting is logged, never raised: it must not turn finished results
    into an error.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from runner.sweepcache import forget_compositions, memoise_compositions

        # Validation, the directory check, the sweeper and the launcher all compose each job
        # the same way: once is enough. Jobs are named first, so that all four ask alike.
        loader = GlobalHydra.instance().config_loader()
        memoise_compositions(loader)
        try:
            self._check_sweep(config)
        except SystemExit:
            forget_compositions(loader)  # refused: no run validated here is launched
            raise

    @staticmethod
    def _check_sweep(config: DictConfig) -> None:
        name_jobs_by_swept_keys(config)
        # Other sweepers (Optuna) choose their points as they go: nothing to validate upfront.
        if config.hydra.sweeper._target_ == BASIC_SWEEPER:
            try:
                log.info("Validated %s.", plural(validate_sweep(config), "sweep point"))
            except SweepConfigError as err:
                # Hydra turns a callback's exception into a warning and carries on; a sweep with
                # an impossible point must not start at all, so leave the process instead.
                print_error(str(err))
                raise SystemExit(2) from None
            try:
                check_job_dirs(config)
            except SweepConfigError as err:
                print_error(str(err))
                raise SystemExit(2) from None
        from runner.rundir import check_usable

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            check_usable(sweep_dir.absolute())  # before the outcome ledger is the first thing written
        except RunnerError as err:
            print_error(str(err))
            raise SystemExit(2) from None
        outcomes.start(sweep_dir, expected_jobs(config))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra creates the run directory right after this: note whether it is new, so
        # that a run refused later can take it away again.
        from runner.preflight import note_run_dir

        note_run_dir(config.hydra.run.dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(Path(config.hydra.runtime.output_dir), plots=bool(config.get("single_run_plots", False)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        from runner.sweepcache import forget_compositions

        forget_compositions(GlobalHydra.instance().config_loader())
        root = Path(config.hydra.sweep.dir)
        self._finish(root)
        line, code = sweep_outcome(root)
        log.log(logging.INFO if code == 0 else logging.ERROR, "Sweep finished: %s", line)
        log.info("Open in TensorBoard: %s", board_command(root))
        if code:
            # Not an exception: Hydra would turn it into a warning and exit 0.
            raise SystemExit(code)

    @staticmethod
    def _finish(root: Path, plots: bool = True) -> None:
        from runner.aggregate import find_runs

        if not root.is_dir() or not find_runs(root):
            return  # no results here (or only runs this sweep was refused: not its results)
        try:
            report = finish(root, plots)
        except Exception:
            log.exception("Could not write the report for %s (the results themselves are complete).", root)
            return
        log.info("Report: %s", report)
