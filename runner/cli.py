"""Command line: ``python -m runner [overrides]`` or ``hpr [overrides]``.

:func:`run_cli` composes and checks the command line first (:mod:`runner.preflight`), so a
refused one writes nothing, then hands it to Hydra, whose task function only calls :func:`train`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra._internal.hydra import Hydra
from hydra._internal.utils import (
    create_automatic_config_search_path,
    detect_calling_file_or_module_from_task_function,
    detect_task_name,
    get_args_parser,
)
from hydra.core.global_hydra import GlobalHydra
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

import runner.schema  # noqa: F401  (registers the schemas the YAML files extend)
from runner import compose_cache, fastexit, outcomes, preflight
from runner.errors import ConfigError, RunnerError, print_error
from runner.cluster import check_slurm_reachable, join_ray_cluster
from runner.extras import missing_extra
from runner.launchers import distributed
from runner.memory import OutOfMemory, release_device_memory
from runner.rundir import DiskFull, RunDirRefused
from runner.sweep import check_search_space
from runner.attempts import record_failure
from runner.build import Run, build_run
from runner.train import train
from runner.validate import unknown_key_allowed

log = logging.getLogger(__name__)

# The configs ship inside the package (runner/conf links to the top-level conf/, and an install
# copies it), so this one path holds from the source tree, an editable install and a plain one.
# Absolute: with `python -m runner` Hydra would read a relative one as a module path.
CONF_DIR = (Path(__file__).parent / "conf").resolve()
GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler", "regime", "experiment", "scaling")
# Fault injection for the sweep tests: the job with this number raises, as a crash would.
FAULT_ENV = "RUNNER_FAULT_FAIL_JOB"


def check_choices(choices: dict[str, str | None]) -> None:
    """A group option is a name in its folder: ``dataset=../config`` would make Hydra read a
    file outside the group (and its name could end up in a path)."""
    for group in GROUPS:
        choice = choices.get(group)
        if choice is not None and ("/" in choice or "\\" in choice or ".." in choice):
            raise ConfigError(group, choice, f"the name of a file in conf/{group}/ (no '/' or '..')")


# The run built by the preflight of a single run, reused by the task function (data loaded once).
_prebuilt: dict[str, Run] = {}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
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
        summary = train(cfg, _prebuilt.pop(preflight.config_key(cfg), None))
    except RunDirRefused as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print_error(one_line(err))
        if not in_sweep:
            preflight.remove_fresh_run_dir(hydra_cfg)
            raise SystemExit(2) from None
        # Its directory holds another config's run, or another process writes it: that run is
        # not this job's result, and nothing is recorded over it.
        _record_outcome(hydra_cfg, outcomes.REFUSED, one_line(err))
        return math.inf
    except RunnerError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # A mistake in the user's config or data, or a run too big for the device:
        # one clear line, no traceback.
        print_error(one_line(err))
        if not in_sweep:
            preflight.remove_fresh_run_dir(hydra_cfg)
            # A rank lost under torchrun is a fault, not a mistake in the command line.
            raise SystemExit(1 if isinstance(err, distributed.PeerLost) else 2) from None
        status = "oom" if isinstance(err, OutOfMemory) else "failed"
        record_failure(cfg.output_dir, str(err), status=status, resumable=isinstance(err, DiskFull))
        _record_outcome(hydra_cfg, status, one_line(err))
        return math.inf
    except torch.OutOfMemoryError as err:
        if not in_sweep:
            raise
        log.error("Out of memory: %s. Set micro_batch_size to compute the same update in chunks.", err)
        record_failure(cfg.output_dir, f"out of memory: {err}. Set micro_batch_size.", status="oom")
        _record_outcome(hydra_cfg, "oom", str(err))
        return math.inf
    except Exception as err:
        if not in_sweep:
            raise
        log.exception("Job failed; the sweep goes on.")
        record_failure(cfg.output_dir, f"{type(err).__name__}: {err}", traceback.format_exc())
        _record_outcome(hydra_cfg, "failed", f"{type(err).__name__}: {err}")
        return math.inf
    finally:
        release_device_memory()
    if in_sweep:
        _record_outcome(hydra_cfg, summary["status"])
    if summary["status"] == "interrupted":
        # Stopped by a signal after saving a checkpoint: exit like an interrupted program,
        # which also stops a sweep; re-running the same command resumes.
        raise SystemExit(130)
    # A sweeper minimising this must rank a diverged or failed run last, not crash on None.
    for key in ("val_loss", "train_loss"):
        if summary[key] is not None:
            return summary[key]
    return math.inf


def _record_outcome(hydra_cfg: Any, outcome: str, error: str | None = None) -> None:
    """What this sweep job ended as, in the sweep's ledger (:mod:`runner.outcomes`)."""
    if hydra_cfg.mode == RunMode.MULTIRUN:
        outcomes.record(Path(str(hydra_cfg.sweep.dir)), int(hydra_cfg.job.num), Path(str(hydra_cfg.runtime.output_dir)), outcome, error)


