"""End to end: the dashboard command a run or sweep prints, run as printed, over HTTP.

A user runs a sweep, copies the ``Open in TensorBoard:`` command from its output and runs it.
These tests do exactly that (from another directory, to show the command stands alone) and
ask the TensorBoard it starts, through the HTTP API its charts use, for every run's
per-iteration loss: every update must come back (steps 0..T-1, the values on disk), not
TensorBoard's default 1000 sampled points, nor none (``--samples_per_plugin scalars=0`` in
TensorBoard 2.21).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from boardutil import board, gd_compare_sweep, get_json, jobs_of, printed_commands, run_runner, wait_for_every_point
from conftest import read_scalars
from runner.boardview import COLOR_BY_CONFIGURATION, PINNED_TAGS, RunLinks, run_names, view_query

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
            on_disk = read_scalars(job.path)["loss/train_iter"]
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


# ------------------------------------------------------------------ names, link, start-up
def _fake_run(path: Path) -> Path:
    """A directory TensorBoard takes for a run (one event file), as a job leaves it."""
    path.mkdir(parents=True)
    (path / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    (path / "summary.json").write_text("{}")
    return path


def _fake_sweep(root: Path, experiment: str | None, jobs: list[str]) -> Path:
    root.mkdir(parents=True)
    choices = {"experiment": experiment} if experiment else {"dataset": "digits"}
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    for job in jobs:
        _fake_run(root / job)
    return root


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` with its content (a link: its target), to compare before and after."""
    return {p.relative_to(root).as_posix(): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def test_runs_are_named_by_experiment_and_swept_keys_and_two_sweeps_are_told_apart(tmp_path):
    out = tmp_path / "outputs"
    jobs = ["batch_size=8/seed=0", "batch_size=8/seed=1", "batch_size=8/seed_aggregate", "batch_size=full/seed=0"]
    first = _fake_sweep(out / "sweeps" / "2026-12-04_11-34-33-989570", "gd_compare", jobs)
    _fake_sweep(out / "sweeps" / "2026-12-04_12-00-01-000001", "gd_compare", ["batch_size=1"])
    _fake_sweep(out / "sweeps" / "2026-12-05_09-00-00-000000", None, ["optimizer=adam"])
    _fake_sweep(out / "sweeps" / "2026-12-06_09-00-00-000000", None, ["optimizer=sgd"])  # same time, next day
    _fake_sweep(out / "my_study", None, ["lr=0.1"])  # named by the user (hydra.sweep.dir)
    _fake_run(out / "runs" / "2026-12-04_10-00-00-000000")
    _fake_run(out / "runs" / "2026-12-04_10-00-00-000000" / ".attempts" / "1")  # hidden: no run
    _fake_run(out / "old" / "a" / "run1")
    _fake_run(out / "old" / "b" / "run1")

    names = run_names(out)
    assert names == {
        **{f"gd_compare@11-34-33/{job}": first / job for job in jobs},
        "gd_compare@12-00-01/batch_size=1": out / "sweeps" / "2026-12-04_12-00-01-000001" / "batch_size=1",
        "sweep@12-05_09-00-00/optimizer=adam": out / "sweeps" / "2026-12-05_09-00-00-000000" / "optimizer=adam",
        "sweep@12-06_09-00-00/optimizer=sgd": out / "sweeps" / "2026-12-06_09-00-00-000000" / "optimizer=sgd",
        "my_study/lr=0.1": out / "my_study" / "lr=0.1",
        "2026-12-04_10-00-00-000000": out / "runs" / "2026-12-04_10-00-00-000000",
        "a/run1": out / "old" / "a" / "run1",
        "b/run1": out / "old" / "b" / "run1",
    }
    # One sweep on its own: the experiment and the swept keys; a run on its own: its name, never ".".
    assert set(run_names(first)) == {f"gd_compare/{job}" for job in jobs}
    assert set(run_names(out / "sweeps" / "2026-12-05_09-00-00-000000")) == {"sweep@09-00-00/optimizer=adam"}
    assert set(run_names(first / "batch_size=8" / "seed=1")) == {"gd_compare/batch_size=8/seed=1"}
    assert set(run_names(out / "runs" / "2026-12-04_10-00-00-000000")) == {"2026-12-04_10-00-00-000000"}
    # The two gd_compare sweeps differ within the first 20 characters (the run list's visible width).
    assert len({name[:20] for name in names if name.startswith("gd_compare")}) == 2


def test_the_colour_regex_groups_the_seeds_of_one_configuration(tmp_path):
    regex = re.compile(COLOR_BY_CONFIGURATION)  # the same syntax in JavaScript's RegExp
    group = {name: regex.match(name).groups() for name in (
        "gd_compare/batch_size=8/seed=0", "gd_compare/batch_size=8/seed=1", "gd_compare/batch_size=8/seed_aggregate",
        "gd_compare/batch_size=full/seed=0", "gd_compare/batch_size=1", "2026-12-04_10-00-00-000000")}
    assert group["gd_compare/batch_size=8/seed=0"] == group["gd_compare/batch_size=8/seed=1"] \
        == group["gd_compare/batch_size=8/seed_aggregate"] == ("gd_compare/batch_size=8",)
    assert len({group[n] for n in group}) == 4


def test_the_printed_query_is_what_tensorboard_reads():
    query = dict(urllib.parse.parse_qsl(view_query()))
    assert set(query) == {"smoothing", "runColorGroup", "pinnedCards"}
    assert float(query["smoothing"]) == 0
    assert query["runColorGroup"] == f"regex:{COLOR_BY_CONFIGURATION}"
    # The deep-link reader keeps a card with a string plugin and tag and no run (a multi-run plugin).
    cards = json.loads(query["pinnedCards"])
    assert cards == [{"plugin": "scalars", "tag": tag} for tag in PINNED_TAGS]
    assert cards[0]["tag"] == "vs_samples/loss/train_full" and cards[-1]["tag"] == "loss/train_iter"


def test_the_links_are_made_outside_the_runs_and_removed(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep", "gd_compare", ["batch_size=8/seed=0"])
    before = _tree(sweep)
    with RunLinks(sweep) as links:
        link = links.path / "gd_compare" / "batch_size=8" / "seed=0"
        assert link.is_symlink() and link.resolve() == (sweep / "batch_size=8" / "seed=0").resolve()
        assert not links.path.is_relative_to(sweep)
        _fake_run(sweep / "batch_size=8" / "seed=1")  # a job that starts later appears
        links.refresh()
        assert (links.path / "gd_compare" / "batch_size=8" / "seed=1").is_symlink()
    assert not links.path.exists()
    after = _tree(sweep)
    del after["batch_size=8/seed=1"], after["batch_size=8/seed=1/events.out.tfevents.1.host.1.0"], after["batch_size=8/seed=1/summary.json"]
    assert after == before  # nothing written inside the runs, nothing removed


def test_a_port_whose_listener_never_answers_ends_the_wait_in_one_line(monkeypatch):
    import runner.board as board_module

    with socket.socket() as listener:  # accepts into its backlog, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        monkeypatch.setattr(board_module, "start", lambda logdir, port_, max_points: f"http://127.0.0.1:{port}/")
        with pytest.raises(board_module.StartupTimeout, match=rf"TensorBoard at http://127.0.0.1:{port}/ did not answer an HTTP request within 1 s \(is another program holding port {port}\?\)"):
            board_module.start_and_wait(Path("."), port, 10, limit_s=1.0)
    # A start that never returns is bounded too.
    monkeypatch.setattr(board_module, "start", lambda *args: threading.Event().wait())
    with pytest.raises(board_module.StartupTimeout, match=r"did not start listening on 127.0.0.1:5 within 1 s"):
        board_module.start_and_wait(Path("."), 5, 10, limit_s=1.0)


def test_a_port_in_use_is_refused_in_one_line(tmp_path):
    (tmp_path / "outputs").mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        proc = _board(f"--port={port}", cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert errors == [f"Error: --port={port}: TensorBoard could not start: TensorBoard could not bind to port {port}, it was already in use"]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # board start-ups interrupted
@pytest.mark.parametrize("after_s", [0.0, 0.5])
def test_ctrl_c_during_start_up_ends_quietly(tmp_path, after_s):
    """SIGINT once the board is running its own start-up (its link directory exists, TensorBoard
    is loading): no traceback, and the link directory is gone."""
    _fake_run(tmp_path / "run")
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "runner", "board", str(tmp_path / "run")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temp)})
    try:
        deadline = time.monotonic() + 60
        while not list(temp.glob("hpr-board-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(temp.glob("hpr-board-*")), "the board never started"
        time.sleep(after_s)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 0 and out.splitlines()[-1] == "TensorBoard stopped.", (proc.returncode, out, err)
    assert not list(temp.glob("hpr-board-*"))
