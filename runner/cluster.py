"""Sweeps on a cluster: the project's launchers for Slurm (hydra-submitit-launcher) and Ray
(hydra-ray-launcher), each the plugin's own launcher with one thing added.

- Slurm: the warning Slurm sends before a job's time limit (submitit asks for SIGUSR2,
  ``signal_delay_s`` ahead) reaches the runner first, which stops at the next update boundary
  and saves a checkpoint; only then does submitit's own handler resubmit the same job, which
  resumes from that checkpoint (``resume=auto``). Left to submitit alone, the job would exit
  inside the signal handler and lose the updates since the last epoch-end checkpoint.
- Ray: the sweep directory is made absolute where the sweep is launched, because a Ray worker
  runs in its raylet's directory, not the launching one's.
- submitit's local executor (``slurm_local``): each job, one of several processes side by side
  on this machine, keeps to ``cpus_per_task`` torch threads.

The plugins are optional extras (``pip install 'hparam-runner[slurm]'``, ``[ray]``). Hydra's
plugin discovery imports this module (through ``hydra_plugins.hpr_cluster_launchers``) on every
run, as it imports the plugins themselves; submitit and ray are imported only by a sweep that uses
them (Ray's cluster is joined before the sweep writes anything, see :func:`join_ray_cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf, read_write

from runner.errors import ConfigError

log = logging.getLogger(__name__)

# The runner's StopFlag (runner.epochs) stops a run cleanly on this signal.
RUNNER_STOP_SIGNAL = signal.SIGUSR1
# What the task function exits with after a signal stopped it with a checkpoint (runner.cli).
EXIT_INTERRUPTED = 130


# Launchers that submit with sbatch (the project's and the plugin's own).
SLURM_TARGETS = (
    "hydra_plugins.hpr_cluster_launchers.cluster_launchers.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
)
# How long the check waits for the controller's answer (sbatch itself retries for minutes).
SBATCH_PROBE_TIMEOUT_S = 30.0
# The job options the controller may insist on; the probe's job carries those the sweep sets.
_PROBED_OPTIONS = ("partition", "account", "qos")


def check_slurm_reachable(launcher: DictConfig, choice: str) -> None:
    """A Slurm launcher's cluster takes jobs, asked before the sweep writes anything.

    submitit submits once the sweep directory and its ``.submitit`` folder exist; without
    ``sbatch``, or with a controller that does not answer, that ends in a 40-line traceback
    and a sweep directory left behind. ``sbatch --test-only`` asks the controller whether a
    one-line job would be accepted, and submits nothing.
    """
    if launcher._target_ not in SLURM_TARGETS:
        return
    elsewhere = "start the cluster's controller, or use hydra/launcher=slurm_local to run the jobs as processes here"
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigError("hydra/launcher", choice, f"a launcher this machine can use: sbatch (Slurm's client) is not on PATH; install Slurm and {elsewhere}")
    options = [f"--{name}={launcher[name]}" for name in _PROBED_OPTIONS if launcher.get(name) is not None]
    command = [sbatch, "--test-only", "--wrap=true", *options]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=SBATCH_PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConfigError(
            "hydra/launcher", choice, f"a Slurm cluster that answers: `sbatch --test-only` had no answer from the controller within {SBATCH_PROBE_TIMEOUT_S:g} s; {elsewhere}"
        ) from None
    except OSError as err:
        raise ConfigError("hydra/launcher", choice, f"a launcher this machine can use: {sbatch} cannot be run ({err.strerror}); {elsewhere}") from None
    if answer.returncode != 0:
        said = [line.strip() for line in (answer.stderr + answer.stdout).splitlines() if line.strip()]
        last = said[-1] if said else f"exit status {answer.returncode}, no message"
        raise ConfigError("hydra/launcher", choice, f"a Slurm cluster that takes jobs: `sbatch --test-only{''.join(' ' + o for o in options)}` says {last!r}; {elsewhere}")


# Launchers that join or start a Ray cluster (the project's and the plugin's own).
RAY_TARGETS = (
    "hydra_plugins.hpr_cluster_launchers.cluster_launchers.RayLauncher",
    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
)
RAY_ADDRESS_KEY = "hydra.launcher.ray.init.address"
# A head that does not listen: Ray itself retries such an address for minutes.
RAY_PORT_PROBE_TIMEOUT_S = 5.0
# Ray 2.59 starts heads with token authentication while its clients still default to none.
RAY_TOKEN_ADVICE = (
    "the cluster asks for its token: export RAY_AUTH_MODE=token in this shell as in the one that started the head "
    "(the token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
)


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` (or ``ray://host:port``) as a pair; None for ``auto`` and other forms."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


@contextlib.contextmanager
def _stderr_held():
    """Holds what this process writes to file descriptor 2 (Ray's core logs there directly,
    past ``sys.stderr``); yields a function that returns it."""
    with tempfile.TemporaryFile(mode="w+b") as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield lambda: (held.seek(0), held.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def join_ray_cluster(launcher: DictConfig) -> None:
    """Joins the Ray cluster a sweep names before the sweep writes anything.

    The plugin calls ``ray.init`` only after Hydra has made the sweep directory, so a head
    that is not there, or that asks for a token this process lacks, ended in a traceback and
    a directory left behind. Joined here, the plugin finds Ray initialised and launches on
    this connection. A sweep without an address starts a cluster of its own: nothing to join.
    """
    if launcher._target_ not in RAY_TARGETS:
        return
    init = OmegaConf.to_container(launcher.ray.init, resolve=True) or {}
    address = init.get("address")
    if address is None:
        return
    endpoint = _host_port(str(address))
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=RAY_PORT_PROBE_TIMEOUT_S).close()
        except OSError as err:
            reason = "no answer" if isinstance(err, TimeoutError) else err.strerror or type(err).__name__
            raise ConfigError(RAY_ADDRESS_KEY, address, f"the address of a running Ray head: {reason} at {endpoint[0]}:{endpoint[1]}; start one with `ray start --head`") from None
    import ray

    if ray.is_initialized():
        return
    failure: Exception | None = None
    with _stderr_held() as held:
        try:
            ray.init(**init)
        except (ConnectionError, RuntimeError, ValueError) as err:
            failure = err
        said = held()
    if failure is None:
        os.write(2, said.encode())  # Ray's own lines on joining, as the plugin would have shown them
        return
    causes, cause = [], failure
    while cause is not None and len(causes) < 8:
        causes.append(f"{type(cause).__name__} {cause}")
        cause = cause.__cause__ or cause.__context__
    if any("AuthenticationError" in text or "InvalidAuthToken" in text for text in [*causes, said]):
        raise ConfigError(RAY_ADDRESS_KEY, address, f"a Ray cluster this process can join: {RAY_TOKEN_ADVICE}") from None
    first = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
    raise ConfigError(RAY_ADDRESS_KEY, address, f"a Ray cluster this process can join: Ray says {first!r}") from None


# The plugins are optional: without one, its preset (conf/hydra/launcher/) fails to compose
# before anything here is instantiated, naming the missing config; the base is then a stand-in.
try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:
    _SubmititSlurmLauncher = object  # type: ignore[assignment,misc]
try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as _SubmititLocalLauncher
except ImportError:
    _SubmititLocalLauncher = object  # type: ignore[assignment,misc]
try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as _PluginRayLauncher
except ImportError:
    _PluginRayLauncher = object  # type: ignore[assignment,misc]


class _Preemption:
    """While a job runs: on submitit's signal, stop the run (as SIGUSR1 would) and remember
    that submitit's handler is owed a call once the run has saved its checkpoint."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.pending = False
        self.submitit_handler: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending = True
        log.warning("Signal %s: stopping at the next update with a checkpoint, then requeueing.", signal.Signals(signum).name)
        # The runner's StopFlag holds SIGUSR1 while a run trains; outside training there is
        # nothing to save and the job either finishes or is requeued below.
        runner_handler = signal.getsignal(RUNNER_STOP_SIGNAL)
        if callable(runner_handler):
            runner_handler(RUNNER_STOP_SIGNAL, frame)

    def __enter__(self) -> "_Preemption":
        self.submitit_handler = signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.signum, self.submitit_handler)


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit-launcher's Slurm launcher; a job stopped by submitit's preemption or
    time-limit signal saves a checkpoint before submitit requeues it."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        import submitit

        signum = submitit.JobEnvironment._usr_sig()
        with _Preemption(signum) as preemption:
            try:
                return super().__call__(*args, **kwargs)
            except SystemExit as stop:
                if not (preemption.pending and stop.code == EXIT_INTERRUPTED and callable(preemption.submitit_handler)):
                    raise
        # The checkpoint is written: submitit's handler calls self.checkpoint() (the same job
        # again), requeues it with `scontrol requeue` and exits.
        preemption.submitit_handler(signum, None)
        raise SystemExit(EXIT_INTERRUPTED)


