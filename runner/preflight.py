"""Everything that can refuse a command line, checked before Hydra writes or runs anything.

Hydra configures logging and instantiates ``hydra.callbacks`` as soon as it has composed
the config, and creates the run directory (``.hydra/``, the log file) before it calls the
task function; a callback's exception only becomes a warning. So the command line is
composed here first, exactly as Hydra will compose it, and checked:

- every ``_target_`` Hydra itself would instantiate (callbacks, launcher, sweeper, Optuna
  sampler) and every logging handler/formatter class is one the project ships;
- the directories a run writes to are usable;
- a single run is validated and built completely (data, model, memory estimate): the
  result is handed to the task function, so the data are loaded once.

A sweep's points are each validated by :class:`runner.sweep.SweepCallback` before its
first job, which also comes before anything is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError
from runner.rundir import LOCK_FILE

CALLBACKS = ("runner.sweep.SweepCallback", "runner.rundir.RunDirCallback")
LAUNCHERS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    # Sweeps on a cluster (runner.cluster, conf/hydra/launcher/): Slurm, submitit's local
    # executor, Ray; the plugins' own classes too, for hydra/launcher=submitit_slurm or ray.
    "hydra_plugins.hpr_cluster_launchers.cluster_launchers.SlurmLauncher",
    "hydra_plugins.hpr_cluster_launchers.cluster_launchers.RayLauncher",
    "hydra_plugins.hpr_cluster_launchers.cluster_launchers.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
    "hydra_plugins.hpr_fused_launcher.fused_launcher.FusedLauncher",
)
SWEEPERS = (
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
)
OPTUNA_SAMPLERS = tuple(
    f"optuna.samplers.{name}"
    for name in ("TPESampler", "RandomSampler", "CmaEsSampler", "NSGAIISampler", "MOTPESampler", "GridSampler", "QMCSampler")
)
# Where Hydra instantiates a `_target_`, and what may be named there.
HYDRA_TARGETS = {"hydra.launcher": LAUNCHERS, "hydra.sweeper": SWEEPERS, "hydra.sweeper.sampler": OPTUNA_SAMPLERS}
# logging.config.dictConfig calls whatever these name, so only plain handlers are allowed.
LOG_HANDLERS = ("logging.StreamHandler", "logging.FileHandler", "logging.NullHandler")
LOG_FORMATTERS = ("logging.Formatter", "colorlog.ColoredFormatter")
LOG_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
# The log file Hydra's own job_logging presets write, inside the run directory.
LOG_FILE = "${hydra.runtime.output_dir}/${hydra.job.name}.log"
DEFAULT_OUTPUT_DIR = "${hydra:runtime.output_dir}"


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(dotted path of the node, its raw ``_target_``) for every node holding one."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node["_target_"]
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def check_hydra_targets(hydra: DictConfig) -> None:
    """Every ``_target_`` under ``hydra`` names a class this project uses there."""
    raw = OmegaConf.to_container(hydra, resolve=False)
    for path, target in _targets(raw, "hydra"):
        if path.startswith("hydra.callbacks."):
            allowed = CALLBACKS
        elif path.startswith(("hydra.job_logging", "hydra.hydra_logging")):
            continue  # logging configs are checked by check_logging
        else:
            allowed = HYDRA_TARGETS.get(path, ())
        if target not in allowed:
            what = f"one of {', '.join(allowed)}" if allowed else "nothing: Hydra does not instantiate a _target_ here"
            raise ConfigError(f"{path}._target_", target, what)
        if path.startswith("hydra.callbacks."):
            # Only the target itself: any argument would reach the callback's constructor.
            node = OmegaConf.select(hydra, path[len("hydra."):])
            extra = sorted(set(node.keys()) - {"_target_"})
            if extra:
                raise ConfigError(f"{path}.{extra[0]}", node._get_node(extra[0])._value(), "no arguments: the callback takes none")


def check_logging(hydra: DictConfig) -> None:
    """Hydra hands ``job_logging``/``hydra_logging`` to ``logging.config.dictConfig``, which
    imports and calls any ``()``/``class`` it is given and opens any ``filename``."""
    for part in ("job_logging", "hydra_logging"):
        raw = OmegaConf.to_container(hydra[part], resolve=False) if hydra[part] is not None else {}
        key = f"hydra.{part}"
        for section in ("handlers", "formatters", "filters"):
            for name, conf in (raw.get(section) or {}).items():
                where = f"{key}.{section}.{name}"
                if not isinstance(conf, dict):
                    continue
                if "()" in conf:
                    raise ConfigError(f"{where}.()", conf["()"], "no factory: only the logging classes Hydra's presets use")
                if section == "handlers":
                    if conf.get("class") not in LOG_HANDLERS:
                        raise ConfigError(f"{where}.class", conf.get("class"), f"one of {', '.join(LOG_HANDLERS)}")
                    if "filename" in conf and conf["filename"] != LOG_FILE:
                        raise ConfigError(f"{where}.filename", conf["filename"], f"{LOG_FILE} (the run directory's log)")
                    if "stream" in conf and conf["stream"] not in LOG_STREAMS:
                        raise ConfigError(f"{where}.stream", conf["stream"], f"one of {', '.join(LOG_STREAMS)}")
                if section == "formatters" and conf.get("class", "logging.Formatter") not in LOG_FORMATTERS:
                    raise ConfigError(f"{where}.class", conf.get("class"), f"one of {', '.join(LOG_FORMATTERS)}")


def launcher_keys_allowed(key: str, fields: list[str], launcher: str) -> str:
    """What a key of ``launcher`` (e.g. ``hydra/launcher=joblib``) may be: its schema's settings
    (``_target_`` is checked on its own), the nearest spelling first."""
    settable = [name for name in fields if name != "_target_"]
    if not settable:
        return f"no key: {launcher} takes no settings"
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], settable, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"{hint}a key of {launcher}: {', '.join(settable)}"


def check_launcher_keys(hydra: DictConfig) -> None:
    """``+hydra.launcher.<key>=...`` adds a key the launcher's schema lacks (``+`` adds even to a
    typed node): Hydra would hand it to the launcher, which raises a ``TypeError`` traceback
    (basic, fused) or ignores it (joblib, submitit). Typed nodes below are checked the same way;
    free-form ones (Ray's ``init`` arguments) are the launcher's to read."""
    launcher = f"hydra/launcher={hydra.runtime.choices.get('hydra/launcher')}"
    pending: list[tuple[str, Any]] = [("hydra.launcher", hydra.launcher)]
    while pending:
        path, node = pending.pop()
        schema = OmegaConf.get_type(node)
        if not (isinstance(node, DictConfig) and dataclasses.is_dataclass(schema)):
            continue
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in fields:
                raise ConfigError(f"{path}.{key}", node._get_node(key)._value(), launcher_keys_allowed(f"{path}.{key}", fields, launcher))
            pending.append((f"{path}.{key}", node._get_node(key)))


# The deepest path a run or sweep writes below its directory: a sweep's
# <config>/seed_aggregate/events.out.tfevents.<10 digits>.<host name, up to 64>.<pid>.<counter>
# is about 125 bytes with the longest host name (tests/test_faults.py reads a real tree).
DEEPEST_INSIDE = 160


def _shown(text: str) -> str:
    """A path for a one-line message: a long one as its start and end."""
    return text if len(text) <= 80 else f"{text[:40]}...{text[-30:]}"


def check_path_limits(key: str, value: Any, inside: int = DEEPEST_INSIDE) -> None:
    """``value``, and the files a run writes ``inside`` characters deep below it, fit the
    operating system's limits: every name at most NAME_MAX, the absolute path at most
    PATH_MAX. Checked on the text, before any ``stat`` (which would raise ENAMETOOLONG)."""
    text = os.path.abspath(str(value))
    existing = "/"
    for name in Path(text).parts[1:]:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        if len(name.encode(errors="surrogateescape")) > name_max:
            raise ConfigError(
                key, _shown(str(value)),
                f"a path whose every name is at most {name_max} bytes (NAME_MAX of the file system at {existing}); "
                f"the name {_shown(name)!r} has {len(name.encode(errors='surrogateescape'))}",
            )
        below = os.path.join(existing, name)
        if os.path.isdir(below):
            existing = below
    path_max = os.pathconf(existing, "PC_PATH_MAX")
    longest = path_max - 1 - inside - 1  # PATH_MAX counts the terminating NUL
    if len(text.encode(errors="surrogateescape")) > longest:
        raise ConfigError(
            key, _shown(str(value)),
            f"a path of at most {longest:,} bytes as an absolute path (PATH_MAX is {path_max:,}, and a run writes files up to "
            f"{inside} bytes deep below its directory); this one has {len(text.encode(errors='surrogateescape')):,}",
        )


def check_writable_dir(key: str, value: Any) -> None:
    """``value`` is a directory path a run can create or write into."""
    text = "" if value is None else str(value)
    allowed = "a directory path that is writable (empty would write into the current directory)"
    if not text.strip() or "\x00" in text:
        raise ConfigError(key, value, allowed)
    check_path_limits(key, text)
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ConfigError(key, value, "a directory, and this path is an existing file")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(key, value, f"a path under a directory, and {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, value, f"a writable directory, and {parent} is not writable")


def check_job_name(hydra: DictConfig) -> None:
    """The job name becomes the log file's name: it must not lead out of the run directory."""
    name = str(hydra.job.name)
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError("hydra.job.name", name, "a file name (no '/' or '..')")
    subdir = hydra.output_subdir
    if subdir is not None and (Path(str(subdir)).is_absolute() or ".." in Path(str(subdir)).parts):
        raise ConfigError("hydra.output_subdir", subdir, "a relative path inside the run directory (no '..'), or null")


def check_hydra(cfg: DictConfig, multirun: bool) -> None:
    """Checks on the ``hydra`` node of a config composed with ``return_hydra_config``."""
    hydra = cfg.hydra
    check_hydra_targets(hydra)
    check_launcher_keys(hydra)
    check_logging(hydra)
    check_job_name(hydra)
    if multirun:
        check_writable_dir("hydra.sweep.dir", hydra.sweep.dir)
    else:
        check_writable_dir("hydra.run.dir", hydra.run.dir)


def check_output_dir(cfg: DictConfig) -> None:
    """``output_dir`` left at its default follows Hydra's directory (checked by :func:`check_hydra`)."""
    raw = cfg._get_node("output_dir")._value()
    if raw != DEFAULT_OUTPUT_DIR:
        check_writable_dir("output_dir", cfg.output_dir)


def task_config(cfg: DictConfig) -> DictConfig:
    """The config the task function receives: ``cfg`` without the ``hydra`` node."""
    task = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    OmegaConf.set_struct(task, True)
    return task


def config_key(cfg: DictConfig) -> str:
    """A fingerprint of a task config (output_dir aside): the prebuilt run is reused only for it."""
    keys = [key for key in cfg if key not in ("hydra", "output_dir")]
    return json.dumps(OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True), sort_keys=True, default=str)


