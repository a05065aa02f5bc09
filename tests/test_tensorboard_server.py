"""End to end: the dashboard command a run or sweep prints, run as printed, over HTTP.

A user runs a sweep, copies the ``Open in TensorBoard:`` command from its output and runs it.
These tests do exactly that (from another directory, to show the command stands alone) and
ask the TensorBoard it starts, through the HTTP API its charts use, for every run's
per-iteration loss: every update must come back (steps 0..T-1, the values on disk), not
TensorBoard's default 1000 sampled points, nor none (``--samples_per_plugin scalars=0`` in
TensorBoard 2.21).
"""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from boardutil import board, gd_compare_sweep, get_json, jobs_of, printed_commands, run_runner, wait_for_every_point
from conftest import read_scalars

BATCH_SIZES = {"full", 1, 8, 32, 128}  # experiment=gd_compare


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, list[str], str]:
    """``python -m runner -m experiment=gd_compare epochs=2`` run in a fresh directory."""
    return gd_compare_sweep(tmp_path_factory.mktemp("user"))


def test_every_job_and_the_sweep_print_one_command_for_the_sweep(sweep):
    root, command, output = sweep
    commands = printed_commands(output)
    # Each of the five jobs, then the sweep's end: all the same command, naming the sweep.
    assert commands == [command] * (len(BATCH_SIZES) + 1)
    bin_dir = Path(sys.executable).parent
    assert command[:-1] in ([str(bin_dir / "hpr"), "board"], [sys.executable, "-m", "runner", "board"])
    assert Path(command[-1]).is_absolute() and len(jobs_of(root)) == len(BATCH_SIZES)
    assert f"`{shlex.join(command)}`" in (root / "report.md").read_text()  # the report names it too


def test_the_printed_command_serves_every_point_of_every_run(sweep, tmp_path):
    root, command, _ = sweep
    jobs = jobs_of(root)
    # The exact number of updates: epochs x ceil(N / B), BGD one per epoch.
    for job in jobs:
        s = job.summary
        batch = s["n_train"] if s["regime"] == "bgd" else s["batch_size"]
        assert job.iterations == 2 * math.ceil(s["n_train"] / batch) > 0, job
    assert max(job.iterations for job in jobs) > 1000  # SGD: more than TensorBoard keeps by default

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with board(command, cwd=elsewhere) as (started, url):
        assert url.startswith("http://127.0.0.1:")
        points = wait_for_every_point(url, jobs, started)
        assert {job.run for job in jobs} <= set(get_json(url, "/data/runs"))
        for job in jobs:
            served = points[job.run]
            assert [step for _, step, _ in served] == list(range(job.iterations)), job.run
            on_disk = read_scalars(root / job.run)["loss/train_iter"]
            assert [value for _, _, value in served] == pytest.approx([v for _, v in on_disk], rel=1e-6)
        data_server = started.children()
    # Ctrl-C: a clean exit, and TensorBoard's data server (if it started one) goes with it.
    assert started.proc.returncode == 0, started.log()
    assert "TensorBoard stopped." in started.log()
    for pid in data_server:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid


def test_a_single_run_prints_the_command_that_opens_it(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    output = run_runner(["dataset=iris", "epochs=1", "progress=false"], cwd=user)
    (command,) = printed_commands(output)  # exactly one
    (run_dir,) = (p.parent for p in (user / "outputs").rglob("summary.json"))
    assert Path(command[-1]) == run_dir.resolve()
    (job,) = jobs_of(run_dir)
    assert job.iterations == math.ceil(120 / 32)  # iris: 120 training samples, batch size 32

    with board(command, cwd=tmp_path) as (started, url):
        points = wait_for_every_point(url, [job], started)
        assert [step for _, step, _ in points[job.run]] == list(range(job.iterations))


def _board(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "board", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_board_refuses_a_directory_that_does_not_exist(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for name, what in (("no_such_dir", "does not exist"), ("a_file", "is not a directory")):
        proc = _board(name, cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr.splitlines() == [f"Error: board DIR={name} {what}: give a run or sweep directory, e.g. outputs"]
    (tmp_path / "outputs").mkdir()
    for flag, allowed in (("--port=70000", "0 (a free port) or 1..65535"), ("--max-points=0", "an integer >= 1")):
        proc = _board(flag, cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr.splitlines() == [f"Error: {flag} is not allowed: {allowed}"]
    (tmp_path / "outputs").rmdir()
    # The default DIR is ./outputs, which does not exist here either.
    proc = _board(cwd=tmp_path)
    assert (proc.returncode, proc.stderr.splitlines()) == (2, ["Error: board DIR=outputs does not exist: give a run or sweep directory, e.g. outputs"])


def test_board_help_explains_it(tmp_path):
    proc = _board("--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    text = " ".join(proc.stdout.split())
    assert text.startswith("usage: python -m runner board [-h] [--port PORT] [--max-points N] [DIR]")
    for words in ("127.0.0.1 only", "keeps every logged point by default", "until Ctrl-C", "(default: outputs)", "--port PORT"):
        assert words in text
    assert not (tmp_path / "outputs").exists()  # Hydra never saw the command line