def one_line(err: RunnerError) -> str:
    """The message on one line: some list every path they tried, one per line."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _hydra_one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's messages span lines (with the search path and a hint about
    HYDRA_FULL_ERROR); keep what names the key, the value and the choices, on one line."""
    parts: list[str] = []
    while err is not None:
        for line in str(err).splitlines():
            line = line.strip()
            # The search path, a hint to use `+key` (refused here too) and the env-var hint.
            if line.startswith(("Config search path", "provider=", "To append")) or "HYDRA_FULL_ERROR" in line:
                continue
            if line and line not in parts:
                parts.append(line)
        err = err.__cause__
    return " ".join(part if part.endswith((":", ".", ";")) else part + ";" for part in parts).rstrip(";")


def _unknown_key(err: BaseException, overrides: list[str]) -> ConfigError | None:
    """Hydra's error for ``typo=1`` names neither the value nor the keys there are."""
    cause = err.__cause__
    if not (isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(cause.object_type)):
        return None
    key = cause.full_key
    fields = [f.name for f in dataclasses.fields(cause.object_type)]
    if key.startswith("hydra.launcher."):
        chosen = _given("hydra/launcher", overrides)
        launcher = f"hydra/launcher={chosen}" if chosen else f"the launcher ({cause.object_type.__name__})"
        return ConfigError(key, _given(key, overrides), preflight.launcher_keys_allowed(key, fields, launcher))
    given = _given(key, overrides)
    return ConfigError(key, given, unknown_key_allowed(key, fields, given))


def _missing_option(err: BaseException, overrides: list[str]) -> ConfigError | None:
    """``optimizer=adma``: Hydra lists the group's options; name the nearest too."""
    if not isinstance(err, MissingConfigException) or not err.options or "/" not in (err.missing_cfg_file or ""):
        return None
    group, option = err.missing_cfg_file.rsplit("/", 1)
    options = sorted(err.options)
    close = difflib.get_close_matches(option, options, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(f'{group}={c}' for c in close)}?" if close else ""
    return ConfigError(group, _given(group, overrides) or option, f"one of {', '.join(options)} (conf/{group}/*.yaml){hint}")


def _group_overrides(overrides: list[str]) -> list[tuple[str, str, list[str]]]:
    """(group, value, its options) for each override of a config group on the command line."""
    found = []
    for override in overrides:
        key, sep, value = override.partition("=")
        group = key.lstrip("+~")
        if sep and group and (CONF_DIR / group).is_dir():
            found.append((group, value, sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))))
    return found


def _group_value(overrides: list[str]) -> ConfigError | None:
    """A config group given a value that is no option of it (Hydra reads ``scaling=1.5`` as a
    float and raises a bare ValueError): name the group and its options."""
    for group, value, options in _group_overrides(overrides):
        if value not in options and value != "null":
            return ConfigError(group, value, f"one of {', '.join(options)} (conf/{group}/*.yaml)")
    return None


def check_group_paths(overrides: list[str]) -> None:
    """A group option given as a path (``scaling=../config``) is refused before Hydra composes
    it: Hydra would read a file outside the group and answer with a "Could not find" line about
    that file's own defaults. The message names the group's options instead."""
    for group, value, options in _group_overrides(overrides):
        if group in GROUPS and any(part in value for part in ("/", "\\", "..")):
            raise ConfigError(group, value, f"one of {', '.join(options)} (conf/{group}/*.yaml; a name, no '/' or '..')")


# OmegaConf's words for a value that is not of the key's type, in the user's words.
_TYPE_WORDS = {"Float": "a number, e.g. 0.01 or 1e-3", "Integer": "a whole number", "Boolean": "true or false"}


def _wrong_type(err: BaseException, overrides: list[str]) -> ConfigError | None:
    """``optimizer.lr=abc``: OmegaConf's text names its own classes; say what the key takes."""
    cause = err.__cause__
    if not isinstance(cause, ValidationError) or not cause.full_key:
        return None
    found = re.search(r"could not be converted to (\w+)", str(cause))
    allowed = _TYPE_WORDS.get(found.group(1), f"a value of type {found.group(1).lower()}") if found else str(cause).splitlines()[0]
    return ConfigError(cause.full_key, _given(cause.full_key, overrides), allowed)


