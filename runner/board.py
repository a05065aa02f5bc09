"""``hpr board [DIR]``: TensorBoard on a results directory, every point kept, one command.

Why not a bare ``tensorboard --logdir ... --samples_per_plugin scalars=0``: since TensorBoard
reads through its data-provider API, the ``scalars`` number is used twice. The loader keeps
at most that many points per tag (there ``0`` means "no limit"), and the Scalars and Time
Series plugins then ask the provider for at most that many (there ``0`` means "none":
``data_provider._downsample(xs, 0)`` returns ``[]``). So ``scalars=0`` draws empty charts,
and without the flag SGD's per-iteration curve is thinned to 1000 points. A bound no run
reaches keeps every point; the loader's reservoir grows with the data it holds and never
allocates the bound. Memory is then what the points take (about 0.5 kB each in TensorBoard's
data server, measured on 300,000 points: 160 MB against 12 MB thinned to 1000 per tag);
``--max-points`` thins again for runs of millions of updates.

The printed commands (:func:`board_command`) name this environment's ``hpr`` by absolute
path, so they work as typed from any directory, with or without the environment activated.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from runner.errors import print_error

HOST = "127.0.0.1"  # the dashboard is for this machine only (ssh -L to reach it from another)
DEFAULT_DIR = "outputs"
# At most this many points per tag and plugin; see the module docstring for why not 0.
KEEP_EVERY_POINT = 1_000_000_000
# How long start-up may take before the board gives up saying what it waited for (a port
# held by a program that never answers must not leave the user at a silent prompt).
STARTUP_S = 60.0
PROBE_TIMEOUT_S = 5.0


def dashboard_dir(run_dir: str | Path) -> Path:
    """The directory to open for a run: the sweep's root for a job of a Hydra sweep, else the run.

    A sweep is compared as a whole (its runs, seed bands, Custom Scalars and HParams live at
    the root), so a job points there rather than at its own or its configuration's folder.
    """
    run_dir = Path(run_dir).resolve()
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            root = Path(hydra_cfg.sweep.dir).resolve()
            if run_dir.is_relative_to(root):
                return root
    return run_dir


def command_prefix() -> list[str]:
    """How to call this program from any shell: this environment's ``hpr`` by absolute path,
    else ``<this python> -m runner`` (e.g. when the package runs from a source tree)."""
    bin_dir = Path(sys.executable).parent  # a venv's python is a link: not resolved on purpose
    script = shutil.which("hpr", path=str(bin_dir))
    if script:
        return [str(Path(script).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "runner"]


def board_command(directory: str | Path) -> str:
    """The one shell command that opens ``directory`` in the dashboard, quoted to paste as is."""
    return shlex.join([*command_prefix(), "board", str(Path(directory).resolve())])


def tensorboard_argv(logdir: str | Path, port: int, max_points: int = KEEP_EVERY_POINT) -> list[str]:
    """TensorBoard's own flags for the dashboard (``--port 0``: the system picks a free port)."""
    return [
        "--logdir", str(logdir),
        "--host", HOST,
        "--port", str(port),
        "--samples_per_plugin", f"scalars={max_points}",
    ]


def start(logdir: str | Path, port: int = 0, max_points: int = KEEP_EVERY_POINT) -> str:
    """Start TensorBoard on ``logdir`` in this process (a daemon thread); return its URL once
    it accepts connections."""
    import absl.logging
    from tensorboard import default, program

    absl.logging.set_verbosity(absl.logging.WARNING)  # what `tensorboard` itself sets
    board = program.TensorBoard(plugins=default.get_plugins())
    board.configure(argv=[None, *tensorboard_argv(logdir, port, max_points)])
    return board.launch()


