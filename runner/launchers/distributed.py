"""One run across processes: ``torchrun --nproc_per_node=N -m runner ...``.

torchrun starts N copies of the command line. They train *one* run, data-parallel:

* **Same updates as one process.** Every rank draws the same epoch order (same seed) and
  takes a contiguous share of each *global* batch (the same ``batch_size``, so iterations per
  epoch stay ceil(N / B)). Each share's mean loss is weighted by the share's part of the
  batch, exactly as micro-batches are (:func:`runner.loop.accumulating_train_step`), and the
  gradients are summed across ranks: the sum is the gradient of the batch's mean loss, for an
  uneven last batch, for ``batch_size=full`` and with ``micro_batch_size`` per rank alike. A rank
  whose share is empty (a batch smaller than the number of ranks) adds zero, but still joins
  the collective.
* **Rank 0 alone writes.** Only rank 0 goes through Hydra: it decides the run directory
  (``${now:...}`` is read once, by one process), takes the directory's lock, writes ``.hydra/``,
  the log, the event file, checkpoints, ``summary.json`` and ``model.pt``, and resumes from the
  checkpoint. It then sends the state it starts from (weights, optimizer, scheduler, random
  states, position) to the other ranks, so they start from the same point whether the run is
  fresh or resumed; they write nothing.
* **One decision, on every rank.** A command that cannot be distributed, or any config error,
  is refused on every rank with the same line (exit 2). A stop signal is agreed at the next
  update's collective, so every rank stops after the same update.

Why the gradient is all-reduced by hand instead of wrapping the model in
``DistributedDataParallel``: DDP's hooks reduce during each backward pass and *average* over
ranks, and its contract is that every rank runs the same number of backward passes. Here a
rank's share of a batch can be empty, or hold fewer micro-batches than another rank's, and
the shares are weighted by their size, not averaged. The project already keeps every
gradient in one flat buffer (:class:`runner.loop.FlatGradients`), so one ``all_reduce`` of that
buffer (with the batch loss and the stop signals in two more slots) per update is exact and
is the whole of DDP's communication.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Any, Mapping, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from runner.batches import EpochSource
from runner.checkpoint import restore_rng_state, rng_state
from runner.epochs import StopFlag, TrainState
from runner.errors import ConfigError, RunnerError, print_error
from runner.loggers import MetricLogger
from runner.loop import FlatGradients
from runner.losses import Loss

log = logging.getLogger(__name__)

# torchrun sets all four in every process it starts.
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")
UNDER_TORCHRUN = "under torchrun"


def under_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    return all(name in environ for name in TORCHRUN_ENV)


# How long a rank waits for the others, to form the process group or in one collective, before
# it gives up (gloo's own default is 30 minutes). Generous: every rank loads the data and
# builds the run before the first collective. RUNNER_DIST_TIMEOUT_S sets another bound.
TIMEOUT_ENV = "RUNNER_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


def collective_timeout(environ: Mapping[str, str] = os.environ) -> timedelta:
    text = environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(TIMEOUT_ENV, text, "a number of seconds > 0 (how long a rank waits for the others)")
    return timedelta(seconds=seconds)


class PeerLost(RunnerError):
    """The torchrun job's process group could not form, or a rank stopped answering in a
    collective (it died, hung past the timeout, or its network failed)."""


def _first_sentence(err: BaseException) -> str:
    """gloo's message without its source path and its advice: ``Connection reset by peer``."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(" This is typically", 1)[0].rstrip(".")


FORMING = "forming the process group"


