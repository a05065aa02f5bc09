"""One run across processes: ``torchrun --nproc_per_node=2 -m runner ...`` as a user runs it.

Two CPU processes (gloo) must train the same run as one process: every logged loss and the
final weights equal to 1e-5, for BGD, SGD and mini-batch with an uneven last batch, with and
without micro-batches; only rank 0 writes; a kill -9 of one rank and a rerun of the same
command give the same result; a command that cannot be distributed is refused on every rank.

The tests that start real torchrun processes (seconds each) are marked ``ddp`` (deselected by
default; CI runs them with ``-m ddp``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner.epochs import TIMED_PREFIXES, TRAIN_SECONDS_TAG
from runner.errors import ConfigError
from runner.launchers.distributed import Session, under_torchrun
from runner.train import train
from conftest import FAST, REPO, assert_train_seconds_logged, compose_cfg, read_scalars
from test_presets import readme_blocks

# The torchrun tests take seconds each; the rest of this file runs in the default suite.
ddp = pytest.mark.ddp

TORCHRUN = Path(sys.executable).parent / "torchrun"
HPR_TORCHRUN = Path(sys.executable).parent / "hpr-torchrun"  # the README's: torchrun ending in one line
# Small enough for seconds per run: iris has 120 training rows after the validation split.
BASE = ("dataset=iris", "epochs=2", "seed=3")


def torchrun_cmd(*overrides: str, nproc: int = 2, launcher: Path = HPR_TORCHRUN) -> list[str]:
    """The README's command: torchrun on one machine, N processes, the runner's overrides."""
    return [str(launcher), "--standalone", f"--nproc_per_node={nproc}", "-m", "runner", *FAST, *overrides]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def torchrun(cwd: Path, *overrides: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(*overrides, nproc=nproc), cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def single(out: Path, *overrides: str) -> dict:
    """The same run in one process (in this one), writing into ``out``."""
    return train(compose_cfg(overrides, out))


def assert_same_run(ddp: Path, one: Path) -> None:
    """Every logged series (steps exact, values to 1e-5) and the final weights agree."""
    a, b = read_scalars(ddp), read_scalars(one)
    # Time is the one thing two runs never share.
    timeless = lambda tags: sorted(t for t in tags if not t.startswith(TIMED_PREFIXES))  # noqa: E731
    assert timeless(a) == timeless(b)
    assert "loss/train_iter" in a and "loss/train_full" in a
    assert [s for s, _ in a[TRAIN_SECONDS_TAG]] == [s for s, _ in b[TRAIN_SECONDS_TAG]]
    assert_train_seconds_logged(ddp)
    for tag in timeless(a):
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        torch.testing.assert_close(torch.tensor([v for _, v in a[tag]]), torch.tensor([v for _, v in b[tag]]), atol=1e-5, rtol=1e-5, msg=tag)
    wa, wb = torch.load(ddp / "model.pt", weights_only=True), torch.load(one / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-5)


CASES = {
    "bgd": ("batch_size=full",),
    "bgd-micro": ("batch_size=full", "micro_batch_size=16"),
    "sgd": ("batch_size=1",),
    # 120 rows in batches of 25: four full batches and a last one of 20; ranks take 13 + 12 rows.
    "minibatch-uneven": ("batch_size=25",),
    "minibatch-uneven-micro": ("batch_size=25", "micro_batch_size=4"),
}


@ddp
@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_the_same_run_as_one(tmp_path, case):
    overrides = (*BASE, *CASES[case])
    result = torchrun(tmp_path, *overrides, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert result.returncode == 0, result.stderr[-3000:]
    reference = single(tmp_path / "one", *overrides)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["status"] == "done"
    assert summary["iterations"] == reference["iterations"] == 2 * reference["iterations_per_epoch"]
    assert_same_run(tmp_path / "ddp", tmp_path / "one")


def readme_torchrun_commands() -> list[list[str]]:
    """Every ``hpr-torchrun`` line in the README's code blocks (as the README prints it, from the
    project's venv: ``.venv/bin/hpr-torchrun``), as an argv."""
    return [shlex.split(line) for block in readme_blocks((REPO / "README.md").read_text()) for line in block
            if line.startswith((".venv/bin/hpr-torchrun ", "hpr-torchrun "))]