def _prog() -> str:
    """The name the user typed: ``python -m runner`` runs this as ``.../runner/__main__.py``."""
    name = Path(sys.argv[0]).name
    return "python -m runner" if name == "__main__.py" else name


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{_prog()} board",
        description=(
            "Open TensorBoard on a run, a sweep, or every result under DIR. It listens on "
            f"{HOST} only, keeps every logged point by default (SGD's per-iteration curve is not thinned), "
            "prints its URL when it is ready, and runs until Ctrl-C."
        ),
        epilog=(
            "Every run and sweep prints the command that opens it. Results still being "
            "written appear as they come (TensorBoard reloads every few seconds). "
            "From another machine: ssh -L PORT:127.0.0.1:PORT <this host>, then open the URL there."
        ),
    )
    p.add_argument("dir", nargs="?", default=DEFAULT_DIR, metavar="DIR",
                   help=f"a run directory, a sweep directory, or a folder of them (default: {DEFAULT_DIR})")
    p.add_argument("--port", type=int, default=0,
                   help="the port to listen on (default: a free one, chosen by the system)")
    p.add_argument("--max-points", type=int, default=KEEP_EVERY_POINT, metavar="N",
                   help="at most N points per chart line, a random sample that keeps the last "
                        "(default: every point; each takes about 0.5 kB of memory)")
    return p


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and ``kill`` (SIGTERM) stop the board; SIGINT also when started from a
    shell that ignores it for background jobs (Python would then never raise KeyboardInterrupt)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


class StartupTimeout(Exception):
    """TensorBoard did not answer within :data:`STARTUP_S`; the message says what was awaited."""


def _answers(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether TensorBoard answers an HTTP request at ``url`` (never through a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url.rstrip('/')}/data/environment", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_and_wait(logdir: Path, port: int, max_points: int, limit_s: float = STARTUP_S) -> str:
    """:func:`start` in a worker thread, then a request to the served URL, all within
    ``limit_s``; raise :class:`StartupTimeout` naming what did not happen in time.

    The main thread only waits here, so Ctrl-C stops the board at any point of start-up.
    """
    outcome: dict[str, object] = {}

    def launch() -> None:
        try:
            outcome["url"] = start(logdir, port, max_points)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err

    worker = threading.Thread(target=launch, name="hpr-board-start", daemon=True)
    worker.start()
    worker.join(limit_s)
    where = f"{HOST}:{port}" if port else f"a free port on {HOST}"
    if worker.is_alive():
        raise StartupTimeout(f"TensorBoard did not start listening on {where} within {limit_s:.0f} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    url = str(outcome["url"])
    deadline = time.monotonic() + limit_s
    while not _answers(url, min(PROBE_TIMEOUT_S, limit_s)):
        time.sleep(0.5)
        if time.monotonic() > deadline:
            raise StartupTimeout(f"TensorBoard at {url} did not answer an HTTP request within {limit_s:.0f} s "
                                 f"(is another program holding port {url.rsplit(':', 1)[-1].strip('/')}?)")
    return url


def main(argv: Sequence[str] | None = None) -> int:
    """``hpr board [DIR] [--port P] [--max-points N]``; returns the exit status."""
    _stop_on_signals()  # first: Ctrl-C at any point of start-up ends quietly
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("TensorBoard stopped.", flush=True)
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    logdir = Path(args.dir)
    if not logdir.is_dir():
        what = "is not a directory" if logdir.exists() else "does not exist"
        print_error(f"board DIR={args.dir} {what}: give a run or sweep directory, e.g. outputs")
        return 2
    if not 0 <= args.port <= 0xFFFF:
        print_error(f"--port={args.port} is not allowed: 0 (a free port) or 1..65535")
        return 2
    if args.max_points < 1:
        print_error(f"--max-points={args.max_points} is not allowed: an integer >= 1")
        return 2
    from tensorboard.program import TensorBoardServerException

    from runner.boardview import HINT, RunLinks, view_url

    with RunLinks(logdir) as links:
        try:
            url = start_and_wait(links.path, args.port, args.max_points)
        except TensorBoardServerException as err:  # e.g. --port taken
            print_error(f"--port={args.port}: TensorBoard could not start: {err.msg}")
            return 2
        except StartupTimeout as err:
            print_error(f"{err}; stopped waiting")
            return 2
        print(f"TensorBoard on {logdir.resolve()}: {view_url(url)}  (Ctrl-C to stop)", flush=True)
        print(HINT, flush=True)
        threading.Event().wait()  # the server runs in a daemon thread; wait for Ctrl-C
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