@contextmanager
def collective(what: str) -> Any:
    """Turn a failed collective into :class:`PeerLost`: one line on this rank, not a traceback
    from deep inside gloo (torchrun then names the rank that failed first)."""
    try:
        yield
    except (RuntimeError, ValueError) as err:  # torch.distributed.DistError is a RuntimeError
        rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
        seconds = f"{collective_timeout().total_seconds():g} s"
        gloo = _first_sentence(err)
        if what == FORMING:
            why = f"the ranks could not connect within {seconds} ({TIMEOUT_ENV}): check GLOO_SOCKET_IFNAME, MASTER_ADDR and MASTER_PORT, and that every node started"
        else:
            why = f"{_lost_peer(gloo, rank, world, seconds)}; the run stopped, and its last checkpoint resumes with the same command"
        raise PeerLost(f"torchrun rank {rank} of {world}: {what} failed ({gloo}); {why}") from None


def _lost_peer(gloo: str, rank: str, world: str, seconds: str) -> str:
    """Who this rank waited for and why it stopped: gloo names neither the rank nor the cause,
    but a timed-out wait is a peer alive and silent (or unreachable), any other error a closed
    connection. With two ranks the peer is the other one."""
    peer = f"rank {1 - int(rank)}" if world == "2" and rank in ("0", "1") else "another rank"
    if "timed out" in gloo.lower():
        return f"waited {seconds} for {peer} ({TIMEOUT_ENV} sets how long): it hangs or cannot be reached"
    return f"{peer} died or cannot be reached (ranks wait {seconds} for each other: {TIMEOUT_ENV})"


class LeaderEnded(Exception):
    """Rank 0 ended without training (a finished run, a refusal, ``--cfg``): its exit status."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class AgreedStop(StopFlag):
    """A stop flag every rank reads the same way.

    torchrun forwards SIGTERM to every rank, but each process receives it at its own moment:
    were each to stop at its own next update, one would wait forever in the collective of an
    update the others never start. So a signal only marks this process (``seen``); its number
    travels with the next update's all-reduce, and ``requested`` — what the loop reads — is
    set from the reduced value, identically on every rank.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: int = 0  # the signal this process received, 0 for none

    def _handle(self, signum: int, frame: Any) -> None:
        self.seen = signum

    def agree(self, signals: list[float]) -> None:
        """The signals every rank had seen before the last update (one slot per rank)."""
        received = [int(s) for s in signals if s]
        if received:
            self.requested = True
            self.signal = self.seen or received[0]


@dataclass
class Session:
    """This process's place in the torchrun job."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    stop: AgreedStop = field(default_factory=AgreedStop)
    started: bool = False  # rank 0 has sent the state the run starts from

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, positions: slice) -> slice:
        """This rank's contiguous part of a global batch: sizes differ by at most one row."""
        base, extra = divmod(positions.stop - positions.start, self.world)
        start = positions.start + self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def stop_flag(self) -> AgreedStop:
        """The run's stop flag (``Run.stop_flag``): the one whose state the collectives agree on."""
        return self.stop

    def agree_error(self, error: str | None) -> str | None:
        """The first error any rank met (by rank), on every rank: all refuse, or none."""
        errors: list[Any] = [None] * self.world
        with collective("agreeing on the command line"):
            dist.all_gather_object(errors, error)
        return next((e for e in errors if e is not None), None)

    def start(self, run: Any, state: TrainState | None) -> TrainState:
        """The state every rank trains from: rank 0's (fresh or resumed), sent to the others.

        Rank 0 sends it, the others receive it and load it into their run. Called by
        :func:`runner.train.fit` before the first update.
        """
        if self.leader:
            log.info(
                "One run across %d processes (torchrun, %s): each takes its share of every batch of %d",
                self.world, dist.get_backend(), run.batch_size,
            )
            state = state or TrainState()
            buffer = io.BytesIO()
            torch.save(
                {
                    "model": run.model.state_dict(),
                    "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(),
                    "rng": rng_state(run.order_generator),
                    "state": state.to_dict(),
                },
                buffer,
            )
            self.started = True
            self._broadcast(("train", buffer.getvalue()))
            return state
        kind, value = self._broadcast(None)
        if kind != "train":
            raise LeaderEnded(value)
        # On the CPU: the random states must be CPU tensors; load_state_dict moves the rest.
        payload = torch.load(io.BytesIO(value), map_location="cpu", weights_only=True)
        run.model.load_state_dict(payload["model"])
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        restore_rng_state(payload["rng"], run.order_generator)
        return TrainState(**payload["state"])

    def end(self, code: int) -> None:
        """Rank 0 ended without starting the run: let the others end with its exit status."""
        if self.leader and not self.started:
            self.started = True
            self._broadcast(("exit", code))

    def wait_for_leader(self) -> int:
        """A non-zero rank with no run to train (``--cfg``, ``--info``): rank 0's exit status."""
        kind, value = self._broadcast(None)
        return value if kind == "exit" else 1

    def _broadcast(self, message: Any) -> Any:
        box = [message]
        with collective("receiving rank 0's start state" if message is None else "sending the start state"):
            dist.broadcast_object_list(box, src=0)
        return box[0]