@ddp
def test_the_readme_command_trains_the_same_run_as_one_process(tmp_path):
    """The README's command as printed (from a fresh directory, 2 epochs instead of 20)."""
    (argv,) = readme_torchrun_commands()
    assert Path(argv[0]).name == "hpr-torchrun" and argv[1:4] == ["--standalone", "--nproc_per_node=2", "-m"] and argv[4] == "runner"
    overrides = [*argv[5:], "epochs=2", "progress=false", "device=cpu"]
    done = subprocess.run([str(HPR_TORCHRUN), *argv[1:5], *overrides], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    out = tmp_path / run_dir
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    single(tmp_path / "one", *[o for o in overrides if not o.startswith("hydra.")])
    assert_same_run(out, tmp_path / "one")


@ddp
def test_rank_zero_alone_decides_the_directory_and_writes(tmp_path):
    """No hydra.run.dir: rank 0 picks outputs/runs/<now>; nothing else appears anywhere."""
    result = torchrun(tmp_path, *BASE, "batch_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "report" not in p.parts and p.name != "report.md")
    (event,) = [f for f in files if f.startswith("events.out.tfevents.")]
    hydra_record = [f".hydra/{n}" for n in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    expected = [".lock", *[f".hydra/accepted/{n}" for n in ("config.yaml", "hydra.yaml", "overrides.yaml")], *hydra_record,
                "checkpoints/last.ckpt", "checkpoints/prev.ckpt", "cli.log", event, "model.pt", "summary.json"]
    assert files == sorted(expected)
    # One process logged: each epoch line once (rank 0's), in the one log file.
    assert (run / "cli.log").read_text().count("epoch 2  ") == 1
    # The same command into the same directory finds the finished run, on every rank.
    again = torchrun(tmp_path, *BASE, "batch_size=32", f"hydra.run.dir={run}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds a finished run" in again.stderr + again.stdout
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 1
    # A refusal only rank 0 can find (it alone reads the directory) ends the other rank too.
    refused = torchrun(tmp_path, *BASE, "batch_size=32", "resume=never", f"hydra.run.dir={run}")
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and "Error: output_dir=" in errors[0] + errors[1], errors
    assert "Error: rank 0 did not start the run (exit status 2); its message says why" in errors
    assert "]: Traceback" not in refused.stderr


@ddp
@pytest.mark.parametrize(
    "overrides, refused",
    [
        (("budget=seconds", "budget_amount=5"), "Error: budget='seconds' is not allowed: epochs, updates or samples under torchrun"),
        (("-m", "batch_size=1,32"), "Error: hydra.mode='MULTIRUN' is not allowed: a single run under torchrun"),
        (("optimizer.lr=-1",), "Error: optimizer.lr=-1"),
        (("noise.every=5",), "Error: noise.every=5 is not allowed: 0 under torchrun"),
    ],
    ids=["budget-seconds", "multirun", "bad-config", "instruments"],
)
def test_refused_on_every_rank_and_nothing_written(tmp_path, overrides, refused):
    """Every rank refuses; rank 0 says so, in the one line the whole command prints."""
    result = torchrun(tmp_path, *BASE, *overrides)
    assert result.returncode == 2
    [line] = (result.stderr + result.stdout).strip().splitlines()
    assert line.startswith(refused), line
    assert list(tmp_path.iterdir()) == []


@ddp
def test_plain_torchrun_still_refuses_on_every_rank(tmp_path):
    """PyTorch's own torchrun runs the same workers; its agent adds its failure report."""
    result = subprocess.run(torchrun_cmd(*BASE, "optimizer.lr=-1", launcher=TORCHRUN), cwd=tmp_path, env=env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("Error: ")]
    assert lines == [lines[0]] and lines[0].startswith("Error: optimizer.lr=-1"), lines
    assert "ChildFailedError" in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("start, size", [(0, 1), (0, 2), (5, 7), (100, 20), (0, 120)])
def test_rank_shares_partition_each_batch_in_order(world, start, size):
    """Contiguous, in rank order, covering the batch exactly once, sizes differing by at most one
    (so empty shares only when the batch is smaller than the number of ranks)."""
    shares = [Session(rank=r, world=world, local_rank=r, local_world=world).share(slice(start, start + size)) for r in range(world)]
    assert shares[0].start == start and shares[-1].stop == start + size
    assert all(a.stop == b.start for a, b in zip(shares, shares[1:]))
    lengths = [s.stop - s.start for s in shares]
    assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 0
    assert lengths.count(0) == max(world - size, 0)


def test_torchrun_is_recognised_by_its_environment():
    torchrun_env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1"}
    assert under_torchrun(torchrun_env)
    assert not under_torchrun({k: v for k, v in torchrun_env.items() if k != "MASTER_ADDR"})
    assert not under_torchrun({})


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker torchrun (``parent``) started as ``rank``, once it exists."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


STOPPED_LINE = "Stopped by {}: the ranks stopped after the same update and saved it; the same command resumes the run from its last checkpoint"
# A stop asked of the launcher: the signal, who gets it (a shell's Ctrl-C goes to the whole
# foreground process group: the launcher and every rank at once), the exit status.
LAUNCHER_STOPS = {"sigterm-torchrun": (signal.SIGTERM, os.kill), "ctrl-c": (signal.SIGINT, os.killpg)}


@ddp
@pytest.mark.parametrize("stop", ["kill-9-rank-1", "kill-9-rank-0", "sigterm-torchrun", "ctrl-c"])
def test_stopped_run_resumes_exactly_with_the_same_command(tmp_path, stop):
    """A kill -9 of either rank (torchrun then ends the other), or SIGTERM or Ctrl-C to torchrun
    (forwarded to every rank, which agree on the update to stop after, ending in one line):
    rerunning the command resumes and ends with the same losses and weights as one
    uninterrupted process."""
    overrides = (*BASE, "epochs=4", "batch_size=1", "checkpoint_every=50")
    out = tmp_path / "ddp"
    cmd = torchrun_cmd(*overrides, f"hydra.run.dir={out}")
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        # Its own session, as a shell starts a job: Ctrl-C's SIGINT reaches this group only.
        first = subprocess.Popen(cmd, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            # Past the first in-epoch checkpoint (the first one is written before any update).
            deadline = time.time() + 120
            while not (out / "checkpoints" / "prev.ckpt").exists() and first.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            assert first.poll() is None
            if stop in LAUNCHER_STOPS:
                sig, send = LAUNCHER_STOPS[stop]
                send(first.pid, sig)
            else:
                victim = _rank_pid(first.pid, int(stop[-1]))
                assert victim is not None
                os.kill(victim, signal.SIGKILL)
            first.wait(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
        stderr.seek(0)
        printed = stderr.read()
    summary = out / "summary.json"
    if stop in LAUNCHER_STOPS:
        sig = LAUNCHER_STOPS[stop][0]
        assert first.returncode == 128 + sig
        assert printed == STOPPED_LINE.format(sig.name) + "\n", printed[-3000:]
        # Both ranks stopped after the same update and rank 0 saved it.
        stopped = json.loads(summary.read_text())
        assert stopped["status"] == "interrupted" and 0 < stopped["iterations"] < 4 * 120
    else:
        assert first.returncode == 1
        [line] = _rank_errors(printed, killed=int(stop[-1]))
        assert line["what"] == "summing an update's gradient", line.group(0)
        assert not summary.exists(), "the run ended before the kill: nothing was resumed"
    resumed = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr + resumed.stdout
    reference = single(tmp_path / "one", *overrides)
    assert json.loads(summary.read_text())["iterations"] == reference["iterations"] == 4 * 120
    assert_same_run(out, tmp_path / "one")


@ddp
@pytest.mark.cuda
def test_one_process_per_gpu_trains_the_same_run_as_one_process(tmp_path):
    """NCCL: as many ranks as GPUs, each on its own GPU, against one process on one GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    overrides = (*BASE, "batch_size=25", "micro_batch_size=4", "device=cuda")
    result = torchrun(tmp_path, *overrides, f"hydra.run.dir={tmp_path / 'ddp'}", nproc=torch.cuda.device_count())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "One run across" in result.stderr + result.stdout and "nccl" in result.stderr + result.stdout
    single(tmp_path / "one", *overrides)
    assert_same_run(tmp_path / "ddp", tmp_path / "one")


@ddp
@pytest.mark.cuda
def test_more_processes_than_gpus_is_refused_on_every_rank(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    result = torchrun(tmp_path, *BASE, "device=cuda", nproc=torch.cuda.device_count() + 1)
    assert result.returncode != 0
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("Error: ")]
    assert len(lines) == torch.cuda.device_count() + 1
    assert all(line.startswith("Error: device='cuda' is not allowed: one GPU per process under torchrun") for line in lines), lines
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ gloo faults: one line each
RANK_LINE = re.compile(r"^Error: torchrun rank [01] of 2: (?P<what>[a-z' ]+) failed \((?P<gloo>[^\n]+?)\); (?P<why>.+)$")


KILLED_LINE = re.compile(r"^Error: torchrun rank (?P<rank>[01]) \(pid \d+\) was killed by (?P<signal>SIG[A-Z]+); the other ranks "
                         r"were stopped: the same command resumes the run from its last checkpoint$")


def _rank_errors(output: str, killed: int | None = None) -> list[re.Match]:
    """The ranks' lines in the launcher's output, and for a rank killed by a signal the
    launcher's line naming it; nothing else of any length (no traceback, no failure report)."""
    assert not any(word in output for word in ("Traceback", "ChildFailedError", "SignalException", "FAILED")), output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    if killed is not None:
        *lines, last = lines
        match = KILLED_LINE.match(last)
        assert match and int(match["rank"]) == killed and match["signal"] == "SIGKILL", output[-3000:]
    matches = [RANK_LINE.match(line) for line in lines]
    assert lines and all(matches), output[-3000:]
    return matches


def _signal_rank_1_mid_run(cmd: list[str], cwd: Path, out: Path, sig: signal.Signals, environ: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd``, send ``sig`` to rank 1 once the first in-epoch checkpoint exists, and return
    the exit status and everything printed (a stopped rank is let go again at the end)."""
    run = subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "prev.ckpt").exists() and run.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        victim = _rank_pid(run.pid, 1)
        assert victim is not None
        os.kill(victim, sig)
        output, _ = run.communicate(timeout=120)
    finally:
        if victim is not None and sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        if run.poll() is None:
            run.kill()
    return run.returncode, output


@ddp
def test_a_rank_killed_mid_run_ends_the_other_with_one_line_and_a_non_zero_exit(tmp_path):
    out = tmp_path / "ddp"
    cmd = torchrun_cmd(*BASE, "epochs=40", "batch_size=1", "checkpoint_every=50", f"hydra.run.dir={out}")
    code, output = _signal_rank_1_mid_run(cmd, tmp_path, out, signal.SIGKILL, env())  # the survivor's collective fails at once
    assert code == 1
    [line] = _rank_errors(output, killed=1)
    assert line["what"] == "summing an update's gradient" and "Connection" in line["gloo"]
    assert line["why"] == ("rank 1 died or cannot be reached (ranks wait 600 s for each other: RUNNER_DIST_TIMEOUT_S); "
                           "the run stopped, and its last checkpoint resumes with the same command"), line.group(0)
    assert not (out / "summary.json").exists() and (out / "checkpoints" / "last.ckpt").exists()  # resumable, as test_stopped_run... shows


@ddp
def test_a_hung_rank_ends_the_run_within_the_timeout_with_one_line_and_it_resumes(tmp_path):
    """A rank that stops answering (SIGSTOP: alive, silent) is given RUNNER_DIST_TIMEOUT_S; the
    other rank then says what it waited for, in one line, and the run resumes exactly."""
    overrides = (*BASE, "epochs=4", "batch_size=1", "checkpoint_every=50")
    out = tmp_path / "ddp"
    cmd = torchrun_cmd(*overrides, f"hydra.run.dir={out}")
    # The timeout, then torchrun's 30-second grace before it kills the stopped rank (a failed
    # worker's: torch 2.13's agent does not apply --shutdown-timeout to it).
    code, output = _signal_rank_1_mid_run(cmd, tmp_path, out, signal.SIGSTOP, {**env(), "RUNNER_DIST_TIMEOUT_S": "3"})
    assert code == 1
    # Rank 0's line alone: rank 1, killed at the end of the grace, is not named as the cause.
    [line] = _rank_errors(output)
    assert line.group(0).startswith("Error: torchrun rank 0 of 2: summing an update's gradient failed (Timed out waiting 3000ms "), line.group(0)
    assert line["why"] == (
        "waited 3 s for rank 1 (RUNNER_DIST_TIMEOUT_S sets how long): it hangs or cannot be reached; "
        "the run stopped, and its last checkpoint resumes with the same command"
    ), line.group(0)
    assert not (out / "summary.json").exists()
    resumed = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr + resumed.stdout
    reference = single(tmp_path / "one", *overrides)
    assert json.loads((out / "summary.json").read_text())["iterations"] == reference["iterations"] == 4 * 120
    assert_same_run(out, tmp_path / "one")


@ddp
def test_a_process_group_that_cannot_form_ends_every_rank_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(torchrun_cmd(*BASE, f"hydra.run.dir={out}"), cwd=tmp_path, env={**env(), "GLOO_SOCKET_IFNAME": "nosuch0"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    # Each rank that failed by itself says so (the agent may stop the other first: then it is silent).
    for line in _rank_errors(result.stderr + result.stdout):
        assert line["what"] == "forming the process group" and "nosuch0" in line["gloo"]
        assert line["why"] == "the ranks could not connect within 600 s (RUNNER_DIST_TIMEOUT_S): check GLOO_SOCKET_IFNAME, MASTER_ADDR and MASTER_PORT, and that every node started"
    assert not out.exists()


def test_a_failed_collective_becomes_one_line_naming_the_rank_and_the_timeout(monkeypatch):
    from runner.launchers.distributed import PeerLost, collective, collective_timeout

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RUNNER_DIST_TIMEOUT_S", "30")
    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.0.0.2]:5: Connection reset by peer. This is typically caused by a remote worker hanging."
    with pytest.raises(PeerLost) as info, collective("summing an update's gradient"):
        raise RuntimeError(gloo)
    assert str(info.value) == (
        "torchrun rank 1 of 4: summing an update's gradient failed (Read error [10.0.0.2]:5: Connection reset by peer); another rank died "
        "or cannot be reached (ranks wait 30 s for each other: RUNNER_DIST_TIMEOUT_S); the run stopped, and its last checkpoint resumes with the same command"
    )
    # Two ranks: the peer is named; a timed-out wait says what it waited for and how long.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PeerLost) as info, collective("summing an update's gradient"):
        raise RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for recv operation to complete")
    assert str(info.value) == (
        "torchrun rank 0 of 2: summing an update's gradient failed (Timed out waiting 30000ms for recv operation to complete); waited 30 s for "
        "rank 1 (RUNNER_DIST_TIMEOUT_S sets how long): it hangs or cannot be reached; the run stopped, and its last checkpoint resumes with the same command"
    )
    assert collective_timeout({}).total_seconds() == 600
    for bad in ("0", "-1", "abc", "inf"):
        with pytest.raises(ConfigError, match=r"^RUNNER_DIST_TIMEOUT_S='.*' is not allowed: a number of seconds > 0"):
            collective_timeout({"RUNNER_DIST_TIMEOUT_S": bad})


def test_the_launcher_names_a_killed_rank_but_not_one_the_agent_stopped():
    """hpr-torchrun's line from torchrun's failures (seconds resolution): a rank killed by
    SIGKILL beside its survivor's own exit is named; a rank SIGTERMed in the second another rank
    exited by itself (the agent stopping the rest, e.g. a bad GLOO_SOCKET_IFNAME) is not."""
    from types import SimpleNamespace as F

    from runner.launchers.torchrun import failure_line

    kill9 = {0: F(exitcode=1, timestamp=7, pid=10), 1: F(exitcode=-9, timestamp=7, pid=11)}
    assert failure_line(kill9) == ("Error: torchrun rank 1 (pid 11) was killed by SIGKILL; the other ranks were stopped: "
                                   "the same command resumes the run from its last checkpoint", 1)
    stopped = {0: F(exitcode=1, timestamp=7, pid=10), 1: F(exitcode=-15, timestamp=7, pid=11)}
    assert failure_line(stopped) == (None, 1)
    # The agent's SIGTERM of rank 0 recorded in the same second as rank 1's own failure: rank 1's
    # status (it said why), not -15 (a shell would read 241).
    stopped_lower = {0: F(exitcode=-15, timestamp=7, pid=10), 1: F(exitcode=1, timestamp=7, pid=11)}
    assert failure_line(stopped_lower) == (None, 1)
    refused = {0: F(exitcode=2, timestamp=7, pid=10), 1: F(exitcode=-15, timestamp=8, pid=11)}
    assert failure_line(refused) == (None, 2)
    alone = {1: F(exitcode=-15, timestamp=7, pid=11), 0: F(exitcode=1, timestamp=8, pid=10)}
    assert failure_line(alone)[0].startswith("Error: torchrun rank 1 (pid 11) was killed by SIGTERM;")
