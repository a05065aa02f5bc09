"""``hpr-torchrun``: PyTorch's torchrun (the same flags, rendezvous and workers) that ends in one line.

torchrun's agent reports a worker that failed with a traceback of its own and a block of
``ChildFailedError`` details, a stop signal with ``SignalException``'s traceback, and its
own warnings (the ``OMP_NUM_THREADS`` banner) — after the ranks have already said what went
wrong in their one ``Error:`` line each. This entry runs the same launcher
(:func:`torch.distributed.run.run`) and ends each of those in one line and an exit status:

* a rank that refused the command or failed said why itself: nothing is added, and the
  exit status is that rank's (2 for a refusal, 1 for a failure);
* a rank killed by a signal (``kill -9``, the out-of-memory killer) could not say anything:
  one line names it, exit 1; the run resumes from its last checkpoint with the same command;
* torchrun itself stopped (SIGTERM, Ctrl-C): the ranks agree on the update to stop after and
  save it; one line says so, exit 128 + the signal's number, as a shell reports it.

torchrun's log lines are left out unless ``LOGLEVEL`` is set (torch's elastic loggers read it).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, Sequence

RESUME = "the same command resumes the run from its last checkpoint"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def failure_line(failures: dict[int, Any]) -> tuple[str | None, int]:
    """What to print for torchrun's failed workers (rank → ``ProcessFailure``) and the exit
    status, from the first to fail: the others failed because it did (a survivor's collective
    broke; the agent stopped the rest). The agent records failures to the second, so a rank
    killed by a signal within the second of the first failure is taken as its cause, except a
    SIGTERM beside a rank that exited by itself: that is the agent stopping the rest."""
    first_second = min(f.timestamp for f in failures.values())
    first = {rank: f for rank, f in failures.items() if f.timestamp == first_second}
    spoke = sorted(rank for rank, f in first.items() if f.exitcode > 0)
    killed = sorted(rank for rank, f in first.items() if f.exitcode < 0 and not (spoke and f.exitcode == -signal.SIGTERM))
    if killed:  # it could not say anything itself
        rank = killed[0]
        return (
            f"Error: torchrun rank {rank} (pid {first[rank].pid}) was killed by {_signal_name(-first[rank].exitcode)}; "
            f"the other ranks were stopped: {RESUME}"
        ), 1
    # The status of a rank that said why (its line is on stderr), never the SIGTERM the agent
    # sent a lower rank in the same second: that would exit 241.
    return None, first[spoke[0]].exitcode if spoke else 1


def _quiet_agent() -> None:
    """torchrun's own log lines off, unless ``LOGLEVEL`` asks for them."""
    if "LOGLEVEL" in os.environ:
        return
    os.environ["LOGLEVEL"] = "CRITICAL"  # the elastic loggers made by get_logger read it when made
    for name in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # and those made by logging.getLogger


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_agent()
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except ChildFailedError as err:
        line, code = failure_line(err.failures)
        if line:
            print(line, file=sys.stderr, flush=True)
        return code
    except SignalException as err:
        name = _signal_name(int(err.sigval))
        print(f"Stopped by {name}: the ranks stopped after the same update and saved it; {RESUME}", file=sys.stderr, flush=True)
        return 128 + int(err.sigval)
    except KeyboardInterrupt:
        print(f"Stopped by SIGINT: {RESUME}", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    return 0


def console() -> None:
    """The ``hpr-torchrun`` console script."""
    raise SystemExit(main())


if __name__ == "__main__":
    console()
