"""What the dashboard tests share: a real sweep run as a user runs it, the command it prints,
and that command run as printed, talked to over TensorBoard's HTTP API.

Everything listens on, and is only asked on, 127.0.0.1; every request has a timeout, every
wait a deadline, and every process started here is stopped in a ``finally``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from conftest import read_scalars

PRINTED = "Open in TensorBoard: "
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/")
PRINTED_URL = re.compile(r"http://127\.0\.0\.1:\d+/\S*")  # the whole link, with its query
SWEEP_S = 600.0  # a five-job sweep takes ~30 s on a busy 2-core machine
READY_S = 60.0  # the board's URL line
SERVED_S = 90.0  # every run's every point, from TensorBoard's first load (it reloads every 5 s)
STOP_S = 15.0
REQUEST_TIMEOUT_S = 5.0

# Talk to the server directly, never through an http(s)_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------------------- runs and sweeps
def run_runner(args: list[str], cwd: Path) -> str:
    """``python -m runner ARGS`` in ``cwd`` as a user runs it; its stdout and stderr together."""
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd, capture_output=True, text=True, timeout=SWEEP_S,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def printed_commands(output: str) -> list[list[str]]:
    """Every ``Open in TensorBoard: <command>`` in a run's or sweep's output, split as a shell would."""
    return [shlex.split(line.split(PRINTED, 1)[1]) for line in output.splitlines() if PRINTED in line]


def gd_compare_sweep(cwd: Path, *overrides: str) -> tuple[Path, list[str], str]:
    """A small ``experiment=gd_compare`` sweep (digits, 2 epochs: SGD makes 2876 updates, more
    than TensorBoard's default of 1000 points per tag), run in ``cwd`` as a user runs it.

    Returns the sweep's root, the board command printed last (run as printed, it opens the
    sweep) and the whole output.
    """
    output = run_runner(["-m", "experiment=gd_compare", "epochs=2", "progress=false", *overrides], cwd)
    commands = printed_commands(output)
    assert commands, output
    command = commands[-1]
    root = Path(command[-1])
    assert root.is_dir() and root.is_relative_to(cwd / "outputs" / "sweeps"), command
    return root, command, output


# ------------------------------------------------------------------------------ what is served
@dataclass
class Job:
    """A run directory and what TensorBoard should serve for it."""

    path: Path
    run: str  # the run's name on the board: the sweep's experiment and its path in the sweep
    iterations: int
    summary: dict = field(repr=False)


def board_name(root: Path, event_dir: Path) -> str:
    """The name ``hpr board ROOT`` gives the run in ``event_dir``: ``<experiment>/<path in the
    sweep>`` for a sweep's job (``gd_compare/batch_size=8``), the directory's name for a run."""
    import yaml

    multirun = root / "multirun.yaml"
    if not multirun.is_file():
        return event_dir.name
    label = yaml.safe_load(multirun.read_text())["hydra"]["runtime"]["choices"].get("experiment") or root.name
    return f"{label}/{event_dir.relative_to(root).as_posix()}"


def jobs_of(root: Path) -> list[Job]:
    """Every finished run under ``root`` (a directory with ``summary.json``), with the run name
    the board gives its per-iteration events, found from where its event files are."""
    jobs = []
    for summary_path in sorted(root.rglob("summary.json")):
        path = summary_path.parent
        # The directory holding its per-iteration loss (a single run's directory also holds
        # the report's extras); not a failed attempt's, kept under .attempts/.
        event_dirs = {p.parent for p in path.rglob("events.out.tfevents.*") if ".attempts" not in p.relative_to(path).parts}
        runs = {board_name(root, d) for d in event_dirs if "loss/train_iter" in read_scalars(d)}
        assert len(runs) == 1, f"{path}: per-iteration events in {sorted(runs)}"
        summary = json.loads(summary_path.read_text())
        jobs.append(Job(path, runs.pop(), summary["iterations"], summary))
    return jobs


def get_json(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with _OPENER.open(f"{url.rstrip('/')}{path}{query}", timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read().decode("utf-8"))


def train_iter_points(url: str, run: str) -> list[list[float]]:
    """``[wall_time, step, value]`` for every served point of ``loss/train_iter`` in ``run``."""
    return get_json(url, "/data/plugin/scalars/scalars", run=run, tag="loss/train_iter")


def wait_for_every_point(url: str, jobs: list[Job], board: "Board") -> dict[str, list]:
    """Poll until each job's run serves ``loss/train_iter`` with one point per iteration.

    A run is listed as soon as its directory is found and its points come as they are read,
    so an early answer can be partial; a complete one holds exactly ``iterations`` points.
    Returns the points by run.
    """
    deadline = time.monotonic() + SERVED_S
    points: dict[str, list] = {}
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        board.check_alive()
        try:
            tags = get_json(url, "/data/plugin/scalars/tags")
            ready = [job for job in jobs if "loss/train_iter" in tags.get(job.run, {})]
            points = {job.run: train_iter_points(url, job.run) for job in ready}
            if len(ready) == len(jobs) and all(len(points[j.run]) >= j.iterations for j in jobs):
                return points
        except (urllib.error.URLError, OSError, ValueError) as err:  # a slow answer
            last_error = err
        time.sleep(0.5)
    counts = {run: len(p) for run, p in points.items()}
    raise AssertionError(
        f"TensorBoard did not serve every point within {SERVED_S:.0f} s: served {counts}, "
        f"expected { {j.run: j.iterations for j in jobs} }; last error {last_error!r}\n{board.log()}"
    )


# --------------------------------------------------------------------------------- the board
class Board:
    """A board process started from a command as printed; its output is collected as it comes."""

    def __init__(self, argv: list[str], cwd: Path):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")},
        )
        self.lines: list[str] = []
        self.printed_url = ""  # the whole URL printed, as a user copies it
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _drain(self, timeout: float) -> str | None:
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return ""
        if line is not None:
            self.lines.append(line)
        return line

    def log(self) -> str:
        while self._drain(0) not in ("", None):
            pass
        return f"board {shlex.join(self.argv)} (exit {self.proc.poll()}):\n" + "".join(self.lines)

    def wait_for_url(self) -> str:
        """The URL the board prints once TensorBoard accepts connections."""
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            line = self._drain(0.5)
            if line is None:
                break  # the process ended
            if line and (match := URL.search(line)):
                self.printed_url = PRINTED_URL.search(line).group(0)
                return match.group(0)
        raise AssertionError(f"the board printed no URL within {READY_S:.0f} s.\n{self.log()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the board exited early.\n{self.log()}")

    def children(self) -> list[int]:
        """Process ids of the board's children (TensorBoard's data server), from /proc."""
        found = []
        for path in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            found += [int(pid) for pid in path.read_text().split()]
        return found

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT, then the exit status (the process is killed if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_S)
                raise AssertionError(f"the board did not stop on SIGINT within {STOP_S:.0f} s.\n{self.log()}")
        return self.proc.returncode


@contextmanager
def board(argv: list[str], cwd: Path) -> Iterator[tuple[Board, str]]:
    """The board started from ``argv`` (a printed command), with its URL; always stopped on exit."""
    started = Board(argv, cwd)
    try:
        yield started, started.wait_for_url()
    finally:
        started.interrupt()
