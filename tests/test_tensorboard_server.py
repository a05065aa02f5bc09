"""End to end: a sweep's run directories, served by a real TensorBoard over HTTP.

The other TensorBoard tests read event files with ``EventAccumulator``; this one checks what
a user actually gets from ``tensorboard --logdir <sweep>``: one run per run directory, named
by its path relative to the logdir, each with every documented scalar tag, and the
per-iteration loss with one point per update. The server only ever listens on, and is only
ever asked on, 127.0.0.1; every request has a timeout, the wait for the server has a deadline,
and the server is stopped in a ``finally``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra.core.global_hydra import GlobalHydra

from runner.train import train

from conftest import compose_cfg, read_scalars

HOST = "127.0.0.1"
BATCH_SIZES = ("full", "1", "8")  # BGD, SGD, mini-batch
RUNS = {b: f"batch_size={b}/seed=0" for b in BATCH_SIZES}  # TensorBoard's run names

EPOCH_TAGS = ("loss/train_epoch", "loss/train_full", "loss/val", "acc/train", "acc/val")
ITERATION_TAGS = ("loss/train_iter", "lr", "grad_norm")
EXPECTED_TAGS = {
    *ITERATION_TAGS,
    *EPOCH_TAGS,
    *(f"{axis}/{tag}" for axis in ("by_iteration", "by_samples", "by_time_ms") for tag in EPOCH_TAGS),
}

REQUEST_TIMEOUT_S = 2.0
READY_DEADLINE_S = 60.0
START_ATTEMPTS = 3  # a fresh port each time, in case another process took ours meanwhile
STOP_TIMEOUT_S = 10.0

# Talk to the server directly, never through an http(s)_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _get_json(port: int, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with _OPENER.open(f"http://{HOST}:{port}{path}{query}", timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read().decode("utf-8"))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def tensorboard_server(logdir: Path, log_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """A TensorBoard on a free loopback port, serving ``logdir``; always stopped on exit.

    ``--load_fast=false``: the pure-Python loader, in this one process. With the default
    ``auto`` (or ``true``) TensorBoard instead spawns the Rust ``tensorboard_data_server``
    binary from the optional ``tensorboard-data-server`` wheel and talks to it over gRPC on a
    second port. Both work offline here (the wheel is installed), but the Python loader needs
    nothing platform-specific, leaves exactly one process to terminate (the Rust child only
    exits once it sees its parent's stdin close), honours ``--reload_interval`` (the Rust
    server is passed its own ``--reload``), and served the first complete answer sooner on
    this machine (~0.9 s against ~1.4 s). The HTTP API checked below is the same in both modes.
    """
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", HOST]
    command += ["--load_fast=false", "--reload_interval", "1"]
    for attempt in range(1, START_ATTEMPTS + 1):
        port = _free_port()
        with open(log_path, "ab") as log:
            log.write(f"--- attempt {attempt}: port {port}\n".encode())
            log.flush()
            proc = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            # The port was free a moment ago; if TensorBoard still could not bind it, it exits
            # at once ("could not bind to port"): try again on another one.
            deadline = time.monotonic() + 5.0
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    _get_json(port, "/data/runs")
                    break
                except (urllib.error.URLError, OSError, ValueError):
                    time.sleep(0.2)
            if proc.poll() is not None and "could not bind" in log_path.read_text(errors="replace"):
                continue
            yield port, proc
            return
        finally:
            _stop(proc)
    raise AssertionError(f"TensorBoard found no free port in {START_ATTEMPTS} tries:\n{log_path.read_text()}")


def wait_until_served(port: int, proc: subprocess.Popen, log_path: Path, runs: set[str]) -> dict[str, dict]:
    """Poll until ``/data/runs`` lists exactly ``runs`` and every one has every expected tag.

    Both conditions: the Python loader lists a run as soon as it discovers its directory, and
    its tags only once the run's events are read, so an early answer can have runs but no tags.
    Returns the last ``/data/plugin/scalars/tags`` answer.
    """
    deadline = time.monotonic() + READY_DEADLINE_S
    served_runs: Any = None
    tags: dict[str, dict] = {}
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"TensorBoard exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            served_runs = _get_json(port, "/data/runs")
            if set(served_runs) == runs:
                tags = _get_json(port, "/data/plugin/scalars/tags")
                if all(EXPECTED_TAGS <= set(tags.get(run, {})) for run in runs):
                    return tags
        except (urllib.error.URLError, OSError, ValueError) as err:  # not up yet, or a slow answer
            last_error = err
        time.sleep(0.25)
    raise AssertionError(
        f"TensorBoard did not serve every run and tag within {READY_DEADLINE_S:.0f} s.\n"
        f"runs: {served_runs}\ntags: { {run: sorted(t) for run, t in tags.items()} }\n"
        f"last error: {last_error!r}\nserver log:\n{log_path.read_text()}"
    )


@pytest.fixture
def sweep(tmp_path) -> Path:
    """``<sweep>/batch_size=<b>/seed=0`` for BGD, SGD and mini-batch on iris, 2 epochs, in-process.

    The same ``<overrides>/seed=<k>`` nesting a Hydra multirun gives its jobs, built without
    a subprocess (a real ``-m`` sweep with ``seed=0,1`` names them the same way).
    """
    root = tmp_path / "sweep"
    try:
        for b in BATCH_SIZES:
            out = root / f"batch_size={b}" / "seed=0"
            # Quoted: a bare '=' in the path is not valid in a Hydra override value.
            train(compose_cfg(["dataset=iris", "epochs=2", f"batch_size={b}"], output_dir=f"'{out}'"))
            assert (out / "summary.json").is_file()
    finally:
        GlobalHydra.instance().clear()
    return root


def test_tensorboard_serves_every_run_and_tag_of_a_sweep(sweep, tmp_path):
    summaries = {b: json.loads((sweep / f"batch_size={b}/seed=0/summary.json").read_text()) for b in BATCH_SIZES}
    assert {b: s["status"] for b, s in summaries.items()} == dict.fromkeys(BATCH_SIZES, "done")
    assert summaries["full"]["iterations"] == 2  # BGD: one update per epoch

    log_path = tmp_path / "tensorboard.log"
    try:
        with tensorboard_server(sweep, log_path) as (port, proc):
            tags = wait_until_served(port, proc, log_path, set(RUNS.values()))

            # Exact run names: each run directory, relative to the logdir, '/'-separated.
            assert sorted(_get_json(port, "/data/runs")) == sorted(RUNS.values())
            for b, run in RUNS.items():
                missing = EXPECTED_TAGS - set(tags[run])
                assert not missing, f"{run} is served without {sorted(missing)}"

            # The per-iteration loss: one point per update, steps 0..T-1, the values on disk.
            for b, run in RUNS.items():
                points = _get_json(port, "/data/plugin/scalars/scalars", run=run, tag="loss/train_iter")
                iterations = summaries[b]["iterations"]
                assert len(points) == iterations, run
                assert [step for _, step, _ in points] == list(range(iterations)), run
                on_disk = read_scalars(sweep / run)["loss/train_iter"]
                assert [value for _, _, value in points] == pytest.approx([v for _, v in on_disk], rel=1e-6)
            # iris: 120 training samples, 2 epochs.
            assert {b: s["iterations"] for b, s in summaries.items()} == {"full": 2, "1": 240, "8": 30}
        assert proc.returncode is not None  # stopped on leaving the block
    except BaseException:
        if log_path.exists():
            print(f"TensorBoard log ({log_path}):\n{log_path.read_text(errors='replace')}")
        raise
