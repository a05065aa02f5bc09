"""``hydra/launcher=fused``: a sweep's same-shape jobs trained as one stacked model.

For small models most of a run's time is per-operation overhead, the same for one model as
for K stacked ones; so jobs that differ only in what a stacked model carries per member —
the seed (initial weights, validation split, sample order), the learning rate and the other
optimizer hyperparameters, the scheduler, gradient clipping, early stopping — train
together, each in its own row (:mod:`runner.launchers.stacked`, :mod:`runner.launchers.fused_group`).

Every job still gets what Hydra's basic launcher gives it — its directory, ``.hydra/``
record, log file, callbacks, ``JobReturn`` with the task function's return value — and
its own run's files, written by the single run's own functions: the fused launcher changes
how fast a sweep runs, never its results. A job that cannot be fused (another model, data
set, batch size or length; micro-batches; a time budget; a finished run; a run directory in
use) runs exactly as the basic launcher runs it, and the log says why; a group of one is such
a job.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import traceback
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    _save_config,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.batches import InMemorySplit
from runner.cli import FAULT_ENV
from runner.epochs import TrainState
from runner.errors import RunnerError, print_error
from runner.launchers.fused_group import Member, train_group
from runner.launchers.stacked import stackable_layers
from runner.launchers.stacked_vmap import vmap_refusal
from runner.launchers.stacked_optim import structural_key
from runner.loggers import TensorBoardLogger
from runner.memory import release_device_memory
from runner import outcomes
from runner.sweepcache import drop_validated, take_validated
from runner.rundir import DiskFull, check_usable, exclusive, is_disk_full, keep_record, restore_record
from runner.text import plural
from runner.attempts import prior_attempt, read_summary, record_failure
from runner.build import Run, build_run
from runner.describe import describe_run, hparams_of, hydra_job, standardization_line

log = logging.getLogger(__name__)
train_log = logging.getLogger("runner.train")



@dataclass
class Job:
    """One sweep point: its composed config (``hydra.runtime.output_dir`` set, as ``run_job`` sets it)."""

    idx: int
    config: DictConfig
    out: Path
    run: Run | None = None
    reason: str | None = None  # why it runs alone

    @property
    def task_cfg(self) -> DictConfig:
        return self.run.cfg  # type: ignore[union-attr]


def fusion_key(run: Run) -> tuple[Any, ...] | str:
    """What must agree for runs to share a stacked model, or why this run cannot be stacked."""
    cfg = run.cfg
    if cfg.micro_batch_size is not None:
        return "micro_batch_size is set (an update accumulated in micro-batches runs alone)"
    if cfg.noise.every or cfg.trajectory.record:
        return "an instrument is on (noise.every, trajectory.record: they measure one model's update)"
    if cfg.early_stopping_restore_best:
        return "early_stopping_restore_best is set (the best epoch's weights are kept by the single-run loop)"
    if cfg.cuda_graph:
        return "cuda_graph is set (one run's update is captured)"
    if not isinstance(run.train, InMemorySplit):
        return f"dataset {cfg.dataset.name} is streamed from disk"
    if run.plan.iterations is None:
        return f"budget={cfg.budget} (a time budget is each run's own)"
    layers = stackable_layers(run.model)
    if isinstance(layers, str):
        # Any other module (a user's model=custom) stacks through vmap(functional_call) when exact.
        refusal = vmap_refusal(run.model, run.train.X[:2])
        if refusal is not None:
            return f"{layers}, and {refusal}"
    optimizer = structural_key(run.optimizer)
    if isinstance(optimizer, str):
        return optimizer
    if any(p.dtype != next(run.model.parameters()).dtype for p in run.model.parameters()):
        return "the model mixes dtypes"

    def plain(node: Any) -> str:
        return repr(OmegaConf.to_container(node, resolve=True))

    return (
        plain(cfg.dataset), cfg.val_fraction, len(run.train), len(run.val) if run.val is not None else 0,
        tuple(run.train.X.shape[1:]), tuple(run.train.Y.shape[1:]), plain(cfg.model), plain(cfg.loss), plain(cfg.scaling),
        run.batch_size, cfg.drop_last, tuple(run.plan.iterations), cfg.checkpoint_every, cfg.checkpoint_interval_s, str(run.device), optimizer,
    )


def _describe_key(runs: Sequence[Run]) -> str:
    run = runs[0]
    return (
        f"{run.cfg.dataset.name}, {run.cfg.model._target_.rsplit('.', 1)[-1].lower()}, "
        f"{type(run.optimizer).__name__}, batch size {run.batch_size}, {plural(len(run.plan.iterations), 'epoch')}"
    )


class FusedLauncher(Launcher):
    """Hydra launcher: groups fusable jobs, trains each group stacked, runs the rest one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._jobs: list[Job] = []
        # Per job: Hydra's view of its config, and the root logger's level and handlers as its
        # job_logging left them (see _active).
        self._hydra_cfgs: dict[int, DictConfig] = {}
        self._job_logging: dict[int, tuple[int, list[logging.Handler]]] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    # ------------------------------------------------------------------ launching
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        self._launcher_logging()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally, fusing those that can train as one stacked model")
        jobs = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            jobs.append(self._compose(idx, list(overrides)))
        self._jobs = jobs
        units = self._plan(jobs)
        drop_validated()  # runs of jobs that were not built here (finished, refused) are not needed
        returns: dict[int, JobReturn] = {}
        for unit in units:
            if len(unit) == 1:
                returns[unit[0].idx] = self._run_alone(unit[0])
            else:
                returns.update(self._run_group(unit))
            self._launcher_logging()
        return [returns[job.idx] for job in jobs]

    def _launcher_logging(self) -> None:
        assert self.config is not None
        self._job_logging.clear()  # reconfigured: the jobs' handlers are set up afresh next time
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _compose(self, idx: int, overrides: list[str]) -> Job:
        """The job's config as ``BasicLauncher`` composes it, with its output directory as ``run_job`` sets it."""
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        HydraConfig.instance().set_config(config)
        out = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")), str(OmegaConf.select(config, "hydra.sweep.subdir")))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(out)
        return Job(idx=idx, config=config, out=Path(config.hydra.runtime.output_dir))

    def _plan(self, jobs: list[Job]) -> list[list[Job]]:
        """Jobs in launch order, fusable ones gathered into groups (each at its first job's place)."""
        by_key: dict[Any, list[Job]] = {}
        units: list[list[Job]] = []
        for job in jobs:
            key = self._key(job)
            if isinstance(key, str):
                job.reason = key
                units.append([job])
            elif key in by_key:
                by_key[key].append(job)
            else:
                by_key[key] = [job]
                units.append(by_key[key])
        for unit in units:
            if len(unit) == 1 and unit[0].reason is None:
                unit[0].reason = "no other job of the sweep has its data set, model, loss, optimizer, batch size and length"
        for unit in units:
            if len(unit) == 1:
                log.info(f"#{unit[0].idx} runs alone: {unit[0].reason}")
            else:
                log.info(f"Fusing {len(unit)} jobs into one stacked model ({_describe_key([j.run for j in unit])}): {', '.join(f'#{j.idx}' for j in unit)}")
        return units

    def _key(self, job: Job) -> tuple[Any, ...] | str:
        if os.environ.get(FAULT_ENV) == str(job.idx):
            return f"{FAULT_ENV} injects a failure into it"  # the sweep tests' crash, as the task function raises it
        try:
            check_usable(job.out)
            summary = read_summary(job.out)
        except RunnerError as err:
            return f"its run directory cannot be used as it is ({str(err).splitlines()[0]})"
        if summary is not None and summary.get("status") in ("done", "diverged"):
            return "its run directory already holds a finished run"
        HydraConfig.instance().set_config(job.config)
        task_cfg = copy.deepcopy(job.config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        try:
            # The run the sweep's validation built for this config, else built here.
            job.run = take_validated(task_cfg) or build_run(task_cfg)
        except Exception as err:  # noqa: BLE001 - the job reports it itself, the usual way
            return f"it cannot be built here ({type(err).__name__}); it runs and reports alone"
        return fusion_key(job.run)

    def _run_alone(self, job: Job) -> JobReturn:
        """Exactly what ``BasicLauncher`` does with a job."""
        assert self.hydra_context is not None and self.task_function is not None
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=job.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    # ------------------------------------------------------------------ one job's context
    @contextmanager
    def _active(self, job: Job) -> Iterator[None]:
        """Inside: Hydra's config is the job's, and log lines go to the job's log file (as during its ``run_job``)."""
        previous = HydraConfig.instance().cfg
        self._switch_to(job)
        try:
            yield
        finally:
            HydraConfig.instance().cfg = previous

    def _switch_to(self, job: Job) -> None:
        """Hydra's config and the log handlers of ``job``. A fused group switches between its
        members at every epoch end (each logs its own line), and composing them afresh costs
        tens of milliseconds a switch (Hydra's ``set_config`` copies the config; ``dictConfig``
        builds the handlers and opens the file): done once per job, then the results are put back."""
        hydra_cfg = self._hydra_cfgs.get(job.idx)
        if hydra_cfg is None:
            HydraConfig.instance().set_config(job.config)
            self._hydra_cfgs[job.idx] = HydraConfig.instance().cfg
        else:
            HydraConfig.instance().cfg = hydra_cfg
        root = logging.getLogger()
        cached = self._job_logging.get(job.idx)
        if cached is not None:
            root.setLevel(cached[0])
            root.handlers = list(cached[1])
            return
        job.out.mkdir(parents=True, exist_ok=True)  # run_job creates it before its log file too
        configure_log(job.config.hydra.job_logging, job.config.hydra.verbose)
        for handler in root.handlers:
            # The next job's dictConfig closes these handlers; a FileHandler reopens its file at
            # its next line, in append mode now that the file was created ("w" would empty it).
            if isinstance(handler, logging.FileHandler):
                handler.mode = "a"
        self._job_logging[job.idx] = (root.level, list(root.handlers))

    def _open_job(self, job: Job) -> None:
        """The start of ``run_job``: the directory, logging to its file, the ``.hydra/`` record."""
        config = job.config
        job.out.mkdir(parents=True, exist_ok=True)
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        if config.hydra.output_subdir is not None:
            record = job.out / str(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", record)
            _save_config(copy.deepcopy(HydraConfig.instance().cfg), "hydra.yaml", record)
            _save_config(config.hydra.overrides.task, "overrides.yaml", record)

    # ------------------------------------------------------------------ a fused group
    def _run_group(self, jobs: list[Job]) -> dict[int, JobReturn]:
        returns: dict[int, JobReturn] = {}
        with ExitStack() as held:
            accepted: list[tuple[Job, str, Any]] = []
            for job in jobs:
                locks = ExitStack()
                try:
                    with self._active(job):
                        self._open_job(job)
                        check_usable(job.out)
                        locks.enter_context(exclusive(job.out))
                        kind, prior = prior_attempt(job.run, job.out)
                except (RunnerError, OSError) as err:
                    locks.close()
                    with self._active(job):
                        restore_record(job.out)
                    job.reason = f"its run directory cannot join the group ({str(err).splitlines()[0]})"
                    accepted.append((job, "alone", None))
                    continue
                held.enter_context(locks)
                accepted.append((job, kind, prior))
            joining = self._same_position([(j, k, p) for j, k, p in accepted if k != "alone"])
            if len(joining) >= 2:  # a group of one is a normal job
                members = [self._member(job, kind, prior) for job, kind, prior in accepted if job in joining]
                self._launcher_logging()
                log.info(f"Training {plural(len(members), 'job')} as one stacked model: {', '.join(f'#{j.idx}' for j in joining)}")
                self._train(members)
                if any(member.summary is not None and member.summary["status"] == "interrupted" for member in members):
                    # As the task function does for an interrupted run: exit like an interrupted
                    # program, which also stops the sweep; the same command resumes it.
                    raise SystemExit(130)
                for job, member in zip(joining, members):
                    returns[job.idx] = self._job_return(job, member)
        # Jobs that left the group (their locks are released) run as the basic launcher runs them.
        for job, _, _ in accepted:
            if job.idx not in returns:
                self._launcher_logging()
                log.info(f"#{job.idx} runs alone: {job.reason or 'no other job of its group could join it'}")
                returns[job.idx] = self._run_alone(job)
        return returns

    def _same_position(self, accepted: list[tuple[Job, str, Any]]) -> list[Job]:
        """The jobs that start from the most common position (fresh, or one checkpoint boundary);
        the others leave the group."""
        def position(kind: str, prior: Any) -> tuple[int, int, int]:
            state = prior[0] if kind == "resumable" else TrainState()
            return state.epoch, state.position, state.iteration

        counts = Counter(position(k, p) for _, k, p in accepted)
        if not counts:
            return []
        common = counts.most_common(1)[0][0]
        joining = []
        for job, kind, prior in accepted:
            if position(kind, prior) == common:
                joining.append(job)
            else:
                job.reason = "it resumes from another position than the rest of its group"
        return joining

    def _member(self, job: Job, kind: str, prior: Any) -> Member:
        """What ``run_job`` and :func:`runner.train._train_into` set up for a run, for a member."""
        assert self.hydra_context is not None
        run = job.run
        assert run is not None
        with self._active(job):
            keep_record(job.out)
            with env_override(job.config.hydra.job.env_set):
                self.hydra_context.callbacks.on_job_start(config=job.config, task_function=self.task_function)
            state, position = prior if kind == "resumable" else (None, None)
            train_log.info("Training %s", describe_run(run))
            train_log.info("%s", standardization_line(run))
            logger = TensorBoardLogger(job.out, resume_from=position)
            hparams = hparams_of(run, *hydra_job(job.out))
            fresh = state is None
            if fresh:
                logger.log_text("config", "```yaml\n" + OmegaConf.to_yaml(run.cfg, resolve=True) + "```")
                logger.log_hparams(hparams)
            member = Member(run=run, out=job.out, logger=logger, state=state or TrainState(), hparams=hparams, active=lambda job=job: self._active(job))
            if fresh:
                member.save()
                member.checkpoints.wait()  # on disk before the first update, as a single run's
        return member

    def _train(self, members: list[Member]) -> None:
        """Train the group; a crash records every unfinished member as failed, as the task
        function records a crashed job, and the sweep goes on."""
        try:
            train_group(members)
        except Exception as err:  # noqa: BLE001 - a sweep goes on past a failed job
            disk_full = is_disk_full(err)
            if disk_full:
                # As a single run on a full disk: one line per job, the checkpoints resume it.
                logging.raiseExceptions = False  # the log files cannot take the lines either
            else:
                log.exception("Fused group failed; the sweep goes on.")
            trace = None if disk_full else traceback.format_exc()
            for member in members:
                if member.summary is None:
                    error = str(DiskFull(member.out)) if disk_full else f"{type(err).__name__}: {err}"
                    if disk_full:
                        print_error(error)
                    record_failure(member.out, error, trace, resumable=disk_full)
        finally:
            release_device_memory()
        for member in members:
            summary = member.summary
            self._record(member.out, summary["status"] if summary is not None else "failed")

    def _record(self, out: Path, outcome: str) -> None:
        """A member's outcome in the sweep's ledger, as the task function records a job's."""
        assert self.config is not None
        job = next(j for j in self._jobs if j.out == out)
        outcomes.record(Path(str(self.config.hydra.sweep.dir)), job.idx, out, outcome)

    def _job_return(self, job: Job, member: Member) -> JobReturn:
        """The ``JobReturn`` ``run_job`` builds, with what the task function would have returned."""
        assert self.hydra_context is not None
        with self._active(job):
            ret = JobReturn()
            ret.cfg = job.task_cfg
            ret.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
            ret.overrides = OmegaConf.to_container(job.config.hydra.overrides.task)
            ret.working_dir = os.getcwd()
            ret.return_value = _task_return(member.summary)
            ret.status = JobStatus.COMPLETED
            ret.task_name = JobRuntime.instance().get("name")
            _flush_loggers()
            self.hydra_context.callbacks.on_job_end(config=job.config, job_return=ret)
        return ret


def _task_return(summary: dict[str, Any] | None) -> Any:
    """What ``runner.cli.hydra_main`` returns for a run with this summary."""
    if summary is None or summary.get("status") in ("failed", "oom"):
        return math.inf
    for key in ("val_loss", "train_loss"):
        if summary.get(key) is not None:
            return summary[key]
    return math.inf