class LocalLauncher(_SubmititLocalLauncher):
    """hydra-submitit-launcher's local launcher, whose jobs run side by side as processes on
    this machine: each job uses ``cpus_per_task`` torch threads.

    torch would start one thread per core in every job, and the jobs' threads would busy-wait
    at each parallel region on cores the other jobs hold (the README's ``experiment=gd_compare``
    on 2 cores: 26.4 s, against 18.9 s with one thread per job, ``bench/side_by_side.py``). An
    ``OMP_NUM_THREADS`` the user set is kept; Ray and joblib limit their workers' threads
    themselves, and a Slurm job is confined to its allocated cores.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        if "OMP_NUM_THREADS" not in os.environ:
            import torch

            torch.set_num_threads(max(1, int(self.params.get("cpus_per_task") or 1)))
        return super().__call__(*args, **kwargs)


class RayLauncher(_PluginRayLauncher):
    """hydra-ray-launcher's launcher with the sweep directory made absolute before launch."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = str(Path(str(self.config.hydra.sweep.dir)).absolute())
        quoted = "'" + sweep_dir.replace("\\", "\\\\").replace("'", "\\'") + "'"
        with read_write(self.config.hydra):
            self.config.hydra.sweep.dir = sweep_dir
            # Each job's config is composed again from these overrides (in the worker too).
            self.config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted}")
        return super().launch(job_overrides, initial_job_idx)