# Run directories and whether each existed when Hydra was about to create it
# (recorded by SweepCallback.on_run_start, which Hydra calls just before).
_existed: dict[str, bool] = {}


def note_run_dir(run_dir: str) -> None:
    """Remember whether ``run_dir`` and which of its parents exist before Hydra makes them."""
    path = Path(run_dir).absolute()
    _existed[str(path)] = path.exists()
    for parent in path.parents:
        _existed[str(parent)] = parent.exists()


def remove_fresh_run_dir(hydra_cfg: DictConfig) -> None:
    """After a refusal found only once the run started: remove the run directory Hydra made
    for it, if this process created it and it holds nothing but Hydra's own files."""
    out = Path(hydra_cfg.runtime.output_dir).absolute()
    if _existed.get(str(out), True) or not out.is_dir():
        return
    # Hydra's log, and the lock this process took (released: the run was refused).
    hydra_files = {f"{hydra_cfg.job.name}.log", LOCK_FILE}
    subdir = hydra_cfg.output_subdir
    config_files = {"config.yaml", "hydra.yaml", "overrides.yaml"}
    for entry in out.iterdir():
        if entry.name in hydra_files and entry.is_file():
            continue
        if subdir is not None and entry.name == subdir and entry.is_dir() and {p.name for p in entry.iterdir()} <= config_files:
            continue
        return  # something else is there: leave it all
    if subdir is not None and (out / subdir).is_dir():
        for name in config_files:
            (out / subdir / name).unlink(missing_ok=True)
        (out / subdir).rmdir()
    for name in hydra_files:
        (out / name).unlink(missing_ok=True)
    out.rmdir()
    # Parents Hydra created on the way (outputs/, outputs/runs/), if now empty.
    for parent in out.parents:
        if _existed.get(str(parent), True) or any(parent.iterdir()):
            break
        parent.rmdir()