def _unparsable(err: BaseException) -> RunnerError | None:
    """An override Hydra's grammar cannot read (``;``, ``|``, unbalanced quotes, bytes that are
    not UTF-8): the value needs quoting, so show how."""
    if not isinstance(err, OverrideParseException):
        return None
    return RunnerError(f"the override {err.override!r} cannot be parsed: {quote_hint(err.override)}")


def quote_hint(override: str) -> str:
    """How to write ``key=value`` so Hydra reads the value as one string, on a POSIX shell:
    Hydra's double quotes inside the shell's single quotes."""
    key, sep, value = override.partition("=")
    if not sep:
        return "write it as key=value"
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in override):  # bytes Python could not decode
        return "it is not UTF-8 text; values and keys must be UTF-8"
    inner = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "quote it like this: " + shlex.quote(f"{key.strip()}={inner}")


def check_number_lengths(overrides: list[str]) -> None:
    """A whole number longer than Python converts (``seed=`` and 50,000 digits) would be a
    ``ValueError`` traceback from Hydra's parser: refuse it here, naming the key."""
    limit = sys.get_int_max_str_digits() or math.inf
    for override in overrides:
        key, sep, value = override.partition("=")
        digits = value.strip().lstrip("+-").replace("_", "")
        if sep and digits.isdigit() and len(digits) > limit:
            shown = f"{value.strip()[:12]}... ({len(digits)} digits)"
            raise ConfigError(key.lstrip("+~"), shown, f"a number of at most {limit} digits (every key that takes a number has a far smaller range)")


def _given(key: str, overrides: list[str]) -> str | None:
    """The value the command line gave ``key`` (the last one wins, as in Hydra)."""
    given = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == key]
    return given[-1] if given else None


def _mode_settable(args: Any) -> bool:
    """Whether the composed config could set ``hydra.mode``: no file in ``conf/`` does
    (``tests/test_startup.py`` reads every ``_global_`` one, the only kind that could), so only the user's own configs
    (``--config-dir``, ``--config-path``, ``--config-name``), ``hydra.mode`` itself, the whole
    ``hydra`` node, its search path or one of its groups' options (``hydra/launcher=...``) can.
    A value such as ``hydra.run.dir=...`` cannot."""
    if args.config_dir is not None or args.config_path is not None or args.config_name not in (None, "config"):
        return True
    keys = (o.split("=", 1)[0].strip().lstrip("+~") for o in args.overrides)
    return any(key in ("hydra", "hydra.mode") or key.startswith(("hydra/", "hydra.searchpath")) for key in keys)


def _mode_as_hydra_picks(app: Hydra, config_name: str, args: Any) -> tuple[RunMode, list[str]]:
    """Run or multirun, and the overrides Hydra composes with, as ``hydra._internal.utils._run_app``
    decides them (it adds ``hydra.mode=...`` where the config does not set it), so the
    composition checked here is the one Hydra runs (and :mod:`runner.compose_cache` can answer it)."""
    if _mode_settable(args):
        detected = app.get_mode(config_name=config_name, overrides=args.overrides)
    else:
        detected = None  # what Hydra's detection (a whole composition) would find; kept for Hydra's own
        compose_cache.known_mode(app, config_name, args.overrides, detected)
    overrides = list(args.overrides)
    if detected is None:
        mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
        overrides.append(f"hydra.mode={mode.name}")
    elif args.multirun and detected == RunMode.RUN:
        mode = RunMode.MULTIRUN
        overrides.append("hydra.mode=MULTIRUN")
    else:
        mode = detected
    return mode, overrides


