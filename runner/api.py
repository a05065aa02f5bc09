"""From Python: run a configuration or a sweep, and load results as a pandas DataFrame.

The calls take the overrides a command line would (``["optimizer=adam", "batch_size=8"]``)
and go through the command line's own code (:func:`runner.cli.run_cli`: the same checks,
the same Hydra run or multirun, the same files), so a notebook and a shell give the same
runs. Only the run (or sweep) directory is pinned first, by composing the overrides with
Hydra's compose API, so the call knows where its results are::

    from runner import api
    summary = api.run(["dataset=iris", "epochs=3"])
    sweep = api.sweep(["dataset=iris", "epochs=3", "optimizer.lr=0.05,0.1"], launcher="fused")
    frame = api.load(sweep)          # one row per logged point, with the config columns
    frame[frame.tag == "loss/val"].groupby("optimizer.lr").value.last()

``load`` needs pandas (``pip install 'hparam-runner[notebook]'``); ``run`` and ``sweep`` do not.
"""

from __future__ import annotations

import io
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from runner import tags
from runner.aggregate import find_runs, read_summary
from runner.events.read import read_scalar_series
from runner.errors import RunnerError

__all__ = ["RunFailed", "run", "sweep", "load"]

# Hydra's name for the launcher group; `launcher="fused"` becomes `hydra/launcher=fused`.
_LAUNCHER_GROUP = "hydra/launcher"
# verbose=False: the job's log goes to its file only, and Hydra's own lines nowhere.
_QUIET = ("hydra.job_logging.root.handlers=[file]", "hydra.hydra_logging.root.handlers=[]")


class RunFailed(RunnerError):
    """The run or sweep was refused or failed; the message is the command line's ``Error:`` line."""

    def __init__(self, message: str, code: int):
        self.code = code
        super().__init__(message)


class _Tee(io.TextIOBase):
    """stderr as it was, plus a copy of what went through it (the ``Error:`` line to raise with)."""

    def __init__(self, stream: Any):
        self.stream, self.seen = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.seen.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def _teed_stderr() -> Iterator[_Tee]:
    saved = sys.stderr
    sys.stderr = tee = _Tee(saved)
    try:
        yield tee
    finally:
        sys.stderr = saved


def _resolved_dir(overrides: Sequence[str], key: str, multirun: bool) -> str:
    """``hydra.run.dir`` (or ``hydra.sweep.dir``) as Hydra would resolve it for ``overrides``."""
    from runner.cli import CONF_DIR  # torch is imported with the CLI: not for `load` alone

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            # Sweep values (`a=1,2`) do not compose as one config; the directory does not depend on them.
            plain = [o for o in overrides if not _is_sweep(o)] if multirun else list(overrides)
            cfg = compose(config_name="config", overrides=plain, return_hydra_config=True)
            return str(OmegaConf.select(cfg, key))
    except Exception as err:  # noqa: BLE001 - the command line itself reports a bad override
        if any(o.split("=", 1)[0] == key for o in overrides):
            raise
        raise RunFailed(f"the overrides do not compose: {str(err).splitlines()[0]}", 2) from None
    finally:
        GlobalHydra.instance().clear()


def _is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).is_sweep_override()


def _call_cli(argv: list[str]) -> None:
    from runner.cli import run_cli

    with _teed_stderr() as tee:
        code = run_cli(argv)
    if code != 0:
        errors = [line[len("Error: ") :] for line in tee.seen.getvalue().splitlines() if line.startswith("Error: ")]
        raise RunFailed(errors[-1] if errors else f"the run exited with status {code}", code)


def _pinned(overrides: Sequence[str], key: str, multirun: bool) -> tuple[list[str], Path]:
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
    directory = given[-1] if given else _resolved_dir(overrides, key, multirun)
    return ([*overrides] if given else [*overrides, f"{key}={directory}"]), Path(directory)