def join() -> Session | None:
    """This process's session when torchrun started it (and the process group, joined), else None.

    Gloo carries the CPU collectives (the messages, and gradients on CPU); NCCL the CUDA
    tensors when this machine has GPUs. Each rank uses the GPU of its local rank.
    """
    if not under_torchrun():
        return None
    session = Session(
        rank=int(os.environ["RANK"]),
        world=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
    )
    cuda = torch.cuda.is_available()
    if cuda and session.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(session.local_rank)
    timeout = collective_timeout()
    with collective(FORMING):
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    if not session.leader:
        # Rank 0 logs the run; the others would only repeat its lines.
        logging.getLogger("runner").setLevel(logging.ERROR)
    return session


def leave(session: Session | None) -> None:
    if session is not None and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except RuntimeError:
            pass  # a peer already gone: there is nothing left to tear down together


def exit_worker(code: int) -> NoReturn:
    """End a torchrun worker once its run is written and the process group destroyed,
    without the interpreter's own shutdown.

    At that shutdown a C++ thread of torch.distributed's gloo transport can outlive what it
    uses and abort the process ("terminate called without an active exception", SIGABRT; 2 of
    about 120 two-rank runs here, on either rank): torchrun then reports a finished run as
    failed. Nothing is left to do by then — the files are closed, the checkpoint writer
    joined — so the logs are flushed and the process ends with its exit status.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def check_command(multirun: bool) -> None:
    """A sweep under torchrun would run every job N times, each rank deciding alone."""
    if multirun:
        raise ConfigError(
            "hydra.mode", "MULTIRUN", f"a single run {UNDER_TORCHRUN} (-m would run every job of the sweep on each rank; start sweeps without torchrun)"
        )


def check_run(run: Any, session: Session) -> None:
    """What one run across processes cannot do, refused before anything is written."""
    cfg = run.cfg
    if cfg.budget == "seconds":
        # Each rank's clock would end the run at a different update.
        raise ConfigError("budget", "seconds", f"epochs, updates or samples {UNDER_TORCHRUN} (each rank's clock would stop it at a different update)")
    if run.device.type == "cuda" and torch.cuda.device_count() < session.local_world:
        raise ConfigError(
            "device", cfg.device, f"one GPU per process {UNDER_TORCHRUN}: {session.local_world} processes on this node, {torch.cuda.device_count()} GPUs (lower --nproc_per_node, or device=cpu)"
        )
    if run.device.type not in ("cpu", "cuda"):
        raise ConfigError("device", cfg.device, f"cpu or cuda {UNDER_TORCHRUN} (gloo and nccl carry no other device's tensors)")
    # The instruments measure at one process's weights and gradient, through the single-process
    # update; across ranks they would see a share of each batch.
    if cfg.noise.every:
        raise ConfigError("noise.every", cfg.noise.every, f"0 {UNDER_TORCHRUN} (measure the gradient noise in a single-process run)")
    if cfg.trajectory.record:
        raise ConfigError("trajectory.record", cfg.trajectory.record, f"false {UNDER_TORCHRUN} (record trajectories in a single-process run)")


class SharedGradients(FlatGradients):
    """:class:`FlatGradients` whose buffer has room after the gradient for what each update
    also sums across ranks: the batch loss, and one slot per rank for a stop signal."""

    def __init__(self, params: list[nn.Parameter], world: int):
        n = sum(p.numel() for p in params)
        self.buffer = torch.zeros(n + 1 + world, dtype=params[0].dtype, device=params[0].device)
        self.params = params
        self.flat = self.buffer[:n]
        offset = 0
        for p in params:
            p.grad = self.flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.loss = self.buffer[n]
        self.signals = self.buffer[n + 1 :]


def distributed_step(
    model: nn.Module,
    loss_fn: Loss,
    optimizer: Optimizer,
    grads: SharedGradients,
    session: Session,
    micro_batch_size: int | None,
    grad_clip: float | None,
    source: EpochSource,
    positions: slice,
) -> tuple[Tensor, Tensor]:
    """One update of the global batch at ``positions``: this rank's share, summed across ranks.

    Returns the global batch's loss and the global gradient's norm before clipping, the same
    values on every rank.
    """
    grads.buffer.zero_()
    size = positions.stop - positions.start
    mine = session.share(positions)
    chunk_size = micro_batch_size or max(mine.stop - mine.start, 1)
    for start in range(mine.start, mine.stop, chunk_size):
        chunk = slice(start, min(start + chunk_size, mine.stop))
        x, y = source.take(chunk)
        weighted = loss_fn(model(x), y) * ((chunk.stop - chunk.start) / size)
        weighted.backward()
        grads.loss += weighted.detach()
    grads.signals[session.rank] = session.stop.seen
    with collective("summing an update's gradient"):
        dist.all_reduce(grads.buffer)
    # The signals are needed on the host to decide the next update; on CUDA this waits for
    # the collective, which the update itself must wait for anyway.
    session.stop.agree(grads.signals.tolist())
    grad_norm = grads.norm()
    grads.clip_(grad_norm, grad_clip)
    optimizer.step()
    return grads.loss.clone(), grad_norm


def distribute(run: Any, session: Session) -> Any:
    """``run`` as one rank of the torchrun job trains it: the distributed update, the agreed
    stop flag, the start state from rank 0; no progress bar but rank 0's."""
    check_run(run, session)
    cfg = run.cfg
    micro = cfg.micro_batch_size
    grads = SharedGradients(list(run.model.parameters()), session.world)
    step = partial(distributed_step, run.model, run.loss_fn, run.optimizer, grads, session, micro, cfg.grad_clip)
    if not session.leader:
        cfg = cfg.copy()
        cfg.progress = "false"
    return replace(run, cfg=cfg, step=step, stop_flag=session.stop_flag, distributed=session)


class NullLogger(MetricLogger):
    """Where the ranks other than 0 log: nowhere (rank 0 logs the same global values)."""

    def log(self, name: str, value: float, step: int, wall_time: float | None = None) -> None:
        pass

    def log_series(self, name: str, steps: np.ndarray, values: np.ndarray, wall_times: np.ndarray | None = None) -> None:
        pass

    def log_text(self, name: str, text: str) -> None:
        pass

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        pass

    def log_status(self, status: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def follow(run: Any | None, session: Session) -> int:
    """A rank other than 0: train alongside rank 0, writing nothing; return the exit status."""
    from runner.train import fit  # runner.train imports this module's callers

    try:
        if run is None:
            return session.wait_for_leader()
        summary = fit(run, NullLogger())
    except PeerLost as lost:
        print_error(str(lost))
        return 1
    except LeaderEnded as ended:
        if ended.code not in (0, 130):
            print_error(f"rank 0 did not start the run (exit status {ended.code}); its message says why")
        return ended.code
    return 130 if summary["status"] == "interrupted" else 0