def _preflight(args: Any, session: distributed.Session | None = None) -> None:
    """Compose the command line as Hydra will and check it; for a single run, also build it
    (under torchrun: as this rank trains it)."""
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(hydra_main)
    search_path = create_automatic_config_search_path(calling_file, calling_module, str(CONF_DIR) if args.config_path is None else args.config_path)
    if args.config_dir is not None:
        if not os.path.isdir(args.config_dir):
            return  # Hydra reports a missing one itself, writing nothing
        path = f"file://{os.path.abspath(args.config_dir)}"
        search_path.prepend(provider="command-line", path=path, anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    try:
        check_number_lengths(args.overrides)
        check_group_paths(args.overrides)
        app = Hydra.create_main_hydra2(task_name=detect_task_name(calling_file, calling_module), config_search_path=search_path)
        config_name = args.config_name or "config"
        mode, overrides = _mode_as_hydra_picks(app, config_name, args)
        multirun = mode == RunMode.MULTIRUN
        try:
            cfg = app.compose_config(config_name, overrides, run_mode=mode, with_log_configuration=False)
        except (ValueError, TypeError) as err:  # Hydra's defaults list: a group given a number (``scaling=1.5``, ``scaling=[1]``)
            raise _group_value(overrides=args.overrides) or RunnerError(str(err).splitlines()[0]) from None
        except (HydraException, OmegaConfBaseException) as err:
            raise (
                missing_extra(args.overrides, str(err))
                or _unknown_key(err, args.overrides) or _missing_option(err, args.overrides) or _wrong_type(err, args.overrides)
                or _unparsable(err) or RunnerError(_hydra_one_line(err))
            ) from None
        preflight.check_hydra(cfg, multirun)
        if multirun:
            check_search_space(cfg)
        if session is not None:
            distributed.check_command(multirun)
        task = preflight.task_config(cfg)
        preflight.check_output_dir(task)
        runs_a_job = args.run or not (args.cfg or args.info or args.shell_completion)
        if multirun and runs_a_job:
            check_slurm_reachable(cfg.hydra.launcher, str(cfg.hydra.runtime.choices.get("hydra/launcher")))
            join_ray_cluster(cfg.hydra.launcher)
        if multirun or not runs_a_job:
            return  # a sweep's points are checked by SweepCallback.on_multirun_start
        HydraConfig.instance().set_config(cfg)
        try:
            check_choices(dict(cfg.hydra.runtime.choices))
            _prebuilt.clear()
            run = build_run(task)
            _prebuilt[preflight.config_key(task)] = run if session is None else distributed.distribute(run, session)
        except OmegaConfBaseException as err:  # e.g. an interpolation to a key that does not exist
            key = err.full_key or "config"
            raise ConfigError(key, _given(key, args.overrides), _hydra_one_line(err)) from None
    finally:
        GlobalHydra.instance().clear()


def run_cli(argv: list[str]) -> int:
    """Run the command line ``argv`` (without the program name); return the exit status.

    Under torchrun every rank checks and builds the run; only rank 0 goes on through Hydra
    (:mod:`runner.launchers.distributed`), the others train alongside it.
    """
    args = get_args_parser().parse_known_args(argv)[0]
    if args.help or args.hydra_help:
        with compose_cache.listing():
            return _hydra_cli(argv)
    try:
        session = distributed.join()
    except RunnerError as err:
        print_error(one_line(err))
        return 2 if isinstance(err, ConfigError) else 1
    try:
        error = None
        try:
            with compose_cache.recording():
                _preflight(args, session)
        except RunnerError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" and session is None:
                raise
            error = one_line(err)
        if session is not None:
            try:
                error = session.agree_error(error)  # every rank refuses, or none does
            except distributed.PeerLost as lost:
                print_error(one_line(lost))
                return 1
        if error is not None:
            if session is None or session.leader:  # every rank refuses; one says so
                print_error(error)
            return 2
        if session is not None and not session.leader:
            run = next(iter(_prebuilt.values()), None)
            _prebuilt.clear()
            return distributed.follow(run, session)
        code = 1
        try:
            with compose_cache.replaying():
                code = _hydra_cli(argv)
        finally:
            if session is not None:
                try:
                    session.end(code)
                except distributed.PeerLost as lost:
                    print_error(one_line(lost))
        return code
    finally:
        compose_cache.forget()
        distributed.leave(session)


def _hydra_cli(argv: list[str]) -> int:
    """Hand the command line to Hydra (``hydra_main``); return the exit status."""
    saved = sys.argv
    sys.argv = [saved[0], *argv]  # hydra.main parses sys.argv
    try:
        hydra_main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
        _prebuilt.clear()
        GlobalHydra.instance().clear()
    return 0


class PipeSafeStream:
    """``sys.stdout``/``sys.stderr`` that go quiet once their reader has gone (``| head -1``):
    the run goes on, writes its files and ends as it would have, with no "Logging error"
    tracebacks and no "Exception ignored" at exit. Later writes go to ``/dev/null``."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # the buffered rest, and every later write, go here
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main() -> None:
    """Console script ``hpr`` and ``python -m runner``."""
    sys.stdout, sys.stderr = PipeSafeStream(sys.stdout), PipeSafeStream(sys.stderr)
    code = run_cli(sys.argv[1:])
    if distributed.under_torchrun():
        distributed.exit_worker(code)
    fastexit.exit_now(code)