def run(overrides: Sequence[str] = (), verbose: bool = True) -> dict[str, Any]:
    """Train one configuration, exactly as ``python -m runner *overrides`` would.

    Args:
        overrides: Hydra overrides, e.g. ``["model=mlp", "optimizer=adam", "batch_size=8"]``.
        verbose: False keeps the log out of stdout (a notebook's cell output); the run's log
            file is written all the same.

    Returns:
        The run's ``summary.json`` (``status``, ``train_loss``, ``val_loss``, ...) with ``"dir"``,
        the run directory, added.

    Raises:
        RunFailed: the configuration was refused (its message is the one ``Error:`` line the
            command line prints; nothing is written) or the run failed.
    """
    argv, directory = _pinned([*overrides, *(() if verbose else _QUIET)], "hydra.run.dir", multirun=False)
    _call_cli(argv)
    return {**read_summary(directory), "dir": str(directory)}


def sweep(overrides: Sequence[str] = (), launcher: str | None = None, verbose: bool = True) -> Path:
    """Run a sweep, exactly as ``python -m runner -m *overrides`` would; return its directory.

    Args:
        overrides: Hydra overrides with sweeps, e.g. ``["batch_size=1,8,full", "seed=0,1"]``.
        launcher: a ``hydra/launcher`` option (``fused``, ``joblib``, ``slurm``...), or None for
            the configured one (Hydra's basic launcher: one job after another).
        verbose: False keeps the log (and the launcher's lines, e.g. which jobs were fused)
            out of stdout; each job's log file is written all the same.

    Returns:
        The sweep directory; :func:`load` it for the results.

    Raises:
        RunFailed: the sweep was refused before any job ran (its ``Error:`` line).
    """
    argv = [*overrides, *([f"{_LAUNCHER_GROUP}={launcher}"] if launcher is not None else []), *(() if verbose else _QUIET)]
    argv, directory = _pinned(argv, "hydra.sweep.dir", multirun=True)
    _call_cli(["--multirun", *argv])
    return directory


def _config_columns(run_dir: Path) -> dict[str, Any]:
    """The run's composed config (``.hydra/config.yaml``) as dotted columns, lists as text."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node) if isinstance(node, list) else node

    walk(OmegaConf.to_container(OmegaConf.load(path), resolve=False), "")
    return flat


# Series logged against the iteration (runner.epochs.log_segment, runner.instruments.noise).
ITERATION_TAGS = (tags.LOSS_ITER, tags.GRAD_NORM, tags.LR)


def axis_of(tag: str) -> str:
    """What a tag's step counts: ``iteration``, ``samples``, ``time_ms`` (training
    milliseconds) or ``epoch``."""
    if tag in ITERATION_TAGS or tag.startswith("noise/"):
        return "iteration"
    for axis, prefix in tags.AXIS_PREFIXES.items():
        if tag.startswith(prefix):
            return axis
    return "epoch"


def load(directory: str | Path) -> Any:
    """Every logged point of a run or sweep as one pandas DataFrame, one row per point.

    Columns: ``run`` (the run directory relative to ``directory``, ``"."`` for a single run),
    ``status`` (from its summary), ``tag`` (the TensorBoard tag), ``axis`` (what ``step``
    counts: ``iteration`` for ``loss/train_iter``, ``update/grad_norm``, ``lr`` and the noise
    measurements and ``vs_iteration/*``; ``samples`` for ``vs_samples/*``; ``time_ms`` for
    ``vs_time_ms/*``; ``epoch`` for the epoch-end metrics
    ``loss/train_full``, ``loss/val``, ``metric/acc/*``...; runs written before these names
    are read under them), ``step``, ``value``, ``wall_time``, then the
    run's config as dotted columns (``batch_size``, ``optimizer.lr``, ``model._target_``...),
    equal on every row of a run.

    Raises:
        ImportError: pandas is not installed (one line naming the extra).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("runner.api.load needs pandas: pip install 'hparam-runner[notebook]'") from None
    root = Path(directory)
    frames = []
    for run_dir in find_runs(root):
        config = _config_columns(run_dir)
        name = run_dir.relative_to(root).as_posix() if run_dir != root else "."
        status = read_summary(run_dir).get("status")
        for tag, series in read_scalar_series(run_dir).items():
            frame = pd.DataFrame({"step": series.steps, "value": series.values, "wall_time": series.wall_times})
            frame.insert(0, "axis", axis_of(tag))
            frame.insert(0, "tag", tag)
            frame.insert(0, "status", status)
            frame.insert(0, "run", name)
            frames.append(frame.assign(**config))
    columns = ["run", "status", "tag", "axis", "step", "value", "wall_time"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
